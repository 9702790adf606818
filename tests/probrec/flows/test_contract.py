"""The contract every annotator simulator meets: a normalised distribution over the label set,
samples that follow it, seeded and reloadable fits, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from probrec.flows import (
    AnnotatorModel,
    ConditionalIntegerFlow,
    ConditionalSoftmaxFlow,
    DeepEnsemble,
    GaussianHead,
    MCDropoutHead,
    ModelEnsemble,
    OrdinalLogisticHead,
    SoftmaxHead,
    load_model,
)

LABELS = (1, 2, 3, 4, 5)
SMALL = {"hidden": (16,)}
# (class, constructor arguments, probabilities are Monte Carlo estimates)
CASES = {
    "integer_flow": (ConditionalIntegerFlow, {}, False),
    "integer_flow_panel": (
        ConditionalIntegerFlow,
        {"item_latent": 2, "n_eval_samples": 256},
        False,
    ),
    "integer_flow_quadrature": (
        ConditionalIntegerFlow,
        {"item_latent": 2, "quadrature": 6},
        False,
    ),
    "softmax_flow": (ConditionalSoftmaxFlow, {"n_eval_samples": 512}, True),
    "softmax_flow_panel": (ConditionalSoftmaxFlow, {"latent": "item", "n_eval_samples": 512}, True),
    "softmax_flow_quadrature": (ConditionalSoftmaxFlow, {"latent": "item", "quadrature": 4}, False),
    "gaussian": (GaussianHead, {}, False),
    "ordinal_logistic": (OrdinalLogisticHead, {}, False),
    "softmax": (SoftmaxHead, {}, False),
    "mc_dropout": (MCDropoutHead, {"mc_samples": 20}, False),
    "ensemble": (DeepEnsemble, {"members": 3}, False),
    "flow_ensemble": (
        ModelEnsemble,
        {"model": "ConditionalIntegerFlow", "members": 2, "item_latent": 1, "quadrature": 8},
        False,
    ),
}
FIT = {"epochs": 4, "batch_size": 32, "lr": 3e-3, "progress": False}


def make(name: str, in_dim: int = 6, seed: int = 0) -> AnnotatorModel:
    klass, kw, _ = CASES[name]
    return klass(in_dim, LABELS, seed=seed, **SMALL, **kw)


@pytest.fixture(scope="module")
def fitted(population):
    train, valid, _ = population
    return {
        name: make(name).fit(
            train.features,
            train.labels,
            train.mask,
            valid=(valid.features, valid.labels, valid.mask),
            **FIT,
        )
        for name in CASES
    }


@pytest.mark.parametrize("name", list(CASES))
def test_probabilities_are_a_distribution_over_the_label_set(fitted, population, name):
    model = fitted[name]
    x = population[2].features
    p = model.predict_proba(x, n_samples=4096).double()
    assert p.shape == (len(x), 5) and bool((p > 0).all())
    tol = 1e-2 if CASES[name][2] else 1e-5
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, atol=tol)


@pytest.mark.parametrize("name", list(CASES))
def test_samples_follow_the_predicted_distribution(fitted, population, name):
    """Chi-square test of 4000 simulated annotations at one fixed input (seeded, level 1e-3)."""
    model = fitted[name]
    x = population[2].features[:1]
    p = model.predict_proba(x, n_samples=4096).double()[0].numpy()
    p = p / p.sum()
    draws = model.sample(np.repeat(x, 4000, axis=0), 1, seed=3)[0].numpy()
    counts = np.array([(draws == v).sum() for v in LABELS])
    keep = p * 4000 >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(p[keep], p[~keep].sum()) * 4000
    obs, exp = obs[exp > 0], exp[exp > 0]
    assert chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


INDEPENDENT = (
    "integer_flow",
    "softmax_flow",
    "gaussian",
    "ordinal_logistic",
    "softmax",
    "mc_dropout",
)


@pytest.mark.parametrize("name", list(CASES))
def test_panel_likelihood_is_the_distribution_of_simulated_panels(fitted, population, name):
    """Over the 25 ordered pairs of labels, the joint probability of a panel of two annotators
    sums to one, and 4000 simulated panels of two follow it (chi-square, level 1e-3); models
    with independent annotators give the product of the marginals."""
    model = fitted[name]
    x = population[2].features[:1]
    pairs = np.array([(a, b) for a in LABELS for b in LABELS])
    logp = model.panel_log_prob(np.repeat(x, 25, axis=0), pairs, n_samples=4096, seed=2)
    p = logp.double().exp().numpy()
    # importance-sampled panels (an item latent without quadrature) and MC dropout (its masks
    # differ between the 25 rows) are estimates too
    tol = 2e-2 if CASES[name][2] or name in ("integer_flow_panel", "mc_dropout") else 1e-5
    assert abs(p.sum() - 1.0) < tol
    if name in INDEPENDENT:
        same = {"n_samples": 4096, "seed": 2}  # the same Monte Carlo draws
        marginal = model.log_prob(np.repeat(x, 25, axis=0), pairs, **same)
        torch.testing.assert_close(logp, marginal.sum(1))
    draws = model.sample(np.repeat(x, 4000, axis=0), 2, seed=5).numpy()  # [2, 4000]
    cell = (draws[0] - 1) * 5 + (draws[1] - 1)
    counts = np.bincount(cell, minlength=25)
    p = p / p.sum()
    keep = p * 4000 >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(p[keep], p[~keep].sum()) * 4000
    obs, exp = obs[exp > 0], exp[exp > 0]
    assert chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_save_load_gives_identical_predictions(fitted, population, name, tmp_path):
    model = fitted[name]
    x = population[2].features
    path = tmp_path / f"{name}.pt"
    model.save(path)
    again = load_model(path)
    assert type(again) is type(model) and again.history == model.history
    torch.testing.assert_close(
        again.label_log_probs(x, seed=4), model.label_log_probs(x, seed=4), rtol=0, atol=0
    )
    assert torch.equal(again.sample(x, 3, seed=9), model.sample(x, 3, seed=9))
    torch.testing.assert_close(
        type(model).load(path).item_moments(x, seed=1)[1],
        model.item_moments(x, seed=1)[1],
        rtol=0,
        atol=0,
    )
    other = next(c for c in (SoftmaxHead, GaussianHead) if not isinstance(model, c))
    with pytest.raises(ValueError, match="holds a"):
        other.load(path)


@pytest.mark.parametrize("name", ["integer_flow", "softmax_flow", "ensemble", "mc_dropout"])
def test_same_seed_same_model_and_lists_equal_padded(population, name):
    train, _, test = population
    a = make(name).fit(train.features, train.labels, train.mask, seed=3, **FIT)
    b = make(name).fit(train.features, train.annotation_lists(), seed=3, **FIT)
    torch.testing.assert_close(
        a.label_log_probs(test.features), b.label_log_probs(test.features), rtol=0, atol=0
    )
    c = make(name).fit(train.features, train.labels, train.mask, seed=4, **FIT)
    assert not torch.equal(a.label_log_probs(test.features), c.label_log_probs(test.features))


@pytest.mark.parametrize("name", list(CASES))
def test_training_improves_held_out_likelihood(fitted, population, name):
    _, _, test = population
    untrained = make(name)
    untrained.fitted = True  # score the initial weights
    before = untrained.nll(test.features, test.labels, test.mask)
    after = fitted[name].nll(test.features, test.labels, test.mask)
    assert after < before - 0.02


def test_log_prob_gathers_label_probabilities(fitted, population):
    model = fitted["integer_flow"]
    x = population[2].features[:7]
    y = np.array([1, 5, 3, 3, 2, 4, 1])
    lp = model.log_prob(x, y)
    full = model.label_log_probs(x)
    torch.testing.assert_close(lp, full[torch.arange(7), torch.as_tensor(y - 1)])
    two = model.log_prob(x, np.stack([y, 6 - y], 1))
    assert two.shape == (7, 2)


def test_bad_inputs_raise_clear_errors(fitted, population):
    train = population[0]
    model = make("integer_flow")
    x = train.features
    with pytest.raises(ValueError, match=r"labels \[7\] outside the label set"):
        model.fit(x[:2], [[1, 7], [2]], **FIT)
    with pytest.raises(ValueError, match="no annotation"):
        model.fit(x[:2], [[1, 2], []], **FIT)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        model.fit(bad, train.labels, train.mask, **FIT)
    with pytest.raises(ValueError, match="6 features"):
        model.fit(x[:, :4], train.labels, train.mask, **FIT)
    with pytest.raises(ValueError, match="items but annotations"):
        model.fit(x[:5], train.labels, train.mask, **FIT)
    with pytest.raises(ValueError, match="mask must have the shape"):
        model.fit(x, train.labels, train.mask[:, :2], **FIT)
    with pytest.raises(TypeError, match="valid must be"):
        model.fit(x, train.labels, train.mask, valid=(x,), **FIT)
    # the validation mask is named as such (both errors said only "mask")
    with pytest.raises(ValueError, match=r"mask \(of valid annotations\) must have the shape"):
        model.fit(x, train.labels, train.mask, valid=(x, train.labels, train.mask[:, :2]), **FIT)
    with pytest.raises(ValueError, match=r"mask \(of valid annotations\) must be bool"):
        model.fit(x, train.labels, train.mask, valid=(x, train.labels, train.mask * 0.5), **FIT)
    for lr in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="lr"):
            model.fit(x, train.labels, train.mask, lr=lr, epochs=1)
    # refused up front with the argument's name (before: torch's own message for NaN, and
    # an infinite decay surfaced as a non-finite loss blamed on the lr)
    for decay in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight_decay"):
            model.fit(x, train.labels, train.mask, weight_decay=decay, epochs=1)
    with pytest.raises(ValueError, match="input_dropout"):
        model.fit(x, train.labels, train.mask, input_dropout=1.0, epochs=1)
    fitted_model = fitted["softmax"]
    with pytest.raises(ValueError, match=r"y holds labels \[0\] outside the label set"):
        fitted_model.log_prob(x[:2], [0, 1])
    with pytest.raises(ValueError, match="integer labels"):
        fitted_model.log_prob(x[:2], [1.5, 2])
    with pytest.raises(ValueError, match="2 dimension"):
        fitted_model.predict_proba(x[0])
    with pytest.raises(ValueError, match="n must be"):
        fitted_model.sample(x[:2], 0)
    with pytest.raises(ValueError, match="labels"):
        SoftmaxHead(6, [1])
    with pytest.raises(ValueError, match="strictly increasing"):
        SoftmaxHead(6, [2, 1])
    with pytest.raises(ValueError, match="item_latent"):
        ConditionalIntegerFlow(6, LABELS, item_latent=-1)
    with pytest.raises(ValueError, match="unknown latent"):
        ConditionalSoftmaxFlow(6, LABELS, latent="both")


@pytest.mark.parametrize("name", ["softmax_flow_quadrature", "integer_flow_quadrature", "softmax"])
def test_valid_metric_chooses_what_early_stopping_minimises(name, population):
    train, valid, _ = population
    va = (valid.features, valid.labels, valid.mask)
    fits = {
        metric: make(name).fit(
            train.features, train.labels, train.mask, valid=va, valid_metric=metric, **FIT
        )
        for metric in ("panel", "annotation")
    }
    n = valid.mask.sum()
    for metric, model in fits.items():
        # the restored weights are the best epoch's under the chosen metric, scored here
        # through the public API (exact for these models: no Monte Carlo)
        score = (
            model.nll(*va)
            if metric == "annotation"
            else -float(model.panel_log_prob(*va).sum()) / n
        )
        assert min(h["valid"] for h in model.history) == pytest.approx(score, abs=1e-5)
    # the metric selects an epoch; it does not change training
    assert [h["train"] for h in fits["panel"].history] == [
        h["train"] for h in fits["annotation"].history
    ]
    panel, annotation = ([h["valid"] for h in fits[m].history] for m in ("panel", "annotation"))
    if fits["panel"].panel_latent:  # the joint likelihood of a panel is not the marginal's
        assert all(abs(a - b) > 1e-4 for a, b in zip(panel, annotation))
    else:  # independent annotators: the two coincide
        assert panel == annotation
    with pytest.raises(ValueError, match="valid_metric"):
        make(name).fit(train.features, train.labels, train.mask, valid=va, valid_metric="item")


@pytest.mark.parametrize("name", ["softmax", "integer_flow_quadrature", "ensemble"])
def test_input_dropout_acts_in_training_only(name, population):
    train = population[0]
    x = train.features
    fits = {}
    for p in (0.0, 0.5):
        model = make(name)
        model.fit(x, train.labels, train.mask, input_dropout=p, **FIT)
        fits[p] = model
    plain = make(name).fit(x, train.labels, train.mask, **FIT)  # the default is no dropout
    assert [h["train"] for h in plain.history] == [h["train"] for h in fits[0.0].history]
    # dropped inputs change the training losses from the first epoch on ...
    assert fits[0.5].history[0]["train"] != fits[0.0].history[0]["train"]
    # ... but never a prediction: repeated calls agree exactly
    model = fits[0.5]
    torch.testing.assert_close(model.label_log_probs(x), model.label_log_probs(x))
    assert not model.training


def test_dtype_and_device_follow_the_model(fitted, population):
    model = make("integer_flow").double()
    model.fitted = True  # the initial weights, in float64
    x = population[2].features
    assert model.label_log_probs(x).dtype == torch.float64
    if torch.cuda.is_available():  # pragma: no cover - exercised on GPU machines
        gpu = fitted["softmax_flow"].to("cuda")
        assert gpu.predict_proba(x).device.type == "cuda"
        assert gpu.sample(x, 2, seed=0).device.type == "cuda"
        fitted["softmax_flow"].to("cpu")
