"""Real-valued arguments of :mod:`metalearn` refuse NaN, infinities and values below the minimum.

The former ``x < 0`` / ``x <= 0`` tests let NaN (and all of them ``inf``) through to the
numerics, where they surfaced as NaN data or likelihoods.
"""

from __future__ import annotations

import math

import pytest


def _entry_points():
    """``id -> (argument, call, a value below the minimum)`` for every checked argument."""
    from metalearn.identifiability import LinearCausalModel, make_synthetic_tasks
    from metalearn.training import TrainConfig

    def tasks(**kw):
        return make_synthetic_tasks(2, 10, 2, 3, seed=0, **kw)

    return {
        "make_synthetic_tasks.label_noise": (
            "label_noise",
            lambda v: tasks(label_noise=v),
            -1.0,
        ),
        "make_synthetic_tasks.sigma_s": ("sigma_s", lambda v: tasks(sigma_s=v), 0.0),
        "make_synthetic_tasks.gamma_range_low": (
            "gamma_range",
            lambda v: tasks(gamma_range=(v, 1.5)),
            -1.0,
        ),
        "make_synthetic_tasks.gamma_range_high": (
            "gamma_range",
            lambda v: tasks(gamma_range=(0.5, v)),
            -1.0,
        ),
        "TrainConfig.lr": ("lr", lambda v: TrainConfig(lr=v), 0.0),
        "TrainConfig.weight_decay": ("weight_decay", lambda v: TrainConfig(weight_decay=v), -1.0),
        "TrainConfig.clip_norm": ("clip_norm", lambda v: TrainConfig(clip_norm=v), -1.0),
        "LinearCausalModel.sigma_s": (
            "sigma_s",
            lambda v: LinearCausalModel(3, 2, 2, sigma_s=v),
            0.0,
        ),
    }


@pytest.mark.parametrize("entry", sorted(_entry_points()))
@pytest.mark.parametrize("kind", ["nan", "inf", "below_minimum"])
def test_entry_points_refuse_non_finite_and_too_small_reals(entry, kind):
    argument, call, below = _entry_points()[entry]
    value = {"nan": math.nan, "inf": math.inf, "below_minimum": below}[kind]
    with pytest.raises(ValueError, match=argument):
        call(value)


def test_train_config_checks_its_counts():
    from metalearn.training import TrainConfig

    assert TrainConfig(clip_norm=0).clip_norm == 0.0  # 0 turns clipping off
    for name in ("n_steps", "batch_size", "support_size", "query_size", "eval_every"):
        with pytest.raises(ValueError, match=name):
            TrainConfig(**{name: 0})
        with pytest.raises(TypeError, match=name):
            TrainConfig(**{name: 2.5})
