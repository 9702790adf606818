"""Out-of-domain protocol: paired repeats, metrics against direct computations, BO curves."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from metalearn.ood import (
    Surrogate,
    default_surrogates,
    optimise_out_of_domain,
    predict_out_of_domain,
    standardised_nll,
    summarise,
)


def _problem(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    signal = torch.rand(n, 3, generator=g, dtype=torch.float64)
    y = (signal * torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)).sum(-1)
    y = y + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    noise = torch.rand(n, 3, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 3, (n, 16), generator=g).double()
    inputs = {"good": signal, "bad": noise, "fingerprint": counts}
    return inputs, y.numpy()


def test_informative_features_win_and_repeats_are_paired():
    inputs, y = _problem()
    models = [Surrogate("good", "good"), Surrogate("bad", "bad"), Surrogate("good2", "good")]
    res = predict_out_of_domain(inputs, y, models, n_train=30, repeats=3, progress=False)
    assert set(res) == {"good", "bad", "good2"}
    assert res["good"]["r2"].min() > 0.9 > res["bad"]["r2"].max()
    assert res["good"]["nll"].max() < res["bad"]["nll"].min()
    # same training sets in every repeat: the same model on the same inputs scores the same
    np.testing.assert_array_equal(res["good"]["r2"], res["good2"]["r2"])
    again = predict_out_of_domain(inputs, y, models[:1], n_train=30, repeats=3, progress=False)
    np.testing.assert_array_equal(again["good"]["r2"], res["good"]["r2"])
    # tied training labels: the standardised NLL was NaN (a training std of 0)
    y_tied = np.where(np.arange(len(y)) < len(y) - 5, 1.0, y)  # pairs drawn are ~all tied
    res = predict_out_of_domain(
        inputs, y_tied, models[:1], n_train=2, repeats=3, progress=False, seed=0
    )
    assert np.isfinite(res["good"]["nll"]).all()


def test_standardised_nll_matches_scipy():
    rng = np.random.default_rng(0)
    y, mean = rng.normal(size=50), rng.normal(size=50)
    var = rng.uniform(0.2, 2.0, size=50)
    mu, sd = 0.7, 1.9
    ref = -norm.logpdf((y - mu) / sd, loc=(mean - mu) / sd, scale=np.sqrt(var) / sd).mean()
    assert standardised_nll(y, mean, var, mu, sd) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="variances"):
        standardised_nll(y, mean, np.zeros(50), mu, sd)
    with pytest.raises(ValueError, match="sd must be"):  # NaN before
        standardised_nll(np.zeros(2), np.zeros(2), np.ones(2), 0.0, 0.0)


def test_default_surrogates_and_bo_curves():
    inputs, y = _problem(n=80)
    models = default_surrogates(["good"])
    assert [s.name for s in models] == ["good", "GP-Tanimoto", "RF"]
    curves = optimise_out_of_domain(
        inputs, y, models, n_init=5, n_iter=4, repeats=2, progress=False
    )
    assert set(curves) == {"good", "GP-Tanimoto", "RF", "random"}
    for v in curves.values():
        assert v.shape == (2, 5)
        assert (np.diff(v, axis=1) >= 0).all()
    first = {k: v[:, 0] for k, v in curves.items()}  # shared initial design
    for v in first.values():
        np.testing.assert_array_equal(v, first["random"])
    assert curves["good"][:, -1].mean() >= curves["random"][:, -1].mean()


def test_bad_arguments_are_named():
    inputs, y = _problem(n=40)
    with pytest.raises(ValueError, match="unknown kernel"):
        Surrogate("x", "good", kernel="nope")  # accepted until the first fit
    with pytest.raises(ValueError, match="missing"):
        predict_out_of_domain(inputs, y, [Surrogate("x", "nope")], n_train=5, repeats=1)
    with pytest.raises(ValueError, match="rows"):
        predict_out_of_domain(inputs, y[:-1], [Surrogate("g", "good")], n_train=5, repeats=1)
    with pytest.raises(ValueError, match="n_train"):
        predict_out_of_domain(inputs, y, [Surrogate("g", "good")], n_train=40, repeats=1)
    with pytest.raises(ValueError, match="model"):
        Surrogate("x", "good", model="svm")
    # two surrogates of one name: the second's results overwrote the first's
    twins = [Surrogate("g", "good"), Surrogate("g", "bad")]
    with pytest.raises(ValueError, match=r"distinct names; repeated: \['g'\]"):
        predict_out_of_domain(inputs, y, twins, n_train=5, repeats=1)
    with pytest.raises(ValueError, match="clashes with random search"):
        optimise_out_of_domain(inputs, y, [Surrogate("random", "good")], n_iter=1, repeats=1)
    with pytest.raises(ValueError, match="inputs is empty"):  # a StopIteration inside
        optimise_out_of_domain({}, y, [], n_iter=1, repeats=1)


def test_integer_bool_and_array_inputs_score_as_their_float_copies():
    inputs, y = _problem(n=60)
    counts = inputs["fingerprint"]
    models = [Surrogate("RF", "fp", "forest"), Surrogate("GP", "fp", "gp", "tanimoto")]
    kw = dict(n_train=20, repeats=2, progress=False)
    want = predict_out_of_domain({"fp": counts}, y, models, **kw)
    # integer counts truncated the labels to integers (the labels took the inputs' dtype)
    for same in (counts.long(), counts.numpy().astype(np.int32)):  # arrays were a TypeError
        got = predict_out_of_domain({"fp": same}, y, models, **kw)
        for m in ("RF", "GP"):
            np.testing.assert_allclose(got[m]["r2"], want[m]["r2"], rtol=1e-9)
    bits = counts > 0
    got = predict_out_of_domain({"fp": bits}, y, models[:1], **kw)
    np.testing.assert_allclose(
        got["RF"]["r2"],
        predict_out_of_domain({"fp": bits.double()}, y, models[:1], **kw)["RF"]["r2"],
    )


def test_every_seed_runs_and_repeats_draw_the_documented_designs():
    """Repeat ``r`` used ``seed + r``: the forest passed it (and pool_bo's ``seed * 1000 + it``)
    to scikit-learn, which takes seeds below 2**32, so seed 2**32 failed in both protocols
    ("random_state ... must be an int in the range [0, 4294967295]"), and ``seed + r`` left
    ``[0, 2**63)`` near its end. Now any seed in ``[0, 2**63)`` runs; repeat ``r``'s training
    set / initial design is ``default_rng((seed + r) mod 2**63)``'s draw."""
    from sklearn.ensemble import RandomForestRegressor

    from metalearn.metrics import r2_os

    inputs, y = _problem(n=50)
    rf = [Surrogate("RF", "good", "forest")]
    for seed in (2**32, 2**63 - 1):
        res = predict_out_of_domain(inputs, y, rf, n_train=10, repeats=2, seed=seed)
        for r in range(2):
            s = (seed + r) % 2**63
            train = np.random.default_rng(s).choice(len(y), size=10, replace=False)
            rest = np.setdiff1d(np.arange(len(y)), train)
            x = inputs["good"].numpy()
            ref = RandomForestRegressor(100, random_state=s % 2**32, oob_score=True, n_jobs=1)
            pred = ref.fit(x[train], y[train]).predict(x[rest])
            assert res["RF"]["r2"][r] == pytest.approx(r2_os(y[rest], pred, y[train].mean()))
        curves = optimise_out_of_domain(
            inputs, y, rf, n_init=4, n_iter=2, repeats=2, seed=seed, progress=False
        )
        for r in range(2):
            design = np.random.default_rng((seed + r) % 2**63).choice(len(y), 4, replace=False)
            assert curves["random"][r, 0] == curves["RF"][r, 0] == y[design].max()
    with pytest.raises(ValueError, match="n_iter must be >= 0"):  # "negative dimensions"
        optimise_out_of_domain(inputs, y, rf, n_iter=-2, repeats=1)
    with pytest.raises(TypeError, match="n_iter must be an int"):  # "'float' object cannot"
        optimise_out_of_domain(inputs, y, rf, n_iter=2.5, repeats=1)
    with pytest.raises(ValueError, match="seed"):
        predict_out_of_domain(inputs, y, rf, n_train=10, repeats=1, seed=-1)


def test_summarise_is_over_the_repeats_only():
    """``summarise`` of :func:`optimise_out_of_domain`'s curves ``[repeats, n_iter + 1]``
    pooled iterations and repeats into one mean and standard error ((3.0, 0.577) for the two
    curves below, whose per-iteration means are 2, 3, 4 with standard error 1 each); it is now
    over the first axis, as documented, and unchanged for 1-d values."""
    from scipy.stats import sem

    curves = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    r2 = np.array([0.1, 0.4, 0.3])
    got = summarise({"bo": curves, "r2": r2})
    np.testing.assert_allclose(got["bo"][0], curves.mean(0), rtol=1e-15)
    np.testing.assert_allclose(got["bo"][1], sem(curves, axis=0), rtol=1e-12)
    assert got["r2"][0] == pytest.approx(r2.mean()) and got["r2"][1] == pytest.approx(sem(r2))
