"""Recommendation: foundation model / vertical model, LoopFM and ExFM transfer, cold start.

* :mod:`~probrec.recsys.features` -- chronological splits, causal per-event histories, batches.
* :mod:`~probrec.recsys.models` -- :class:`FoundationModel` (DLRM + sequence encoder) and
  :class:`VerticalModel` (small DLRM with hashed ids, optional LoopFM inputs and ExFM head).
* :mod:`~probrec.recsys.loopfm` -- FM event embeddings to a frozen store, histories read back.
* :mod:`~probrec.recsys.transfer` -- KD, auxiliary-head loss, training, AUC / log loss,
  transfer ratio.
* :mod:`~probrec.recsys.pipeline` -- the chronological experiment over seeds.
* :mod:`~probrec.recsys.coldstart` -- new users of the test period as few-shot tasks.

References: Jiang, Zheng, Liu et al., "LoopFM" (2026); Liang et al., "External Large
Foundation Model" (2025); Naumov et al., "DLRM" (2019); Chen et al., "Compressing Neural
Networks with the Hashing Trick" (ICML 2015).
"""

from probrec.recsys.coldstart import (
    ColdStartFeatures,
    ColumnScore,
    HeadFineTune,
    cold_start_features,
    cold_start_tasks,
    item_popularity,
)
from probrec.recsys.features import (
    EventTable,
    IdVocabulary,
    chronological_split,
    event_key_array,
    event_keys,
    past_events,
)
from probrec.recsys.loopfm import StoredHistory, fm_embeddings, lookup_histories, write_fm_store
from probrec.recsys.models import (
    FoundationModel,
    HashedEmbedding,
    VerticalModel,
    dot_interaction,
    robust_std,
)
from probrec.recsys.pipeline import (
    UNTRAINED,
    VARIANTS,
    LoopFMConfig,
    LoopFMRun,
    run_loopfm,
    summarize_runs,
    summary_markdown,
)
from probrec.recsys.transfer import (
    TrainSpec,
    ctr_metrics,
    kd_loss,
    predict_logits,
    train_ctr,
    transfer_ratio,
    vm_loss,
)

__all__ = [
    "UNTRAINED",
    "VARIANTS",
    "ColdStartFeatures",
    "ColumnScore",
    "EventTable",
    "FoundationModel",
    "HashedEmbedding",
    "HeadFineTune",
    "IdVocabulary",
    "LoopFMConfig",
    "LoopFMRun",
    "StoredHistory",
    "TrainSpec",
    "VerticalModel",
    "chronological_split",
    "cold_start_features",
    "cold_start_tasks",
    "ctr_metrics",
    "dot_interaction",
    "event_key_array",
    "event_keys",
    "fm_embeddings",
    "item_popularity",
    "kd_loss",
    "lookup_histories",
    "past_events",
    "predict_logits",
    "robust_std",
    "run_loopfm",
    "summarize_runs",
    "summary_markdown",
    "train_ctr",
    "transfer_ratio",
    "vm_loss",
    "write_fm_store",
]
