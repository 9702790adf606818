"""Regression tests of the annotator-simulation audit: each checks behaviour against an
independent reference (the documented defaults, seeded reproducibility, a direct computation)."""

from __future__ import annotations

import pytest

from probrec.data import synthetic_annotations
from probrec.flows import MCDropoutHead, ModelEnsemble
from probrec.flows.base import DEFAULT_DROPOUT
from probrec.flows.experiment import compare_models


@pytest.fixture(scope="module")
def tiny():
    return synthetic_annotations(60, dim=4, seed=0).split_items((0.6, 0.2, 0.2), seed=0)


def test_compare_models_keeps_the_default_dropout_of_mc_dropout(tiny):
    """Without a dropout setting MC dropout trains at the library default (it got 0.25); a
    smaller setting is still raised to the 0.25 floor, a larger one kept."""
    train, valid, test = tiny
    fit = {"epochs": 1}
    got = {}
    for common in (None, {"dropout": 0.1}, {"dropout": 0.7}):
        res = compare_models(
            train,
            valid,
            test,
            models=["mc_dropout"],
            common_kwargs=common,
            fit_kwargs=fit,
            progress=False,
            keep_models=True,
            score=False,
        )
        got[None if common is None else common["dropout"]] = res["mc_dropout"][
            "model"
        ].encoder.dropout
    assert got == {None: DEFAULT_DROPOUT, 0.1: 0.25, 0.7: 0.7}
    assert MCDropoutHead(4).encoder.dropout == DEFAULT_DROPOUT


@pytest.mark.parametrize(
    "seed, error, match",
    [(2.7, TypeError, "seed must be an int"), ("3", TypeError, "seed"), (-1, ValueError, "seed")],
)
def test_model_ensemble_fit_refuses_a_seed_that_is_not_a_non_negative_int(tiny, seed, error, match):
    """``fit(seed=2.7)`` trained silently with seed 2 and ``seed="3"`` with 3; ``-1`` failed in
    NumPy without naming the argument."""
    train = tiny[0]
    ens = ModelEnsemble(4, range(1, 6), model="GaussianHead", members=2, hidden=(8,))
    with pytest.raises(error, match=match):
        ens.fit(train.features, train.labels, train.mask, epochs=1, seed=seed, progress=False)
    assert ens.history == []  # refused before any member trained
