"""Regression tests of the annotator-simulation audit: each checks behaviour against an
independent reference (the documented defaults, seeded reproducibility, a direct computation)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from probrec.data import synthetic_annotations
from probrec.flows import (
    ConditionalIntegerFlow,
    ConditionalSoftmaxFlow,
    MCDropoutHead,
    ModelEnsemble,
    metrics,
)
from probrec.flows.base import DEFAULT_DROPOUT, replicate_loo
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


@pytest.mark.parametrize(
    "klass, kwargs",
    [
        (ConditionalIntegerFlow, {"item_latent": 2}),
        (ConditionalSoftmaxFlow, {"latent": "item"}),
    ],
)
def test_nll_monte_carlo_standard_error_matches_the_spread_over_seeds(klass, kwargs):
    """The items share the Monte Carlo points, so their errors are correlated: the s.e. of the
    NLL is the jackknife over the replicates, which matches the NLL's spread over 30 seeds
    (it was the root sum of squares of the per-entry s.e., 0.014 against a spread of 0.14 for
    the integer flow here, 0.12 against 0.82 for the softmax flow)."""
    data = synthetic_annotations(300, dim=4, per_item=(3, 6), seed=2)
    model = klass(4, range(1, 6), hidden=(16,), n_eval_samples=16, seed=1, **kwargs)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a latent that matters (the initialisation is near a point mass)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.fitted = True  # hand-set weights, no fit
    x, counts = data.features, data.counts()
    nlls, jack = [], []
    for seed in range(30):
        nlls.append(metrics.nll(model.label_log_probs(x, seed=seed).double().numpy(), counts))
        logp, loo = model.label_log_probs_loo(x, seed=seed)
        torch.testing.assert_close(logp, model.label_log_probs(x, seed=seed), rtol=0, atol=0)
        loo = loo.double().numpy()  # [R, n, K]
        vals = -(counts * loo).sum((1, 2)) / counts.sum()
        r = len(vals)
        jack.append(np.sqrt((r - 1) / r * ((vals - vals.mean()) ** 2).sum()))
    spread = np.std(nlls, ddof=1)
    assert 0.7 < np.sqrt(np.mean(np.square(jack))) / spread < 1.4
    res = metrics.evaluate(model, x, data.labels, data.mask, seed=0, panels=4)
    assert res["nll_mc_se"] == pytest.approx(jack[0], rel=1e-9)
    assert res["nll"] == pytest.approx(nlls[0], rel=1e-12)


def test_leave_one_replicate_out_estimates_match_a_direct_loop():
    gen = torch.Generator().manual_seed(3)
    log_w = torch.randn(5, 7, 4, 3, generator=gen, dtype=torch.float64)
    for normalise in (False, True):
        loo = replicate_loo(log_w, normalise=normalise)
        for r in range(5):
            keep = [i for i in range(5) if i != r]
            mean = log_w[keep].exp().mean((0, 1)).log()
            if normalise:
                mean = mean - mean.exp().sum(-1, keepdim=True).log()
            torch.testing.assert_close(loo[r], mean)
    torch.testing.assert_close(replicate_loo(log_w[:1]), log_w[:1].exp().mean(1).log())
    flow = ConditionalIntegerFlow(4)
    flow.fitted = True  # initial weights, no fit
    assert flow.label_log_probs_loo(np.zeros((2, 4)))[1] is None


@pytest.mark.parametrize(
    "klass, kwargs",
    [(ConditionalSoftmaxFlow, {"latent": "item"}), (ConditionalIntegerFlow, {"item_latent": 1})],
)
def test_evaluate_draws_the_label_estimate_once(klass, kwargs):
    """The NLL and its jackknife standard error come from one set of importance draws (they
    were drawn twice, the same numbers, once for the estimate and once for its replicates)."""
    data = synthetic_annotations(60, dim=4, per_item=(3, 6), seed=2)
    model = klass(4, range(1, 6), hidden=(16,), n_eval_samples=16, seed=1, **kwargs)
    model.fitted = True  # initial weights, no fit
    with mock.patch.object(
        klass, "_replicate_draws", autospec=True, side_effect=klass._replicate_draws
    ) as spy:
        res = metrics.evaluate(model, data.features, data.labels, data.mask, seed=0, panels=4)
    assert spy.call_count == 1
    assert res["nll"] == pytest.approx(model.nll(data.features, data.labels, data.mask), rel=1e-6)
