"""PTSD against closed forms on a Gaussian target, with exact diffusion models.

Every tempered density of ``N(mu, S)`` is Gaussian, ``p^beta ∝ N(mu, S / beta)``, and so is
each noised one, so the Bayes-optimal denoiser of every temperature is known in closed form.
PTSD is run with those exact models in place of trained networks (the hooks ``_new_model`` and
``_fit``), which leaves its own bookkeeping to be checked:

- the extrapolated score at the smallest noise level equals the exact score of the next
  colder temperature (``grad log p^beta = beta grad log p``, linear in ``beta``, so
  ``lambda = 1`` is exact there);
- the importance weights ``beta_k log p - log q`` (``q`` the probability-flow ODE density in
  target coordinates) average to the closed-form normaliser
  ``Z_beta = int N(x; mu, S)^beta dx = (2 pi)^(d (1 - beta) / 2) |S|^((1 - beta) / 2)
  beta^(-d / 2)``, as every importance-sampling estimate must, whatever the proposal;
- the returned samples have the target's mean and covariance.
"""

from __future__ import annotations

import math

import pytest
import torch

from samplers.diffusion import DiffusionModel, Normalizer
from samplers.ptsd import PTSD, _schedule
from samplers.targets import Gaussian

F64 = torch.float64
MU = torch.tensor([1.0, -2.0], dtype=F64)
COV = torch.tensor([[0.25, 0.2], [0.2, 4.0]], dtype=F64)


class _ExactDenoiser(torch.nn.Module):
    """``E[eps | z_t]`` for model-coordinate data ``N(m, T C)``:
    ``sigma (a^2 T C + sigma^2 I)^-1 (z - a m)``; ``T`` is set per temperature."""

    def __init__(self, schedule, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.schedule = schedule
        self.register_buffer("temperature", torch.tensor(1.0, dtype=F64))
        self.m = (MU - shift) / scale
        self.c = COV / scale**2
        self.unused = torch.nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        cov = a[:, None, None] ** 2 * self.temperature * self.c + s[:, None, None] ** 2 * torch.eye(
            2, dtype=F64
        )
        r = z - a[:, None] * self.m
        return s[:, None] * torch.linalg.solve(cov, r[..., None])[..., 0]


class _ExactPTSD(PTSD):
    """PTSD whose diffusion models are the exact denoisers of the tempered Gaussians (the
    models are fitted hottest first, one temperature lower each time)."""

    def _new_model(self, buffer, seed, n_particles):  # noqa: ANN001, ANN202
        norm = Normalizer.fit(buffer)
        sched = _schedule(self.schedule)
        self._n_fits = 0
        return DiffusionModel(_ExactDenoiser(sched, norm.shift, norm.scale), sched, norm)

    def _fit(self, model, buffer, steps, seed, warm=True):  # noqa: ANN001, ANN202
        k = len(self.temperatures) - 1 - self._n_fits
        self._n_fits += 1
        model.net.temperature.fill_(self.temperatures[k])
        return 0.0


def _log_z(beta: float) -> float:
    d = MU.shape[0]
    return (
        0.5 * d * (1 - beta) * math.log(2 * math.pi)
        + 0.5 * (1 - beta) * float(torch.logdet(COV))
        - 0.5 * d * math.log(beta)
    )


@pytest.mark.parametrize("extrapolation", [1.0, 0.5])
def test_ptsd_with_exact_models_matches_the_gaussian_closed_forms(monkeypatch, extrapolation):
    import samplers.ptsd as ptsd_module

    log_ws, scores = [], []
    resample = ptsd_module.systematic_resample
    with_log_prob = DiffusionModel.sample_with_log_prob

    def spy_resample(log_w, n, generator):  # noqa: ANN001, ANN202
        log_ws.append(log_w.clone())
        return resample(log_w, n, generator)

    def spy_sample(self, n, seed=0, n_steps=100, trace="exact", score=None):  # noqa: ANN001, ANN202
        scores.append((self, score))
        return with_log_prob(self, n, seed, n_steps, trace, score)

    monkeypatch.setattr(ptsd_module, "systematic_resample", spy_resample)
    monkeypatch.setattr(DiffusionModel, "sample_with_log_prob", spy_sample)
    n = 8000
    s = _ExactPTSD(
        n_temperatures=4,
        max_temperature=8.0,
        buffer_size=n,
        hot_steps=60,
        refine_steps=0,
        n_ode_steps=30,
        step_size=0.3,
        extrapolation=extrapolation,
        trace="exact",
    )
    res = s.run(Gaussian(MU, COV), n, seed=0)
    temps = s.temperatures
    assert len(log_ws) == len(scores) == 2  # levels k = 1, 0
    for k, log_w, (model, score) in zip((1, 0), log_ws, scores):
        beta = 1.0 / temps[k]
        est = float(torch.logsumexp(log_w, 0)) - math.log(log_w.numel())
        # the estimate's spread is < 0.01 at these importance ESS; Heun's and t_min's bias
        # are ~0.01
        assert est == pytest.approx(_log_z(beta), abs=0.03), (k, est, _log_z(beta))
        if extrapolation == 1.0:
            # at t_min, the exact score of p^beta in model coordinates (z = (x - shift) / scale:
            # scale * beta * grad log p at x), to the t_min noise (relative 1e-2 here)
            z = torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(k))
            x = model.normalizer.to_target(z)
            t = torch.full((50,), model.t_min, dtype=F64)
            want = model.normalizer.scale * beta * Gaussian(MU, COV).log_prob_and_grad(x)[1]
            torch.testing.assert_close(score(z, t), want, rtol=2e-2, atol=2e-2)
    ess = [lv["importance_ess_fraction"] for lv in res.diagnostics["levels"][1:]]
    assert all(0.2 < e <= 1.0 for e in ess), ess
    x = res.samples
    se_mean = (COV.diagonal() / n).sqrt() / min(ess) ** 0.5
    assert bool(((x.mean(0) - MU).abs() < 5 * se_mean).all()), x.mean(0)
    emp = torch.cov(x.T)
    se_cov = ((COV**2 + torch.outer(COV.diagonal(), COV.diagonal())) / n).sqrt() / min(ess) ** 0.5
    assert bool(((emp - COV).abs() < 5 * se_cov).all()), emp
