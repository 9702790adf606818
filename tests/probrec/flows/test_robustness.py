"""Edge cases of the annotator-model contract: extreme inputs, failed calls, dtype moves,
batching of Monte Carlo estimates, bad arguments of the prediction calls and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probrec.flows import (
    ConditionalIntegerFlow,
    ConditionalSoftmaxFlow,
    MCDropoutHead,
    ModelEnsemble,
    SoftmaxHead,
    metrics,
)

LABELS = (1, 2, 3, 4, 5)
SMALL = {"hidden": (16,)}
FIT = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "progress": False}


def _x(n: int, scale: float = 1.0, seed: int = 0, dim: int = 6) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * scale


def _rows(out: torch.Tensor | tuple[torch.Tensor, ...], sl: slice) -> object:
    return tuple(t[sl] for t in out) if isinstance(out, tuple) else out[sl]


@pytest.mark.parametrize("quadrature", [0, 8])
def test_item_latent_integer_flow_stays_finite_far_from_the_training_features(quadrature):
    # features 1e3 standard deviations out: the latent's x-dependent random-effect size
    # exp(u_scale(h)) overflowed to inf (a NaN label row, a NaN panel likelihood) before its
    # log was clamped like the location-scale's
    model = ConditionalIntegerFlow(
        6, LABELS, item_latent=1, quadrature=quadrature, n_eval_samples=64, seed=0, **SMALL
    )
    model.fitted = True  # initial weights, no fit
    for scale in (1e3, 1e6):
        x = _x(200, scale)
        logp = model.label_log_probs(x)
        assert torch.isfinite(logp).all()
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(200), atol=1e-5, rtol=0)
        panel = model.panel_log_prob(x, torch.full((200, 3), 5))
        assert torch.isfinite(panel).all()


def test_a_fit_refused_for_its_validation_set_leaves_the_model_unchanged(population):
    train = population[0]
    model = SoftmaxHead(6, LABELS, seed=0, **SMALL).fit(train.features, train.labels, **FIT)
    x = population[2].features
    before = model.label_log_probs(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="valid x must have 6 features"):
        model.fit(
            train.features * 100 + 5, train.labels, valid=(np.zeros((3, 5)), [[1]] * 3), **FIT
        )
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # incl. the standardisation
    assert torch.equal(before, model.label_log_probs(x))


@pytest.mark.parametrize(
    "model",
    [
        ConditionalIntegerFlow(6, LABELS, item_latent=1, quadrature=8, **SMALL),
        ConditionalSoftmaxFlow(6, (0, 1, 2), latent="item", quadrature=4, **SMALL),
        ModelEnsemble(6, (0, 1), model="ConditionalSoftmaxFlow", members=2, quadrature=6, **SMALL),
    ],
    ids=["integer_flow", "softmax_flow", "ensemble"],
)
def test_quadrature_models_moved_to_float64_sum_to_one_in_float64(model):
    model.fitted = True  # initial weights, no fit
    x = _x(30, 3.0).double()
    for moved in (model.double(), model.float().double()):
        total = moved.predict_proba(x).sum(-1)
        assert total.dtype == torch.float64
        # with float32 grids converted up the error was ~1e-8
        assert (total - 1).abs().max() < 1e-12
    nodes = [b for name, b in model.float().named_buffers() if name.endswith("nodes")]
    assert nodes and all(b.dtype == torch.float32 for b in nodes)


@pytest.mark.parametrize(
    "model",
    [
        ConditionalSoftmaxFlow(6, (0, 1, 2), n_eval_samples=64, **SMALL),
        ConditionalSoftmaxFlow(6, (0, 1, 2), latent="item", n_eval_samples=64, **SMALL),
        ConditionalIntegerFlow(6, LABELS, item_latent=1, n_eval_samples=64, **SMALL),
        MCDropoutHead(6, LABELS, mc_samples=16, **SMALL),
    ],
    ids=["softmax_flow", "softmax_flow_item", "integer_flow_item", "mc_dropout"],
)
def test_monte_carlo_estimates_do_not_depend_on_the_batching(model):
    # the points are shared by all items: before, each batch drew its own, so an item's
    # estimate moved with batch_size and with its position in x
    model.fitted = True  # initial weights, no fit
    x = _x(11, 2.0)
    for call in (model.label_log_probs, model.label_log_probs_se, model.item_moments):
        whole = call(x, seed=3)
        for batch_size in (1, 4):
            torch.testing.assert_close(call(x, seed=3, batch_size=batch_size), whole)
        one = call(x[7:8], seed=3)  # an item alone
        torch.testing.assert_close(one, _rows(whole, slice(7, 8)))
    assert not torch.equal(model.label_log_probs(x, seed=3), model.label_log_probs(x, seed=4))


def test_bad_sample_counts_and_seeds_are_refused_by_name(population):
    x = population[2].features[:4]
    latent = ConditionalIntegerFlow(6, LABELS, item_latent=1, n_eval_samples=64, **SMALL)
    softmax = ConditionalSoftmaxFlow(6, (0, 1, 2), latent="item", n_eval_samples=64, **SMALL)
    mc = MCDropoutHead(6, LABELS, mc_samples=4, **SMALL)
    for model in (latent, softmax, mc):
        model.fitted = True  # initial weights, no fit
    for model in (latent, softmax, mc):
        for bad in (0, -3):
            with pytest.raises(ValueError, match="n_samples must be >= 1"):
                model.label_log_probs(x, n_samples=bad)
            with pytest.raises(ValueError, match="n_samples must be >= 1"):
                model.item_moments(x, n_samples=bad)
        with pytest.raises(TypeError, match="n_samples must be an int"):
            model.label_log_probs(x, n_samples=2.5)
        for seed in (1.5, torch.Generator()):
            with pytest.raises(TypeError, match="seed must be an int or None"):
                model.label_log_probs(x, seed=seed)
        with pytest.raises(TypeError, match="seed must be an int"):
            model.fit(x, [[1]] * 4, seed=1.5, epochs=1)
    for model in (latent, softmax):  # half the draws from each proposal: two at least
        with pytest.raises(ValueError, match="n_samples must be >= 2 for a panel"):
            model.panel_log_prob(x, [[1, 2]] * 4, n_samples=1)
    # one dropout mask is a valid MC-dropout prediction
    assert torch.isfinite(mc.label_log_probs(x, n_samples=1)).all()


def test_metrics_refuse_inputs_they_cannot_score(population):
    test = population[2]
    model = SoftmaxHead(6, LABELS, **SMALL)
    model.fitted = True  # initial weights, no fit
    x = test.features[:3]
    with pytest.raises(ValueError, match="x has 6 items but annotations has 3"):
        metrics.evaluate(model, test.features[:6], [[1, 2], [2, 3], [3, 3]])
    with pytest.raises(ValueError, match="at least 2 annotations"):
        metrics.evaluate(model, x, [[1], [2], [3]])
    out = metrics.evaluate(model, x, [[1], [2, 3], [3]])  # one item with a panel suffices
    assert np.isfinite(out["std_rmse"]) and np.isfinite(out["std_rmse_panel"])
    logp = np.log(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="counts must be non-negative"):
        metrics.nll(logp, [[1, -2, 0], [1, 0, 0]])
