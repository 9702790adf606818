"""Identifiability (Chen et al., TMLR 2024): the stage-2 marginal likelihood against a direct
multivariate-normal computation, its gradient, the MCC metrics on planted transformations,
the synthetic generator, and recovery of latents on small problems."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from metalearn.identifiability import (
    LinearCausalModel,
    causal_log_marginal,
    correlation_matrix,
    fit_causal_model,
    fit_multitask,
    latent_moments,
    make_synthetic_tasks,
    mixing_function,
    strong_mcc,
    task_moments,
    weak_mcc,
)

DT = torch.float64


def _problem(seed: int, n: int = 40, dim: int = 4, d: int = 3, t: int = 3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, dim, generator=g, dtype=DT)
    y = torch.randn(n, t, generator=g, dtype=DT) * 2 + 0.5
    y[torch.rand(n, t, generator=g) < 0.3] = float("nan")  # missing labels
    params = {
        "mixing": torch.randn(dim, d, generator=g, dtype=DT),
        "offset": torch.randn(dim, generator=g, dtype=DT),
        "noise": torch.tensor(0.3, dtype=DT),
        "causal": torch.rand(t, d, generator=g, dtype=DT),  # relaxed indicators
        "gamma": torch.randn(t, d, generator=g, dtype=DT),
        "rho": 0.4 * torch.rand(t, d, generator=g, dtype=DT),  # ||rho|| < 1
    }
    return h, y, params


def _direct(h, y, p, sigma_s, with_rho):
    """Row-by-row sum of MultivariateNormal log densities (independent of the moments path)."""
    out = []
    dim = p["mixing"].shape[0]
    for t in range(y.shape[1]):
        c, gam = p["causal"][t], p["gamma"][t]
        var = c + (1 - c) * sigma_s**2
        mu = (1 - c) * gam
        k = torch.diag(var)
        if with_rho:
            r = c * p["rho"][t]
            mu = mu + r
            k = k - torch.outer(r, r)
        a = p["mixing"] @ mu
        cov = p["mixing"] @ k @ p["mixing"].T + p["noise"] * torch.eye(dim, dtype=DT)
        rows = ~torch.isnan(y[:, t])
        mean = p["offset"] + y[rows, t][:, None] * a
        mvn = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
        out.append(mvn.log_prob(h[rows]).sum())
    return torch.stack(out)


@pytest.mark.parametrize("with_rho", [True, False])
def test_log_marginal_matches_multivariate_normal(with_rho):
    h, y, p = _problem(0)
    m = task_moments(h, y)
    rho = p["rho"] if with_rho else None
    got = causal_log_marginal(
        m, p["mixing"], p["offset"], p["noise"], p["causal"], p["gamma"], rho, sigma_s=0.2
    )
    want = _direct(h, y, p, 0.2, with_rho)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)


def test_log_marginal_gradient_matches_direct_and_finite_differences():
    h, y, p = _problem(1, n=12, dim=3, d=2, t=2)
    m = task_moments(h, y)
    names = ["mixing", "offset", "noise", "causal", "gamma", "rho"]
    leaves = {k: p[k].clone().requires_grad_(True) for k in names}

    def f(*args):
        kw = dict(zip(names, args))
        return causal_log_marginal(
            m,
            kw["mixing"],
            kw["offset"],
            kw["noise"],
            kw["causal"],
            kw["gamma"],
            kw["rho"],
            sigma_s=0.3,
        ).sum()

    assert torch.autograd.gradcheck(f, tuple(leaves[k] for k in names), eps=1e-6, atol=1e-5)
    g_mom = torch.autograd.grad(f(*(leaves[k] for k in names)), [leaves[k] for k in names])
    g_dir = torch.autograd.grad(_direct(h, y, leaves, 0.3, True).sum(), [leaves[k] for k in names])
    for a, b in zip(g_mom, g_dir):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_task_moments_against_numpy():
    h, y, _ = _problem(2)
    m = task_moments(h, y)
    hn, yn = h.numpy(), y.numpy()
    for t in range(y.shape[1]):
        rows = ~np.isnan(yn[:, t])
        ht, yt = hn[rows], yn[rows, t]
        assert m.n[t] == rows.sum()
        np.testing.assert_allclose(m.hh[t], ht.T @ ht / rows.sum(), rtol=1e-12)
        np.testing.assert_allclose(m.hy[t], ht.T @ yt / rows.sum(), rtol=1e-12)
        np.testing.assert_allclose(m.yy[t], (yt**2).mean(), rtol=1e-12)
        np.testing.assert_allclose(m.h[t], ht.mean(0), rtol=1e-12)


def test_latent_moments_is_covariance_of_the_generative_graph():
    """Exact conditioning: Cov[z_C | y] = I - r r^T and E[z_C | y] = r y for standardised y."""
    rng = np.random.default_rng(3)
    w = np.array([0.6, -0.5, 0.0])
    z = rng.standard_normal((400_000, 3))
    y = z @ w + 0.3 * rng.standard_normal(len(z))
    y = y / np.sqrt(w @ w + 0.09)
    r = w / np.sqrt(w @ w + 0.09)
    mu, k = latent_moments(
        torch.tensor([[1.0, 1.0, 1.0]], dtype=DT),
        torch.zeros(1, 3, dtype=DT),
        torch.tensor(r[None], dtype=DT),
        0.1,
    )
    slope = (z * y[:, None]).mean(0)
    resid = z - y[:, None] * slope
    np.testing.assert_allclose(mu[0].numpy(), slope, atol=5e-3)
    np.testing.assert_allclose(k[0].numpy(), np.cov(resid.T), atol=8e-3)


def test_strong_mcc_is_one_for_permutation_scaling_sign_and_shift():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 5))
    perm = rng.permutation(5)
    z_hat = z[:, perm] * np.array([3.0, -0.2, 7.0, -1.0, 0.5]) + rng.standard_normal(5)
    mcc, (rows, cols) = strong_mcc(z, z_hat, return_matching=True)
    assert mcc == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(perm[cols], rows)
    rot, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert strong_mcc(z, z @ rot) < 0.9
    np.testing.assert_allclose(
        correlation_matrix(z, z_hat), np.abs(np.corrcoef(z.T, z_hat.T)[:5, 5:]), atol=1e-12
    )


def test_mcc_edge_cases_constant_columns_and_extreme_scales():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((500, 2))
    # constant columns correlate 0 (0.1 and 0.7 read 1.0: their centring leaves rounding residue)
    c = correlation_matrix(np.c_[np.full(500, 0.1), z[:, 0]], np.c_[np.full(500, 0.7), z[:, 1]])
    assert c[0, 0] == 0.0 and c[0, 1] == 0.0 and c[1, 0] == 0.0
    assert weak_mcc(z, np.ones((500, 2))) == 0.0  # raised, naming z_true
    with pytest.raises(TypeError, match="n_fit must be an int"):
        weak_mcc(z, z, n_fit=100.5)  # a slice TypeError
    for scale in (1e155, 1e-200):  # the norms overflowed / underflowed to an MCC of 0
        assert strong_mcc(z, z * scale) == pytest.approx(1.0, abs=1e-12)


def test_weak_mcc_is_one_for_invertible_linear_maps_and_low_for_noise():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((500, 4))
    m = rng.standard_normal((4, 4))
    assert weak_mcc(z, z @ m.T + 2.0) == pytest.approx(1.0, abs=1e-6)
    assert weak_mcc(z, z @ m.T, n_fit=300) == pytest.approx(1.0, abs=1e-6)
    assert weak_mcc(z, rng.standard_normal((500, 4)), n_fit=300) < 0.3
    assert strong_mcc(z, z @ m.T) < weak_mcc(z, z @ m.T)


def test_weak_mcc_matches_scikit_learn_cca():
    from sklearn.cross_decomposition import CCA

    rng = np.random.default_rng(2)
    z = rng.standard_normal((400, 3))
    z_hat = np.tanh(z @ rng.standard_normal((3, 4))) + 0.3 * rng.standard_normal((400, 4))
    ua, ub = CCA(n_components=3, max_iter=5000, tol=1e-12).fit(z, z_hat).transform(z, z_hat)
    want = np.mean([abs(np.corrcoef(ua[:, i], ub[:, i])[0, 1]) for i in range(3)])
    assert weak_mcc(z, z_hat) == pytest.approx(want, abs=1e-4)


def test_mcc_bad_arguments():
    z = np.zeros((10, 2))
    with pytest.raises(ValueError, match="z_hat"):
        strong_mcc(z, np.zeros(10))
    with pytest.raises(ValueError, match="rows"):
        strong_mcc(z, np.zeros((9, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        weak_mcc(np.full((10, 2), np.nan), z)
    with pytest.raises(ValueError, match="n_fit"):
        weak_mcc(z, z, n_fit=9)


def test_synthetic_tasks_follow_the_causal_graph():
    data = make_synthetic_tasks(4, 20_000, 4, 6, seed=0, label_noise=0.1, sigma_s=0.1)
    assert data.x.shape == (80_000, 6) and data.y.shape == (80_000, 4)
    assert np.isnan(data.y).sum() == 80_000 * 3  # one label per row
    for t in range(4):
        rows = data.task_of_row == t
        z, y, c = data.z[rows], data.labels()[rows], data.causal[t]
        assert c.any() and not c.all()
        np.testing.assert_allclose(np.std(y - z @ data.weights[t]), 0.1, rtol=0.03)
        np.testing.assert_allclose(np.std(z[:, c], axis=0), 1.0, rtol=0.03)
        slope = (z[:, ~c] * y[:, None]).mean(0) / (y**2).mean()
        np.testing.assert_allclose(slope, data.gamma[t, ~c], rtol=0.02)
    same = make_synthetic_tasks(4, 30, 4, 6, mixing="nonlinear", seed=1, mixing_seed=7)
    np.testing.assert_allclose(same.x, mixing_function(4, 6, "nonlinear", 7)(same.z))
    train, test = data.split(5)
    assert len(test.x) == 20 and len(train.x) == 80_000 - 20
    assert set(test.task_of_row) == {0, 1, 2, 3}


def test_nonlinear_mixing_is_injective_and_linear_mixing_is_linear():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 3))
    g = mixing_function(3, 5, "linear", 1)
    np.testing.assert_allclose(g(2 * z), 2 * g(z))
    f = mixing_function(3, 5, "nonlinear", 1)
    x = f(z)
    assert x.shape == (200, 5)
    assert not np.allclose(f(z + z[::-1]) + f(0 * z), f(z) + f(z[::-1]))  # not affine
    dist_z = np.linalg.norm(z[:, None] - z[None], axis=-1)
    dist_x = np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert dist_x[dist_z > 0].min() > 0


def test_generator_bad_arguments():
    with pytest.raises(ValueError, match="mixing"):
        make_synthetic_tasks(mixing="cubic")
    with pytest.raises(ValueError, match="obs_dim"):
        make_synthetic_tasks(latent_dim=5, obs_dim=3)
    with pytest.raises(ValueError, match="causal_prob"):
        make_synthetic_tasks(causal_prob=1.0)
    with pytest.raises(ValueError, match="n_test_per_task"):
        make_synthetic_tasks(3, 10, 2, 2, seed=0).split(10)
    with pytest.raises(ValueError, match="n_layers"):  # 0 built one layer
        mixing_function(3, 5, "nonlinear", 1, n_layers=0)


def test_split_takes_the_last_rows_of_each_task_in_any_row_order():
    data = make_synthetic_tasks(3, 12, 2, 2, seed=0)
    perm = np.random.default_rng(0).permutation(len(data.x))
    mixed = data.subset(perm)  # the tasks' rows are no longer contiguous
    train, test = mixed.split(5)
    assert np.bincount(test.task_of_row).tolist() == [5, 5, 5]  # was 2 / 5 / 4 / ...
    for t in range(3):  # the last five rows of task t in row order
        rows = np.flatnonzero(mixed.task_of_row == t)
        np.testing.assert_array_equal(test.x[test.task_of_row == t], mixed.x[rows[-5:]])
    assert len(train.x) + len(test.x) == len(data.x)
    with pytest.raises(ValueError, match="every task needs two rows"):  # "in [1, -1]" before
        data.subset(data.task_of_row != 1).split(1)


def test_latents_invert_a_known_mixing():
    model = LinearCausalModel(4, 3, 2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.mixing.copy_(torch.randn(4, 3, generator=g, dtype=DT))
        model.offset.copy_(torch.randn(4, generator=g, dtype=DT))
    z = torch.randn(50, 3, generator=g, dtype=DT)
    h = z @ model.mixing.T.detach() + model.offset.detach()
    torch.testing.assert_close(model.latents(h, method="pinv"), z)
    # posterior mean under N(0, I): ridge solution (A^T A + s^2 I)^{-1} A^T (h - b)
    a = model.mixing.detach().numpy()
    ridge = np.linalg.solve(
        a.T @ a + float(model.noise.detach()) * np.eye(3),
        a.T @ (h - model.offset).T.detach().numpy(),
    )
    np.testing.assert_allclose(model.latents(h).numpy(), ridge.T, rtol=1e-10)
    with pytest.raises(ValueError, match="method"):
        model.latents(h, method="mean")
    with pytest.raises(ValueError, match="columns"):
        model.latents(h[:, :3])


def test_stage2_recovers_linearly_mixed_latents():
    """Stage 2 alone on linear mixtures of the true latents: strong MCC > 0.9, above PCA, and
    the causal indicators found (labels noisy enough for causal latents to stay spread given
    y; with a nearly noiseless label a lone causal latent given y looks spurious)."""
    data = make_synthetic_tasks(30, 150, 3, 3, seed=4, mixing="linear", label_noise=1.0)
    train, test = data.split(50)
    model, record = fit_causal_model(
        train.x, train.y, 3, steps=400, refine_steps=100, lr=0.05, restarts=2, seed=0
    )
    assert len(record.restart_objectives) == 2
    mcc = strong_mcc(test.z, model.latents(test.x))
    pca = strong_mcc(test.z, PCA(3).fit(train.x).transform(test.x))
    assert mcc > 0.9
    assert mcc > pca
    _, (rows, cols) = strong_mcc(test.z, model.latents(test.x), return_matching=True)
    found = model.causal_indicators().numpy()[:, cols]
    assert (found == data.causal[:, rows]).mean() > 0.9


def test_stage1_representation_is_linearly_identified():
    data = make_synthetic_tasks(20, 150, 3, 6, seed=5, mixing="linear")
    train, test = data.split(50)
    fit = fit_multitask(train.x, train.y, 3, hidden=(32,), epochs=40, seed=0, lr=3e-3)
    assert fit.losses[-1] < fit.losses[0]
    h = fit.represent(test.x)
    assert h.shape == (len(test.x), 3)
    assert weak_mcc(test.z, h.numpy()) > 0.9
    pred = fit.predict(test.x).numpy()[np.arange(len(test.x)), test.task_of_row]
    y = test.labels()
    assert 1 - np.mean((pred - y) ** 2) / np.var(y) > 0.8


def test_stage1_with_dropout_is_reproduced_by_its_seed():
    """Dropout masks follow ``seed`` (they came from torch's global generator: two calls with
    the same seed trained different networks), whatever the global generator's state."""
    data = make_synthetic_tasks(4, 30, 2, 4, seed=0)
    kw = dict(hidden=(16,), epochs=3, dropout=0.3, batch_size=32)
    state = torch.get_rng_state()
    a = fit_multitask(data.x, data.y, 2, seed=1, **kw)
    torch.rand(5)  # another draw from the global generator in between
    b = fit_multitask(data.x, data.y, 2, seed=1, **kw)
    assert a.losses == b.losses
    torch.testing.assert_close(a.represent(data.x), b.represent(data.x), rtol=0, atol=0)
    torch.testing.assert_close(a.represent(data.x, batch_size=7), a.represent(data.x))
    for bad in (0, -5):  # range() arg 3 must not be zero / torch.cat of an empty list
        with pytest.raises(ValueError, match="batch_size"):
            a.represent(data.x, batch_size=bad)
    c = fit_multitask(data.x, data.y, 2, seed=1, **{**kw, "dropout": 0.0})
    assert c.losses != a.losses  # the masks are active
    torch.set_rng_state(state)


def test_fit_bad_arguments():
    h = np.random.default_rng(0).standard_normal((10, 3))
    y = np.full((10, 2), np.nan)
    y[:, 0] = np.arange(10)
    with pytest.raises(ValueError, match="fewer than 2 labels|< 2 labels"):
        fit_causal_model(h, y, 2)
    with pytest.raises(ValueError, match="fewer than 2 labels"):
        fit_multitask(h, y, 2)
    with pytest.raises(ValueError, match="y must have shape"):
        fit_causal_model(h, np.zeros((9, 2)), 2)
    with pytest.raises(ValueError, match="rows"):
        fit_multitask(h, np.zeros((9, 2)), 2)
    with pytest.raises(ValueError, match="latent_dim"):
        LinearCausalModel(3, 4, 2)
    with pytest.raises(ValueError, match="constant labels"):
        fit_causal_model(h, np.ones((10, 1)), 2, steps=1)
    for value in (1.0, -5.2):  # read a std of ~1e-8 from E[y^2] - E[y]^2 and were fitted
        y2 = np.c_[np.arange(10.0), np.full(10, value)]
        with pytest.raises(ValueError, match="constant labels"):
            fit_causal_model(np.tile(h, (3, 1)), np.tile(y2, (3, 1)), 2, steps=1)
    with pytest.raises(ValueError, match="inf"):
        fit_causal_model(h, np.full((10, 1), np.inf), 2)


@pytest.mark.slow
@pytest.mark.parametrize("mixing", ["linear", "nonlinear"])
def test_full_pipeline_beats_unsupervised_baselines(mixing):
    from sklearn.decomposition import FastICA

    data = make_synthetic_tasks(50, 240, 5, 10, seed=0, mixing=mixing)
    train, test = data.split(40)
    fit = fit_multitask(
        train.x, train.y, 5, hidden=(64,), epochs=60, lr=3e-3, weight_decay=1e-3, seed=0
    )
    h, ht = fit.represent(train.x).double(), fit.represent(test.x).double()
    model, _ = fit_causal_model(h, train.y, 5, steps=1000, refine_steps=300, seed=0)
    mcc = strong_mcc(test.z, model.latents(ht))
    ica = FastICA(5, random_state=0, max_iter=2000).fit(h.numpy())
    assert mcc > strong_mcc(test.z, PCA(5).fit(h.numpy()).transform(ht.numpy()))
    assert mcc > strong_mcc(test.z, ica.transform(ht.numpy()))
    if mixing == "linear":
        assert mcc > 0.9
