"""Learner options checked when the learner is made (audit of the few-shot GP code): flags
given as strings (``bool("no")`` is ``True``) and Tanimoto kernels on features that can be
negative, with errors that name the option and say what to pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metalearn import ADKF, ADKFIFT, DKT
from metalearn.dkl import DKL
from metalearn.protonet import ProtoNet
from metalearn.single_task import GPST, RandomForest
from tests.metalearn.conftest import TINY_META

KW = TINY_META


# ---------------------------------------------------------------- F4: flags
@pytest.mark.parametrize("cls", [ADKFIFT, ADKF, DKT, ProtoNet])
@pytest.mark.parametrize("option", ["gmp", "joint_outer"])
def test_deep_kernel_flags_refuse_strings(cls, option):
    """gmp='False' built the encoder in GmP (bool('False') is True)."""
    with pytest.raises(TypeError, match=f"{option} must be a bool"):
        cls(**{option: "False"})
    cls(**{option: np.bool_(False)})


def test_random_forest_grid_refuses_strings():
    """grid='no' ran the ~6x slower grid search."""
    with pytest.raises(TypeError, match="grid must be a bool"):
        RandomForest(grid="no")
    assert RandomForest(grid=True).config["grid"] is True


# ---------------------------------------------------------------- F6: Tanimoto
def test_gpst_on_negative_columns_says_which_columns_to_pass():
    """'the tanimoto kernel needs finite, non-negative inputs (fingerprint counts)' before."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (40, 6)).astype(float)
    x = np.hstack([counts, rng.standard_normal((40, 3))])  # counts, then descriptors
    y = np.array([0.0, 1.0] * 20)
    with pytest.raises(ValueError, match=r"support_x .*column 6.*columns=\(start, stop\)"):
        GPST().adapt(x, y)
    with pytest.raises(ValueError, match=r"columns=\(4, 8\) selects .*column 6"):
        GPST(columns=(4, 8)).adapt(x, y)
    pred = GPST(columns=(0, 6)).adapt(x[:20], y[:20])
    assert pred.predict_proba(x[20:]).shape == (20,)
    with pytest.raises(ValueError, match=r"columns=\(0, 6\) selects negative entries of x"):
        pred.predict_proba(-x[20:])
    GPST(kernel="matern52").adapt(x, y)  # other kernels take any real features


def test_tanimoto_kernel_error_says_what_to_do():
    from probrec.gp.kernels import tanimoto, tanimoto_diag

    c = torch.ones(2, 3)
    for f in (tanimoto, tanimoto_diag):
        with pytest.raises(ValueError, match=r"1 negative and 0 non-finite.*columns=.*matern52"):
            f(c, torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, 1.0]]))


@pytest.mark.parametrize("cls", [ADKFIFT, ADKF, DKT, DKL])
def test_deep_kernel_tanimoto_on_negative_features_is_refused_at_construction(cls):
    """Accepted before, failing at the first meta-step with a message about fingerprints."""
    with pytest.raises(ValueError, match=r"kernel='tanimoto'.*linear output layer \(out_dim=8\)"):
        cls(kernel="tanimoto", out_dim=8)
    with pytest.raises(ValueError, match=r"kernel='tanimoto'.*activation 'tanh'"):
        cls(kernel="tanimoto", activation="tanh")
    cls(kernel="tanimoto", activation="softplus")  # non-negative features: allowed
    cls(kernel="matern52", out_dim=8)
    ProtoNet(kernel="tanimoto", out_dim=8)  # no GP kernel: the option is not used


def test_deep_kernel_tanimoto_on_relu_features_meta_trains(cls_tasks):
    x = np.abs(np.asarray(cls_tasks[0].inputs))
    tasks = [t.with_inputs(np.abs(np.asarray(t.inputs))) for t in cls_tasks]
    m = ADKFIFT(kernel="tanimoto", **KW)
    m.meta_fit(tasks[:6], tasks[6:], progress=False)
    y = np.asarray(cls_tasks[0].labels)
    assert m.adapt(x[:32], y[:32]).predict_proba(x[32:]).shape == (32,)
