"""metalearn.identifiability against independent computations: the stage-2 marginal likelihood
vs row-by-row scipy multivariate-normal densities of the same generative model (both
``condition_causal`` variants, relaxed and binary indicators, batched restarts), its gradients
vs central finite differences, weak MCC vs an SVD of the inverse-square-root-whitened
cross-covariance (scipy.linalg.sqrtm), strong MCC vs linear_sum_assignment on numpy's
correlations, make_synthetic_tasks vs the paper's generative definition (KS tests), seeding,
and argument validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg, stats
from scipy.optimize import linear_sum_assignment

from metalearn.identifiability import (
    LinearCausalModel,
    causal_log_marginal,
    fit_causal_model,
    make_synthetic_tasks,
    strong_mcc,
    task_moments,
    weak_mcc,
)

DT = torch.float64
N, D, LAT, T, SIGMA_S = 25, 4, 3, 3, 0.15


def _params(seed: int):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, D))
    y = 1.5 * rng.standard_normal((N, T)) + 0.3
    y[rng.random((N, T)) < 0.3] = np.nan
    rho = rng.random((T, LAT))
    rho *= 0.8 / np.linalg.norm(rho, axis=1, keepdims=True)
    p = {
        "mixing": rng.standard_normal((D, LAT)),
        "offset": rng.standard_normal(D),
        "noise": 0.2,
        "causal": rng.random((T, LAT)),
        "gamma": rng.standard_normal((T, LAT)),
        "rho": rho,
    }
    return h, y, p


def _scipy_log_marginal(h, y, p, causal, with_rho):
    """sum_i log N(h_i; A E[z | y_i] + b, A Cov[z | y_i] A^T + s^2 I) per task, written from
    the generative definition latent by latent (causal N(0, 1), or N(r y, I - r r^T) when
    conditioned; spurious N(gamma y, sigma_s^2))."""
    a, b = p["mixing"], p["offset"]
    out = np.zeros(T)
    for t in range(T):
        for i in np.flatnonzero(~np.isnan(y[:, t])):
            mean, cov = np.zeros(LAT), np.zeros((LAT, LAT))
            for j in range(LAT):
                c = causal[t, j]  # mixture weights of the relaxed model's moments
                mean[j] = (1 - c) * p["gamma"][t, j] * y[i, t]
                cov[j, j] = c * 1.0 + (1 - c) * SIGMA_S**2
            if with_rho:
                r = causal[t] * p["rho"][t]
                mean += r * y[i, t]
                cov -= np.outer(r, r)
            s = a @ cov @ a.T + p["noise"] * np.eye(D)
            out[t] += stats.multivariate_normal(a @ mean + b, s).logpdf(h[i])
    return out


def _t(x):
    return torch.as_tensor(x, dtype=DT)


@pytest.mark.parametrize("with_rho", [False, True])
@pytest.mark.parametrize("binary", [False, True])
def test_log_marginal_matches_scipy_rows(with_rho, binary):
    h, y, p = _params(0)
    causal = (p["causal"] > 0.5).astype(float) if binary else p["causal"]
    got = causal_log_marginal(
        task_moments(h, y),
        _t(p["mixing"]),
        _t(p["offset"]),
        _t(p["noise"]),
        _t(causal),
        _t(p["gamma"]),
        _t(p["rho"]) if with_rho else None,
        sigma_s=SIGMA_S,
    )
    np.testing.assert_allclose(
        got.numpy(), _scipy_log_marginal(h, y, p, causal, with_rho), rtol=1e-11
    )


def _model(p, condition_causal: bool, batch: int = 0) -> LinearCausalModel:
    """A model whose transformed parameters equal ``p`` (min_noise 0: noise = exp(log_noise))."""
    mod = LinearCausalModel(
        D, LAT, T, sigma_s=SIGMA_S, condition_causal=condition_causal, min_noise=0.0
    )
    rho = p["rho"]
    with torch.no_grad():
        mod.mixing.copy_(_t(p["mixing"]))
        mod.offset.copy_(_t(p["offset"]))
        mod.log_noise.fill_(np.log(p["noise"]))
        mod.logits.copy_(torch.logit(_t(p["causal"])))
        mod.gamma.copy_(_t(p["gamma"]))
        # rho = r / sqrt(1 + |r|^2)  <=>  r = rho / sqrt(1 - |rho|^2)
        mod.rho_raw.copy_(_t(rho / np.sqrt(1 - (rho**2).sum(1, keepdims=True))))
    return mod


@pytest.mark.parametrize("condition_causal", [False, True])
def test_model_log_marginal_matches_scipy_relaxed_and_hardened(condition_causal):
    h, y, p = _params(1)
    m = task_moments(h, y)
    mod = _model(p, condition_causal)
    want = _scipy_log_marginal(h, y, p, p["causal"], condition_causal)
    np.testing.assert_allclose(mod.log_marginal(m).detach().numpy(), want, rtol=1e-11)
    with torch.no_grad():
        mod.hard.fill_(True)
    binary = (p["causal"] > 0.5).astype(float)
    want = _scipy_log_marginal(h, y, p, binary, condition_causal)
    np.testing.assert_allclose(mod.log_marginal(m).detach().numpy(), want, rtol=1e-11)


def test_batched_restarts_equal_separate_evaluations():
    h, y, _ = _params(2)
    m = task_moments(h, y)
    g = torch.Generator().manual_seed(0)
    b = 3
    args = [
        torch.randn(b, D, LAT, generator=g, dtype=DT),
        torch.randn(b, D, generator=g, dtype=DT),
        torch.rand(b, generator=g, dtype=DT) + 0.1,
        torch.rand(b, T, LAT, generator=g, dtype=DT),
        torch.randn(b, T, LAT, generator=g, dtype=DT),
        0.3 * torch.rand(b, T, LAT, generator=g, dtype=DT),
    ]
    got = causal_log_marginal(m, *args, sigma_s=SIGMA_S)
    for i in range(b):
        one = causal_log_marginal(m, *(a[i] for a in args), sigma_s=SIGMA_S)
        torch.testing.assert_close(got[i], one, rtol=1e-13, atol=0)


def _central_differences(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = x.view(-1)
    for k in range(flat.numel()):
        old = float(flat[k])
        flat[k] = old + eps
        up = float(f())
        flat[k] = old - eps
        down = float(f())
        flat[k] = old
        grad.view(-1)[k] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("condition_causal", [False, True])
def test_gradients_match_central_differences(condition_causal):
    """Through the public function and through the model's raw parameters (logits, rho_raw,
    log_noise), the fitting loop's path."""
    h, y, p = _params(3)
    m = task_moments(h, y)
    names = ["mixing", "offset", "noise", "causal", "gamma"] + (["rho"] if condition_causal else [])
    leaves = {k: _t(p[k]).clone().requires_grad_(True) for k in names}

    def f():
        return causal_log_marginal(
            m, *(leaves[k] for k in names), sigma_s=SIGMA_S
        ).sum()  # rho is the last positional argument when present

    grads = torch.autograd.grad(f(), [leaves[k] for k in names])
    with torch.no_grad():
        for k, g in zip(names, grads):
            torch.testing.assert_close(g, _central_differences(f, leaves[k]), rtol=1e-6, atol=1e-6)

    mod = _model(p, condition_causal)
    params = {k: v for k, v in mod.named_parameters() if condition_causal or k != "rho_raw"}
    grads = torch.autograd.grad(mod.log_marginal(m).sum(), list(params.values()))
    with torch.no_grad():
        for (k, x), g in zip(params.items(), grads):
            fd = _central_differences(lambda: mod.log_marginal(m).sum(), x)
            torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-6, msg=k)


def _weak_reference(a, b, n_fit=None):
    """Canonical correlations: singular values of Saa^{-1/2} Sab Sbb^{-1/2} (scipy sqrtm)."""
    n = len(a)
    fit = slice(0, n if n_fit is None else n_fit)
    ac, bc = a[fit] - a[fit].mean(0), b[fit] - b[fit].mean(0)
    wa = np.linalg.inv(np.real(linalg.sqrtm(ac.T @ ac)))
    wb = np.linalg.inv(np.real(linalg.sqrtm(bc.T @ bc)))
    u, s, vt = np.linalg.svd(wa @ ac.T @ bc @ wb)
    k = min(a.shape[1], b.shape[1])
    if n_fit is None:
        return s[:k].sum() / a.shape[1]
    pa = (a[n_fit:] - a[fit].mean(0)) @ wa @ u[:, :k]
    pb = (b[n_fit:] - b[fit].mean(0)) @ wb @ vt[:k].T
    return sum(abs(np.corrcoef(pa[:, i], pb[:, i])[0, 1]) for i in range(k)) / a.shape[1]


def _strong_reference(a, b):
    c = np.abs(np.corrcoef(a.T, b.T)[: a.shape[1], a.shape[1] :])
    rows, cols = linear_sum_assignment(c, maximize=True)
    return c[rows, cols].sum() / a.shape[1]


def test_mcc_match_svd_cca_and_hungarian_references():
    rng = np.random.default_rng(1)
    for _ in range(25):
        n, d, k = int(rng.integers(40, 300)), int(rng.integers(1, 6)), int(rng.integers(1, 7))
        a = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.standard_normal(d)
        b = np.tanh(a @ rng.standard_normal((d, k))) + rng.uniform(0.05, 1) * rng.standard_normal(
            (n, k)
        )
        assert weak_mcc(a, b) == pytest.approx(_weak_reference(a, b), abs=1e-10)
        n_fit = n // 2
        assert weak_mcc(a, b, n_fit=n_fit) == pytest.approx(_weak_reference(a, b, n_fit), abs=1e-10)
        assert strong_mcc(a, b) == pytest.approx(_strong_reference(a, b), abs=1e-12)
        assert strong_mcc(torch.tensor(a), torch.tensor(b)) == pytest.approx(
            _strong_reference(a, b), abs=1e-12
        )


def test_synthetic_tasks_follow_the_generative_definition():
    """Causal latents N(0, 1); spurious latents N(gamma y, sigma_s^2) given the label;
    y = w^T z_C + N(0, noise^2); gamma and w zero where they do not apply."""
    data = make_synthetic_tasks(3, 4000, 4, 5, seed=5, label_noise=0.2, sigma_s=0.1)
    assert data.causal.any(1).all() and not data.causal.all(1).any()
    np.testing.assert_allclose(np.linalg.norm(data.weights, axis=1), 1.0, rtol=1e-12)
    assert (data.weights[~data.causal] == 0).all() and (data.gamma[data.causal] == 0).all()
    g = np.abs(data.gamma[~data.causal])
    assert ((g >= 0.5) & (g <= 1.5)).all()
    pvals = []
    for t in range(3):
        rows = data.task_of_row == t
        z, y, c = data.z[rows], data.labels()[rows], data.causal[t]
        assert np.isnan(np.delete(data.y[rows], t, axis=1)).all()
        pvals += [stats.kstest(z[:, j], "norm").pvalue for j in np.flatnonzero(c)]
        resid = (z[:, ~c] - y[:, None] * data.gamma[t, ~c]) / 0.1
        pvals += [stats.kstest(resid[:, j], "norm").pvalue for j in range(resid.shape[1])]
        pvals.append(stats.kstest((y - z @ data.weights[t]) / 0.2, "norm").pvalue)
        # the spurious noise is independent of the label
        assert abs(np.corrcoef(resid.T, y)[-1, :-1]).max() < 0.06
    assert min(pvals) > 1e-3 / len(pvals)
    x_lin = data.z @ np.linalg.lstsq(data.z, data.x, rcond=None)[0]
    np.testing.assert_allclose(x_lin, data.x, atol=1e-10)  # linear mixing of the latents


def test_synthetic_seeding():
    def fields(d):
        return [d.x, d.y, d.z, d.task_of_row, d.causal, d.weights, d.gamma]

    a, b = make_synthetic_tasks(4, 20, 3, 4, seed=7), make_synthetic_tasks(4, 20, 3, 4, seed=7)
    for u, v in zip(fields(a), fields(b)):
        np.testing.assert_array_equal(u, v)
    assert not np.allclose(a.z, make_synthetic_tasks(4, 20, 3, 4, seed=8).z)
    gen = np.random.default_rng(0)
    assert not np.allclose(
        make_synthetic_tasks(4, 20, 3, 4, seed=gen).z, make_synthetic_tasks(4, 20, 3, 4, seed=gen).z
    )
    lin = [make_synthetic_tasks(4, 20, 3, 4, seed=s, mixing_seed=9) for s in (1, 2)]
    m = np.linalg.lstsq(lin[0].z, lin[0].x, rcond=None)[0]
    np.testing.assert_allclose(lin[1].z @ m, lin[1].x, atol=1e-10)


def test_log_marginal_bad_arguments():
    h, y, p = _params(4)
    m = task_moments(h, y)
    ok = {k: _t(v) for k, v in p.items()}

    def call(**kw):
        a = {**ok, **kw}
        sigma_s = a.pop("sigma_s", SIGMA_S)
        return causal_log_marginal(
            m, a["mixing"], a["offset"], a["noise"], a["causal"], a["gamma"], a["rho"],
            sigma_s=sigma_s,
        )  # fmt: skip

    call()
    cases = [
        ({"noise": _t(-0.1)}, ValueError, "noise"),
        ({"noise": _t(0.0)}, ValueError, "noise"),
        ({"noise": _t(np.nan)}, ValueError, "noise"),
        ({"causal": ok["causal"] + 1}, ValueError, "causal"),  # was accepted
        ({"causal": ok["causal"][:1]}, ValueError, "causal"),  # broadcast over tasks before
        ({"gamma": ok["gamma"][0]}, ValueError, "gamma"),  # broadcast over tasks before
        ({"gamma": ok["gamma"] * np.inf}, ValueError, "gamma"),
        ({"mixing": torch.zeros(D + 1, LAT, dtype=DT)}, ValueError, "mixing"),
        ({"offset": torch.zeros(D + 1, dtype=DT)}, ValueError, "offset"),
        ({"mixing": ok["mixing"].float()}, TypeError, "mixing"),
        ({"sigma_s": 0.0}, ValueError, "sigma_s"),  # was accepted
        ({"sigma_s": -0.1}, ValueError, "sigma_s"),  # was read as 0.1
        # an indefinite Cov[z | y] that a large noise hid from the Cholesky check
        ({"rho": torch.full((T, LAT), 0.9, dtype=DT), "causal": torch.ones(T, LAT, dtype=DT),
          "noise": _t(5.0)}, ValueError, "rho"),
    ]  # fmt: skip
    for kw, err, name in cases:
        with pytest.raises(err, match=name):
            call(**kw)
    np.testing.assert_array_equal(call(noise=0.2).numpy(), call().numpy())  # a float noise


def test_flags_and_dtype_are_checked():
    for bad in ("no", "False", 1):  # bool("False") switched the exact conditioning on
        with pytest.raises(TypeError, match="condition_causal"):
            LinearCausalModel(3, 2, 2, condition_causal=bad)
    h = np.random.default_rng(0).standard_normal((10, 3))
    y = np.arange(10.0)
    with pytest.raises(TypeError, match="condition_causal"):
        fit_causal_model(h, y, 2, steps=1, condition_causal="False")
    with pytest.raises(TypeError, match="dtype"):
        fit_causal_model(h, y, 2, steps=1, dtype=torch.int64)


def test_generator_bad_arguments():
    for kw, name in [
        ({"causal_prob": "0.5"}, "causal_prob"),
        ({"gamma_range": (0.5, 1.0, 2.0)}, "gamma_range"),
        ({"gamma_range": 1.0}, "gamma_range"),
        ({"gamma_range": (1.0, 0.5)}, "gamma_range"),
        ({"gamma_range": (-1.0, 0.5)}, "gamma_range"),
        ({"label_noise": float("nan")}, "label_noise"),
        ({"sigma_s": 0.0}, "sigma_s"),
    ]:
        with pytest.raises((TypeError, ValueError), match=name):
            make_synthetic_tasks(2, 5, 2, 2, seed=0, **kw)
