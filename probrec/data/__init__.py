"""Tasks, episodes, loaders and molecule featurisers.

Public names (plus those of :mod:`probrec.data.annotations`): :class:`Task`,
:class:`Episode`, :class:`TaskSet`, :func:`sample_episode`,
:func:`split_tasks`, :func:`load_moleculenet`, :func:`load_regression_csv`,
:func:`load_regression_set`, :func:`load_fsmol_task`, :func:`load_fsmol_split`,
:func:`load_chembl_assay_table`, :class:`MoleculeFeaturizer`, :func:`featurize_tasks`,
:func:`load_fsmol_dir`, :func:`clean_chembl_assay_table`, :class:`CleanedAssay`,
:class:`ExcludedTaskError`, :func:`load_rdkit_chembl_assay`, :func:`load_nci_smiles`,
:func:`sinusoid_tasks`, :func:`latent_feature_tasks`, :func:`descriptor_tasks`,
:class:`InteractionLog`, :func:`load_movielens`, :func:`download_movielens`,
:func:`load_taobao_ad`, :func:`load_dockstring_targets`, :data:`DOCKSTRING_TARGETS`.
"""

from probrec.data import annotations as _annotations
from probrec.data.annotations import *  # noqa: F403 - re-exported through __all__ below
from probrec.data.dockstring import DOCKSTRING_TARGETS, load_dockstring_targets
from probrec.data.embedded import load_nci_smiles, load_rdkit_chembl_assay
from probrec.data.featurize import MoleculeFeaturizer, featurize_tasks
from probrec.data.fsmol import (
    CleanedAssay,
    ExcludedTaskError,
    clean_chembl_assay_table,
    load_chembl_assay_table,
    load_fsmol_dir,
    load_fsmol_split,
    load_fsmol_task,
)
from probrec.data.moleculenet import load_moleculenet, load_regression_csv, load_regression_set
from probrec.data.movielens import InteractionLog, download_movielens, load_movielens
from probrec.data.synthetic import descriptor_tasks, latent_feature_tasks, sinusoid_tasks
from probrec.data.taobao import load_taobao_ad
from probrec.data.tasks import (
    Episode,
    RowView,
    Task,
    TaskSet,
    check_two_classes,
    sample_episode,
    split_tasks,
)

__all__ = [
    *_annotations.__all__,
    "CleanedAssay",
    "DOCKSTRING_TARGETS",
    "Episode",
    "ExcludedTaskError",
    "InteractionLog",
    "MoleculeFeaturizer",
    "RowView",
    "Task",
    "TaskSet",
    "check_two_classes",
    "clean_chembl_assay_table",
    "descriptor_tasks",
    "download_movielens",
    "featurize_tasks",
    "latent_feature_tasks",
    "load_chembl_assay_table",
    "load_dockstring_targets",
    "load_fsmol_dir",
    "load_fsmol_split",
    "load_fsmol_task",
    "load_moleculenet",
    "load_movielens",
    "load_nci_smiles",
    "load_rdkit_chembl_assay",
    "load_regression_csv",
    "load_regression_set",
    "load_taobao_ad",
    "sample_episode",
    "sinusoid_tasks",
    "split_tasks",
]
