"""Knowledge transfer from a foundation model to a vertical model: losses, training, metrics.

* :func:`kd_loss` -- knowledge distillation with the FM's predictions as soft labels (Hinton
  et al., 2015): binary cross-entropy between temperature-softened probabilities, scaled by
  ``T^2``.
* :func:`vm_loss` -- the vertical model's objective: label loss, optionally mixed with
  distillation, optionally plus ExFM's auxiliary-head loss (Liang et al., "External Large
  Foundation Model", 2025: FM supervision on a separate head, so the serving head is trained
  on true labels only).
* :func:`train_ctr` -- Adam with early stopping on validation log loss, for the FM and every VM
  variant.
* :func:`ctr_metrics` -- AUC and log loss; :func:`transfer_ratio` -- the fraction of the
  FM's AUC gain over the VM that a transfer method captures (LoopFM, 2026).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from probrec.checks import check_positive_int, check_real, host_array
from probrec.progress import track
from probrec.recsys.features import EventTable
from probrec.recsys.models import check_vocabulary, evaluating, module_device
from probrec.seeding import numpy_rng, seeded_rng

__all__ = [
    "TrainSpec",
    "ctr_metrics",
    "kd_loss",
    "predict_logits",
    "train_ctr",
    "transfer_ratio",
    "vm_loss",
]

Inputs = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def kd_loss(student_logit: Tensor, teacher_logit: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Binary distillation loss, mean over the batch.

    :math:`T^2 \cdot \mathrm{BCE}(\sigma(z_t / T), \sigma(z_s / T))`; its gradient in
    :math:`z_s` is :math:`T (\sigma(z_s/T) - \sigma(z_t/T))`, zero when the student matches.

    Args:
        student_logit: ``[B]``.
        teacher_logit: ``[B]`` (no gradient flows into it).
        temperature: ``T > 0``.
    """
    check_real(temperature, "temperature", strict=True)
    _check_student_shape(student_logit, teacher_logit, "student_logit")
    if not bool(torch.isfinite(teacher_logit).all()):  # the loss was NaN, silently
        raise ValueError("teacher_logit contains NaN/inf")
    return _kd_term(student_logit, teacher_logit, float(temperature))


def _check_student_shape(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name} {tuple(student.shape)} and teacher_logit {tuple(teacher.shape)} must have "
            "the same shape"
        )


def _kd_term(student_logit: Tensor, teacher_logit: Tensor, t: float) -> Tensor:
    """:func:`kd_loss` without its checks: the per-step path of :func:`vm_loss`, whose
    settings are checked once per call and whose teacher logits :func:`train_ctr` checks once
    for the whole table (a finiteness test per step would synchronise a GPU every step)."""
    soft = torch.sigmoid(teacher_logit.detach() / t)
    return t * t * F.binary_cross_entropy_with_logits(student_logit / t, soft)


def vm_loss(
    logit: Tensor,
    label: Tensor,
    *,
    teacher_logit: Tensor | None = None,
    kd_weight: float = 0.0,
    temperature: float = 1.0,
    aux_logit: Tensor | None = None,
    aux_weight: float = 0.0,
) -> Tensor:
    r"""``(1 - w_kd) BCE(y, z) + w_kd KD(z, z_FM) + w_aux KD(z_aux, z_FM)``.

    Args:
        logit: ``[B]`` serving-head logits.
        label: ``[B]`` 0/1 labels.
        teacher_logit: ``[B]`` FM logits (needed when a weight is positive; finite: not
            checked here, on the per-step path; :func:`train_ctr` checks its table once).
        kd_weight: ``w_kd`` in ``[0, 1]``.
        temperature: KD temperature.
        aux_logit: ``[B]`` auxiliary-head logits (ExFM).
        aux_weight: ``w_aux >= 0``.
    """
    # a str weight failed in a comparison naming no argument; a NaN temperature passed when
    # unused
    check_loss_settings(kd_weight, temperature, aux_weight)
    kd_weight, aux_weight = float(kd_weight), float(aux_weight)
    if not isinstance(logit, Tensor) or not isinstance(label, Tensor):
        raise TypeError("logit and label must be tensors")
    if label.shape != logit.shape:  # torch's error named neither
        raise ValueError(
            f"label {tuple(label.shape)} must have the shape of logit {tuple(logit.shape)}"
        )
    if (kd_weight > 0 or aux_weight > 0) and teacher_logit is None:
        raise ValueError("teacher_logit is needed when kd_weight or aux_weight is positive")
    # integer labels failed inside torch ("result type Float can't be cast to Long")
    loss = (1.0 - kd_weight) * F.binary_cross_entropy_with_logits(logit, label.to(logit.dtype))
    t = float(temperature)
    if kd_weight > 0:
        _check_student_shape(logit, teacher_logit, "logit")
        loss = loss + kd_weight * _kd_term(logit, teacher_logit, t)
    if aux_weight > 0:
        if aux_logit is None:
            raise ValueError("aux_weight > 0 needs a model with an auxiliary head")
        _check_student_shape(aux_logit, teacher_logit, "aux_logit")
        loss = loss + aux_weight * _kd_term(aux_logit, teacher_logit, t)
    return loss


def ctr_metrics(label: np.ndarray | Tensor, logit: np.ndarray | Tensor) -> dict[str, float]:
    """AUC and log loss of logits ``[n]`` against 0/1 labels ``[n]`` (arrays, or tensors on
    any device).

    AUC is undefined when ``label`` holds one class (tiny samples); it is then reported as
    NaN with a warning, and the log loss is still given.
    """
    y, z = host_array(label), host_array(logit)
    if y.shape != z.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"label and logit must be equal-length 1-d, got {y.shape}, {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logit contains NaN/inf")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("label must hold 0/1 values")
    one_class = y.min() == y.max()
    if one_class:
        warnings.warn("AUC is undefined: the labels hold one class", stacklevel=2)
    # exact from the logits, -y z + log(1 + e^z): no clipping of confident predictions (a
    # clip at 1e-7 undercounted a wrong logit of 20 by 4 nats)
    logloss = float(np.mean(np.logaddexp(0.0, z) - y * z))
    return {"auc": float("nan") if one_class else float(roc_auc_score(y, z)), "logloss": logloss}


def transfer_ratio(auc_transfer: float, auc_vm: float, auc_fm: float) -> float:
    r"""``(AUC(VM with transfer) - AUC(VM)) / (AUC(FM) - AUC(VM))``.

    Raises:
        ValueError: ``AUC(FM) == AUC(VM)`` (the ratio is undefined).
    """
    for name, a in (("auc_transfer", auc_transfer), ("auc_vm", auc_vm), ("auc_fm", auc_fm)):
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {type(a).__name__}")
        if not np.isfinite(a):
            raise ValueError(f"transfer ratio needs finite AUCs, got {name} = {a}")
    gap = auc_fm - auc_vm
    if gap == 0:
        raise ValueError("transfer ratio is undefined when the FM and the VM have equal AUC")
    return (auc_transfer - auc_vm) / gap


@dataclass
class TrainSpec:
    """Training settings of :func:`train_ctr`.

    Attributes:
        epochs: maximum epochs.
        batch_size: events per step.
        lr: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        patience: epochs without a lower validation log loss before stopping (the model
            with the lowest validation log loss is kept).
        kd_weight, temperature, aux_weight: see :func:`vm_loss`.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 2
    kd_weight: float = 0.0
    temperature: float = 1.0
    aux_weight: float = 0.0

    def __post_init__(self) -> None:
        # batch_size 0 failed in range(), epochs <= 0 returned the untrained model
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.patience, "patience")
        # a bad lr or KD setting failed (or gave NaN) only after the data and models were built
        check_real(self.lr, "lr", strict=True)
        check_real(self.weight_decay, "weight_decay")
        check_loss_settings(self.kd_weight, self.temperature, self.aux_weight)


def check_loss_settings(kd_weight: float, temperature: float, aux_weight: float) -> None:
    """Checks the loss settings of :func:`vm_loss` up front (for settings objects).

    Raises:
        TypeError: a setting is not a real number.
        ValueError: ``kd_weight`` outside ``[0, 1]``, ``temperature <= 0`` or
            ``aux_weight < 0`` (or any of them not finite).
    """
    if not 0.0 <= check_real(kd_weight, "kd_weight") <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    check_real(temperature, "temperature", strict=True)
    check_real(aux_weight, "aux_weight")


def _split_output(out: tuple) -> tuple[Tensor, Tensor | None]:
    """``(logit, aux logit or None)`` of an FM ``(h, z)`` or VM ``(h, z, aux)`` output."""
    return out[1], (out[2] if len(out) > 2 else None)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    table: EventTable,
    index: np.ndarray,
    *,
    inputs: Inputs | None = None,
    batch_size: int = 2048,
) -> Tensor:
    """Serving-head logits ``[n]`` of ``model`` on the events at ``index``, on the model's
    device (batches are built there; ``inputs`` receives them there)."""
    device = module_device(model)
    check_positive_int(batch_size, "batch_size")  # 0 failed in range()
    check_vocabulary(model, table)
    out = []
    with evaluating(model):
        for s in range(0, len(index), batch_size):
            b = table.batch(index[s : s + batch_size], device)
            out.append(_split_output(model(inputs(b) if inputs else b))[0])
    return torch.cat(out) if out else torch.zeros(0, device=device)


def train_ctr(
    model: nn.Module,
    table: EventTable,
    train_index: np.ndarray,
    valid_index: np.ndarray,
    spec: TrainSpec,
    *,
    inputs: Inputs | None = None,
    teacher_logit: Tensor | None = None,
    seed: int = 0,
    progress: bool | None = False,
) -> dict[str, list[float]]:
    """Trains a CTR model with Adam; keeps the parameters of the best validation log loss.

    Args:
        model: :class:`~probrec.recsys.models.FoundationModel` or
            :class:`~probrec.recsys.models.VerticalModel`.
        table: the events.
        train_index: ``[n]`` training events.
        valid_index: validation events (early stopping).
        spec: settings.
        inputs: adds extra inputs to a batch (e.g. :class:`~probrec.recsys.loopfm.StoredHistory`);
            batches are built on the model's device and passed to it there.
        teacher_logit: ``[len(table.log)]`` FM logits of every event, for KD / auxiliary head
            (any device).
        seed: seed of the shuffling and of dropout (torch's global generators are left as
            they were).
        progress: show a progress bar.

    Returns:
        History: ``train_loss``, ``valid_auc``, ``valid_logloss`` per epoch, ``best_epoch``.
    """
    if teacher_logit is not None:
        teacher_logit = torch.as_tensor(teacher_logit)
        if teacher_logit.shape != (len(table),) or not bool(torch.isfinite(teacher_logit).all()):
            # an IndexError mid-epoch, or a NaN blamed on "logit"
            raise ValueError(
                f"teacher_logit must be {len(table)} finite FM logits (one per event), got "
                f"shape {tuple(teacher_logit.shape)}"
            )
    if len(train_index) == 0 or len(valid_index) == 0:
        raise ValueError("train_index and valid_index must be non-empty")
    check_vocabulary(model, table)
    # dropout draws from torch's global generator: seed a private copy for reproducibility
    # training needs gradients even when called inside torch.no_grad() (it failed there)
    device = module_device(model)
    with seeded_rng(seed, device), torch.enable_grad():
        rng = numpy_rng(seed)
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        valid_y = table.log.label[valid_index]
        best, best_state, bad = -np.inf, copy.deepcopy(model.state_dict()), 0
        hist: dict[str, list[float]] = {
            "train_loss": [],
            "valid_auc": [],
            "valid_logloss": [],
            "best_epoch": [0],
        }
        for epoch in track(range(spec.epochs), progress=progress, desc="epochs"):
            model.train()
            perm = rng.permutation(train_index)
            total = 0.0
            for s in range(0, len(perm), spec.batch_size):
                idx = perm[s : s + spec.batch_size]
                b = table.batch(idx, device)
                logit, aux = _split_output(model(inputs(b) if inputs else b))
                teach = None
                if teacher_logit is not None:
                    teach = teacher_logit[torch.from_numpy(idx)].to(device)
                loss = vm_loss(
                    logit,
                    b["label"],
                    teacher_logit=teach,
                    kd_weight=spec.kd_weight,
                    temperature=spec.temperature,
                    aux_logit=aux,
                    aux_weight=spec.aux_weight,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # one-class validation sets: AUC undefined
                m = ctr_metrics(valid_y, predict_logits(model, table, valid_index, inputs=inputs))
            hist["train_loss"].append(total / len(perm))
            hist["valid_auc"].append(m["auc"])
            hist["valid_logloss"].append(m["logloss"])
            if -m["logloss"] > best:
                best, best_state, bad = -m["logloss"], copy.deepcopy(model.state_dict()), 0
                hist["best_epoch"] = [epoch]
            else:
                bad += 1
                if bad >= spec.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return hist
