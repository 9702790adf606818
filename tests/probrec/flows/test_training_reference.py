"""The annotator models' training loop, persistence and baselines against independent
references: the fitted state (no prediction from random initial weights), early stopping
against the scores it saw, the ordinal-logistic head against statsmodels' ``OrderedModel``, MC
dropout against an exact sum over dropout masks, and the experiment's paired differences
against ``scipy.stats.sem``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import sem

from probrec.data import synthetic_annotations
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
from probrec.flows.discrete import base_cdf
from probrec.flows.experiment import paired_difference

LABELS = (1, 2, 3, 4, 5)
SMALL = {"hidden": (8,)}
FIT = {"epochs": 2, "batch_size": 16, "progress": False}
# one model of every class, and the latent variants whose hooks differ
CASES = {
    "integer_flow": (ConditionalIntegerFlow, {}),
    "integer_flow_quadrature": (ConditionalIntegerFlow, {"item_latent": 1, "quadrature": 6}),
    "integer_flow_latent": (ConditionalIntegerFlow, {"item_latent": 1, "n_eval_samples": 16}),
    "softmax_flow": (ConditionalSoftmaxFlow, {"n_eval_samples": 16}),
    "softmax_flow_item": (ConditionalSoftmaxFlow, {"latent": "item", "n_eval_samples": 16}),
    "gaussian": (GaussianHead, {}),
    "ordinal_logistic": (OrdinalLogisticHead, {}),
    "softmax": (SoftmaxHead, {}),
    "mc_dropout": (MCDropoutHead, {"mc_samples": 4}),
    "deep_ensemble": (DeepEnsemble, {"members": 2}),
    "model_ensemble": (ModelEnsemble, {"model": "GaussianHead", "members": 2}),
}


@pytest.fixture(scope="module")
def data():
    return synthetic_annotations(60, dim=4, per_item=(3, 6), seed=4).split_items(
        (0.6, 0.2, 0.2), seed=0
    )


def _make(name: str) -> AnnotatorModel:
    klass, kw = CASES[name]
    return klass(4, LABELS, seed=0, **SMALL, **kw)


def _calls(model: AnnotatorModel, test) -> dict[str, object]:
    """Every public prediction of ``model`` on ``test``, as zero-argument callables."""
    x, y, m = test.features, test.labels, test.mask
    calls = {
        "predict_proba": lambda: model.predict_proba(x, seed=0),
        "label_log_probs": lambda: model.label_log_probs(x, seed=0),
        "label_log_probs_se": lambda: model.label_log_probs_se(x, seed=0),
        "label_log_probs_loo": lambda: model.label_log_probs_loo(x, seed=0),
        "log_prob": lambda: model.log_prob(x, y[:, 0], seed=0),
        "nll": lambda: model.nll(x, y, m, seed=0),
        "panel_log_prob": lambda: model.panel_log_prob(x, y, m, seed=0),
        "item_moments": lambda: model.item_moments(x, seed=0),
        "sample": lambda: model.sample(x, 3, seed=0),
    }
    if isinstance(model, ConditionalIntegerFlow):
        calls["cdf_at_cuts"] = lambda: model.cdf_at_cuts(x)
    return calls


@pytest.mark.parametrize("name", list(CASES))
def test_predictions_before_fit_raise_and_load_counts_as_fitted(name, data, tmp_path):
    """Before ``fit`` every prediction raises naming fit (they returned numbers from the
    random initial weights: e.g. an integer flow's NLL 1.6 on these items, no error); after
    ``fit``, ``load_model`` or ``load_state_dict`` they give the fitted model's numbers, bit
    for bit; a fit that fails part way leaves the model unfitted."""
    train, valid, test = data
    model = _make(name)
    assert not model.fitted
    for call in _calls(model, test).values():
        with pytest.raises(ValueError, match=r"not fitted: call fit\(\)"):
            call()
    valid_set = (valid.features, valid.labels, valid.mask)
    model.fit(train.features, train.labels, train.mask, valid=valid_set, **FIT)
    assert model.fitted and not model.training
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = load_model(path)
    fresh = _make(name)
    fresh.load_state_dict(model.state_dict())
    assert loaded.fitted and fresh.fitted
    members = [m for m in loaded.modules() if isinstance(m, AnnotatorModel)]
    assert all(m.fitted for m in members)  # an ensemble's members too
    want = {what: call() for what, call in _calls(model, test).items()}
    for other in (loaded, fresh):
        for what, call in _calls(other, test).items():
            got = call()
            for a, b in zip(*(t if isinstance(t, tuple) else (t,) for t in (got, want[what]))):
                if a is None:
                    assert b is None
                elif isinstance(a, float):
                    assert a == b, what
                else:
                    torch.testing.assert_close(a, b, rtol=0, atol=0, msg=what)
    with pytest.raises(TypeError, match="fitted must be a bool"):
        fresh.fitted = "yes"


def test_a_failed_fit_leaves_the_model_unfitted(data, monkeypatch):
    train, _, test = data
    model = _make("softmax").fit(train.features, train.labels, train.mask, **FIT)
    monkeypatch.setattr(
        SoftmaxHead, "_train_loss", lambda self, z, c, g: torch.full((z.shape[0],), float("nan"))
    )
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        model.fit(train.features, train.labels, train.mask, **FIT)
    assert not model.fitted
    with pytest.raises(ValueError, match="not fitted"):
        model.predict_proba(test.features)


def test_an_ensemble_is_fitted_when_every_member_is(data, monkeypatch):
    """A refit refused for its arguments leaves a fitted ``ModelEnsemble`` fitted, with the
    same predictions (it was marked unfitted, as a single model is not); a refit in which a
    later member fails part way leaves it unfitted."""
    train, _, test = data
    ens = _make("model_ensemble").fit(train.features, train.labels, train.mask, **FIT)
    before = ens.predict_proba(test.features)
    with pytest.raises(ValueError, match="outside the label set"):
        ens.fit(train.features, train.labels + 10, train.mask, **FIT)
    assert ens.fitted
    torch.testing.assert_close(ens.predict_proba(test.features), before, rtol=0, atol=0)
    second = ens.members[1]
    loss = GaussianHead._train_loss

    def fails_in_member_1(self, z, c, g):
        out = loss(self, z, c, g)
        return out * float("nan") if self is second else out

    monkeypatch.setattr(GaussianHead, "_train_loss", fails_in_member_1)
    with pytest.raises(FloatingPointError):
        ens.fit(train.features, train.labels, train.mask, **FIT)
    assert ens.members[0].fitted and not second.fitted and not ens.fitted
    with pytest.raises(ValueError, match="ModelEnsemble is not fitted"):
        ens.predict_proba(test.features)


def test_cdf_at_cuts_is_the_evaluation_mode_cdf_of_predict_proba(data):
    """``cdf_at_cuts`` of a fitted flow left in training mode: the evaluation-mode cut images,
    whose base-CDF differences are ``predict_proba`` (it ran the encoder with dropout on:
    two calls differed by up to 0.35 in base coordinates, their probabilities by up to 0.06
    from ``predict_proba``)."""
    train, _, test = data
    flow = ConditionalIntegerFlow(4, LABELS, hidden=(32,), dropout=0.5, seed=0)
    flow.fit(train.features, train.labels, train.mask, **FIT).train()
    t = flow.cdf_at_cuts(test.features).double()
    torch.testing.assert_close(t, flow.cdf_at_cuts(test.features).double(), rtol=0, atol=0)
    cdf = base_cdf(t, flow.base)
    ones, zeros = torch.ones_like(cdf[:, :1]), torch.zeros_like(cdf[:, :1])
    probs = torch.diff(torch.cat([zeros, cdf, ones], 1), dim=1)
    torch.testing.assert_close(probs, flow.predict_proba(test.features).double(), atol=1e-6, rtol=0)
    assert flow.training  # the caller's mode is kept


@pytest.mark.parametrize("name", ["integer_flow_quadrature", "softmax_flow_item", "deep_ensemble"])
def test_early_stopping_restores_the_best_epochs_weights(name, data, monkeypatch):
    """The scores ``fit`` saw at each epoch (recorded by a spy), against the restored model's
    score recomputed the same way: equal to the best epoch's for every member, and training
    stopped ``patience + 1`` epochs after the last improvement (or at ``epochs``)."""
    train, valid, _ = data
    model = _make(name)
    seen = []
    klass = type(model)
    score = klass._valid_scores

    def spy(self, z, counts, generator, metric="panel"):
        out = score(self, z, counts, generator, metric)
        seen.append(out.detach().double().clone())
        return out

    monkeypatch.setattr(klass, "_valid_scores", spy)
    patience = 2
    model.fit(
        train.features,
        train.labels,
        train.mask,
        valid=(valid.features, valid.labels, valid.mask),
        epochs=40,
        patience=patience,
        lr=3e-2,
        batch_size=16,
        progress=False,
    )
    monkeypatch.undo()
    scores = torch.stack(seen)  # [epochs, members]
    with torch.no_grad():
        now = model._valid_scores(
            model._features(valid.features),
            model._counts(valid.labels, valid.mask),
            model._generator(model.seed + 2),
        ).double()
    # the rule written out: an epoch improves when its score is below the best by 1e-6
    best, best_epoch = scores[0].clone(), torch.zeros(scores.shape[1], dtype=torch.long)
    for epoch, s in enumerate(scores):
        better = s < best - 1e-6
        best, best_epoch = torch.where(better, s, best), torch.where(better, epoch, best_epoch)
    torch.testing.assert_close(now, best, rtol=0, atol=1e-12)
    assert len(scores) == 40 or len(scores) == int(best_epoch.max()) + patience + 2
    assert [r["valid"] for r in model.history] == pytest.approx(scores.mean(1).tolist())


@pytest.mark.parametrize("labels", [(1, 2, 3, 4, 5), (0, 1), (-3, -2, -1, 0, 1)])
def test_ordinal_logistic_head_matches_statsmodels_ordered_model(labels):
    """``P(y = k | x)`` of the cumulative-link head equals statsmodels' ``OrderedModel`` (logit
    link) given the head's linear predictor as the one covariate (coefficient 1) and its
    thresholds (first cut point, then log increments, statsmodels' parameterisation)."""
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    model = OrdinalLogisticHead(3, labels, hidden=(8,), seed=1).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.8 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.fitted = True  # hand-set weights
    model.eval()
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        eta = model._out(model._features(x))[:, 0].numpy()
        theta = model.thresholds().numpy()
    assert (np.diff(theta) > 0).all()
    k = len(labels)
    ordered = OrderedModel(np.arange(9) % k, eta[:, None], distr="logit")
    params = np.concatenate([[1.0, theta[0]], np.log(np.diff(theta))])
    ref = ordered.predict(params, exog=eta[:, None])
    np.testing.assert_allclose(model.predict_proba(x).numpy(), ref, rtol=0, atol=1e-14)


def test_mc_dropout_predictive_is_the_average_over_dropout_masks():
    """MC dropout's ``p(y | x)`` against the exact expectation over the ``2^3`` dropout masks
    of a 3-unit hidden layer (keep probability 0.7, kept units scaled by 1 / 0.7): within 4
    Monte Carlo standard errors (the masks are shared by the items, so every item's error is
    that of one mean of ``T`` passes)."""
    model = MCDropoutHead(2, (0, 1, 2), hidden=(3,), dropout=0.3, seed=0).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.fitted = True  # hand-set weights
    model.eval()
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    passes = 40_000
    p = model.predict_proba(x, seed=1, n_samples=passes)
    with torch.no_grad():
        hidden = torch.relu(model.encoder.net[0](model._features(x)))
        terms, weights = [], []
        for keep in itertools.product((0.0, 1.0), repeat=3):
            mask = torch.tensor(keep, dtype=torch.float64) / 0.7
            terms.append(torch.softmax(model.head(hidden * mask), -1))
            weights.append(np.prod([0.7 if k else 0.3 for k in keep]))
    w = torch.tensor(weights, dtype=torch.float64)[:, None, None]
    exact = (w * torch.stack(terms)).sum(0)
    se = torch.sqrt((w * (torch.stack(terms) - exact) ** 2).sum(0) / passes)
    assert float(w.sum()) == pytest.approx(1.0)
    assert bool(((p - exact).abs() <= 4 * se + 1e-12).all()), (p - exact, se)
    assert not torch.allclose(exact, terms[-1])  # dropout matters here


def test_paired_difference_is_the_mean_and_sem_of_per_seed_differences():
    rng = np.random.default_rng(0)
    runs = [{"a": {"nll": float(u)}, "b": {"nll": float(v)}} for u, v in rng.normal(size=(7, 2))]
    runs.append({"a": {"nll": 0.0}})  # a seed without the baseline is left out
    diffs = [r["a"]["nll"] - r["b"]["nll"] for r in runs[:7]]
    out = paired_difference(runs, "a", "b", "nll")
    assert out["mean"] == pytest.approx(np.mean(diffs), rel=1e-12)
    assert out["se"] == pytest.approx(sem(diffs), rel=1e-12)
    assert out["n"] == 7
