"""The sampler contract: every kernel and sampler passes the same base class of checks.

Invariance is checked the strict way: chains start from exact samples of a Gaussian, so after
any number of transitions of a correct kernel they are still exact samples; their moments are
compared with the truth at a z-score bound. Budgets are checked against an independent counter
wrapped around the target.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import samplers
from samplers.targets import Gaussian, GaussianMixture, LennardJones, MoG40, from_log_prob

N = 3000  # chains of the invariance checks


def _z_ok(estimate: torch.Tensor, truth: torch.Tensor, se: torch.Tensor, z: float = 5.0) -> bool:
    return bool(((estimate - truth).abs() <= z * se).all())


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    """Sample mean and covariance within 5 standard errors of the truth (Gaussian case)."""
    n = x.shape[0]
    x = x.double()
    mean, cov = mean.double(), cov.double()
    var = torch.diagonal(cov)
    assert _z_ok(x.mean(0), mean, (var / n).sqrt()), (x.mean(0), mean)
    emp = torch.cov(x.T)
    se = ((cov**2 + torch.outer(var, var)) / n).sqrt()  # Var of a sample covariance entry
    assert _z_ok(emp, cov, se), (emp, cov)


class SamplerContract:
    """Checks every sampler must pass. Subclasses implement :meth:`make`."""

    exact_start_transitions = 20
    adapt_chains, adapt_burn_in = 500, 400

    def make(self, **kwargs) -> samplers.Sampler:
        raise NotImplementedError

    def test_standard_gaussian_stays_invariant(self):
        target = Gaussian(torch.zeros(3))
        x0 = target.sample(N, seed=11)
        res = self.make(n_chains=N, init=x0, burn_in=self.exact_start_transitions - 1, thin=1).run(
            target, N, seed=1
        )
        assert res.samples.shape == (N, 3)
        assert_moments(res.samples, target.mean, target.covariance)
        assert not torch.equal(res.samples, x0)  # the chains moved

    def test_correlated_gaussian_stays_invariant(self):
        cov = torch.tensor([[1.0, 0.8, 0.2], [0.8, 1.0, 0.0], [0.2, 0.0, 0.5]])
        target = Gaussian(torch.tensor([2.0, -1.0, 0.5]), cov)
        x0 = target.sample(N, seed=12)
        res = self.make(n_chains=N, init=x0, burn_in=self.exact_start_transitions - 1, thin=1).run(
            target, N, seed=2
        )
        assert_moments(res.samples, target.mean, target.covariance)

    def test_budget_is_counted_exactly(self):
        counter = {"lp": 0, "grad": 0}

        def fn(x):
            if x.requires_grad:
                counter["grad"] += x.shape[0]
            else:
                counter["lp"] += x.shape[0]
            return -0.5 * (x**2).sum(-1)

        target = from_log_prob(fn, dim=2)
        sampler = self.make(n_chains=7, budget=300.0)
        res = sampler.run(target, 21, seed=0)
        assert res.n_grad_evals == counter["grad"]
        assert res.n_log_prob_evals == counter["lp"]
        assert res.n_evals <= 300 * 21
        assert res.n_evals > 300 * 21 * 0.8
        assert res.samples.shape == (21, 2) and res.chains.shape == (7, 3, 2)

    def test_same_seed_same_samples(self):
        target = Gaussian(torch.zeros(2))
        a = self.make(n_chains=20, burn_in=10, thin=2).run(target, 60, seed=3)
        b = self.make(n_chains=20, burn_in=10, thin=2).run(target, 60, seed=3)
        c = self.make(n_chains=20, burn_in=10, thin=2).run(target, 60, seed=4)
        assert torch.equal(a.samples, b.samples)
        assert not torch.equal(a.samples, c.samples)

    def test_non_finite_proposals_are_rejected(self):
        # half-normal on x0 > 0: -inf (or NaN) outside the support
        for outside in (-math.inf, math.nan):

            def fn(x, outside=outside):
                inside = x[:, 0] > 0
                val = -0.5 * (x**2).sum(-1)
                return torch.where(inside, val, torch.full_like(val, outside))

            target = from_log_prob(fn, dim=2)
            res = self.make(n_chains=200, burn_in=30, init=torch.tensor([1.0, 0.0])).run(
                target, 200, seed=0
            )
            assert bool(torch.isfinite(res.samples).all())
            assert bool((res.samples[:, 0] > 0).all())

    def test_bad_targets_get_clear_errors(self):
        sampler = self.make(n_chains=4, burn_in=2)
        with pytest.raises(TypeError, match="Target"):
            sampler.run(lambda x: -x.sum(-1), 4)
        wrong_shape = from_log_prob(lambda x: -(x**2), dim=2)
        with pytest.raises(ValueError, match="shape"):
            sampler.run(wrong_shape, 4)
        non_finite = from_log_prob(lambda x: torch.log(x[:, 0]), dim=2)  # -inf at the origin
        with pytest.raises(ValueError, match="non-finite"):
            sampler.run(non_finite, 4)
        with pytest.raises(ValueError, match="shape"):
            self.make(n_chains=4, burn_in=2, init=torch.zeros(4, 3)).run(
                Gaussian(torch.zeros(2)), 4
            )
        with pytest.raises(ValueError, match="budget"):
            self.make(n_chains=4, budget=0.5).run(Gaussian(torch.zeros(2)), 4)

    def test_step_size_adapts_towards_target_acceptance(self):
        target = Gaussian(torch.zeros(4), torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0])))
        n, burn = self.adapt_chains, self.adapt_burn_in
        sampler = self.make(n_chains=n, burn_in=burn, thin=1, init=target.sample(n, seed=0))
        res = sampler.run(target, n, seed=5)
        acc = res.diagnostics["acceptance_rate"]
        assert abs(acc - self.target_accept(sampler)) < 0.12, acc

    def target_accept(self, sampler) -> float:
        return sampler.target_accept


class TestRandomWalkMetropolis(SamplerContract):
    exact_start_transitions = 40

    def make(self, **kw):
        return samplers.RandomWalkMetropolis(step_size=0.8, progress=False, **kw)


class TestMALA(SamplerContract):
    def make(self, **kw):
        return samplers.MALA(step_size=0.3, progress=False, **kw)


class TestHMC(SamplerContract):
    exact_start_transitions = 8

    def make(self, **kw):
        return samplers.HMC(step_size=0.2, n_leapfrog=5, progress=False, **kw)


class TestParallelTemperingMALA(SamplerContract):
    def make(self, **kw):
        return samplers.ParallelTempering(
            "mala", n_temperatures=3, max_temperature=20.0, step_size=0.3, progress=False, **kw
        )


class TestParallelTemperingHMC(SamplerContract):
    exact_start_transitions = 8
    adapt_chains, adapt_burn_in = 150, 400

    def make(self, **kw):
        return samplers.ParallelTempering(
            "hmc",
            n_temperatures=4,
            max_temperature=50.0,
            n_leapfrog=3,
            step_size=0.2,
            progress=False,
            **kw,
        )


class TestDiGS(SamplerContract):
    exact_start_transitions = 10

    def make(self, **kw):
        return samplers.DiGS(alphas=(0.2, 0.6), n_mala=2, step_size=0.3, progress=False, **kw)

    def target_accept(self, sampler) -> float:
        return sampler.target_accept


# ---------------------------------------------------------------------- specific behaviour
@pytest.mark.parametrize("kernel", ["mala", "hmc", "rwm"])
def test_parallel_tempering_with_one_temperature_is_its_inner_kernel(kernel):
    target = MoG40()
    kw = dict(n_chains=16, budget=200.0, progress=False)
    inner = {"mala": samplers.MALA, "hmc": samplers.HMC, "rwm": samplers.RandomWalkMetropolis}[
        kernel
    ]
    extra = {"n_leapfrog": 4} if kernel == "hmc" else {}
    a = samplers.ParallelTempering(kernel, n_temperatures=1, **extra, **kw).run(target, 64, seed=9)
    b = inner(**extra, **kw).run(target, 64, seed=9)
    assert torch.equal(a.samples, b.samples)
    assert a.n_grad_evals == b.n_grad_evals and a.n_log_prob_evals == b.n_log_prob_evals
    assert a.diagnostics["acceptance_rate"] == pytest.approx(b.diagnostics["acceptance_rate"])


def test_swap_step_swaps_only_pairs_of_one_parity():
    k, n = 4, 3
    x = torch.arange(k, dtype=torch.float64)[:, None, None].expand(k, n, 1).clone()
    lp = torch.zeros(k, n, dtype=torch.float64)  # equal densities: every proposed swap accepted
    betas = torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64)
    log_u = torch.log(torch.full((k - 1, n), 0.5, dtype=torch.float64))
    from samplers.tempering import swap_step

    x0, _, _, prob = swap_step(x, lp, None, betas, 0, log_u)
    assert x0[:, 0, 0].tolist() == [1.0, 0.0, 3.0, 2.0]
    assert prob[:, 0].tolist() == [1.0, 0.0, 1.0]
    x1, _, _, _ = swap_step(x, lp, None, betas, 1, log_u)
    assert x1[:, 0, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    # a hot replica with much higher density is always moved down; the reverse only rarely
    lp2 = torch.tensor([[-10.0], [0.0]], dtype=torch.float64)
    x2 = torch.tensor([[[0.0]], [[1.0]]], dtype=torch.float64)
    out, lp_out, _, p = swap_step(x2, lp2, None, betas[:2], 0, torch.log(torch.full((1, 1), 0.99)))
    assert out[0, 0, 0] == 1.0 and lp_out[0, 0] == 0.0 and float(p) == 1.0


def test_parallel_tempering_mixes_between_separated_modes_where_mala_does_not():
    target = GaussianMixture(torch.tensor([[-8.0], [8.0]]), 1.0)
    kw = dict(n_chains=200, burn_in=300, thin=1, init=torch.tensor([-8.0]), progress=False)
    pt = samplers.ParallelTempering("mala", n_temperatures=6, max_temperature=100.0, **kw).run(
        target, 200, seed=0
    )
    mala = samplers.MALA(**kw).run(target, 200, seed=0)
    assert float((mala.samples > 0).double().mean()) == 0.0
    assert abs(float((pt.samples > 0).double().mean()) - 0.5) < 0.12
    rates = pt.diagnostics["swap_rate_per_pair"]
    assert len(rates) == 5 and all(0.0 < r <= 1.0 for r in rates)


def test_parallel_tempering_reports_no_swap_rate_for_pairs_never_proposed():
    """One sweep (burn_in=0) proposes only the even pairs: pair (1, 2) of three temperatures
    was reported with swap rate 0.0 and the mean swap rate halved (0.474 for 0.948); it is
    now NaN (None in JSON) and the mean is over the pairs proposed, here the swap
    probabilities of pair (0, 1) averaged over the chains, recomputed from the sweep."""
    from samplers import tempering

    probs = []
    swap = tempering.swap_step

    def spy(*args):
        out = swap(*args)
        probs.append(out[3])
        return out

    target = Gaussian(torch.zeros(2, dtype=torch.float64))
    kw = dict(n_temperatures=3, max_temperature=4.0, n_chains=200, thin=1, progress=False)
    tempering.swap_step = spy
    try:
        one = samplers.ParallelTempering("mala", burn_in=0, **kw).run(target, 200, seed=0)
    finally:
        tempering.swap_step = swap
    d = one.diagnostics
    assert d["n_transitions"] == 1 and len(probs) == 1
    rates = d["swap_rate_per_pair"]
    assert math.isnan(rates[1])
    assert rates[0] == pytest.approx(float(probs[0][0].mean()), rel=1e-12)
    assert d["swap_rate"] == pytest.approx(rates[0], rel=1e-12)
    assert one.summary()["diagnostics"]["swap_rate_per_pair"][1] is None
    two = samplers.ParallelTempering("mala", burn_in=1, **kw).run(target, 200, seed=0)
    assert all(0.0 < r <= 1.0 for r in two.diagnostics["swap_rate_per_pair"])


def test_digs_on_a_gaussian_from_the_origin_matches_exact_moments():
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    target = Gaussian(torch.tensor([3.0, -2.0]), cov)
    res = samplers.DiGS(
        alphas=(0.3, 0.8), n_mala=3, n_chains=2000, budget=200.0, progress=False
    ).run(target, 2000, seed=0)
    assert_moments(res.samples, target.mean, target.covariance)


def test_digs_jumps_between_modes_and_reaches_mode_weights():
    target = GaussianMixture(
        torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, 12.0]]), 1.0, torch.tensor([0.2, 0.5, 0.3])
    )
    kw = dict(n_chains=1500, budget=1000.0, init=torch.tensor([-10.0, 0.0]), progress=False)
    digs = samplers.DiGS(alphas=(0.1,), n_mala=1, **kw).run(target, 1500, seed=1)
    from samplers.metrics import mode_weights

    w = mode_weights(digs.samples, target)
    # independent chains: standard error of a weight <= 0.013
    assert torch.allclose(w, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), atol=0.05)
    assert digs.diagnostics["init_acceptance_per_level"][0] > 0.01
    kw["budget"] = 200.0
    mala = samplers.MALA(**kw).run(target, 1500, seed=1)
    assert float(mode_weights(mala.samples, target)[0]) == 1.0


def test_plan_spends_the_budget_with_burn_in_and_thinning():
    target = Gaussian(torch.zeros(2))
    plan = samplers.HMC(n_leapfrog=10, n_chains=10, budget=1000.0).plan(target, 10_000)
    assert plan.samples_per_chain == 1000
    per_chain = 1 + plan.n_transitions * 10
    assert per_chain <= 1000 * 1000 and per_chain > 0.99 * 1000 * 1000
    # burn-in: the first 10% of the transitions plus what does not divide into equal spacings
    assert 0.1 * plan.n_transitions - 1 <= plan.burn_in <= 0.1 * plan.n_transitions + 1000
    assert plan.burn_in + plan.thin * 1000 == plan.n_transitions
    one = samplers.DiGS(n_mala=1, budget=100.0).plan(target, 50)
    assert one.samples_per_chain == 1 and one.n_chains == 50
    assert one.n_transitions == (100 - 1) // 2 and one.burn_in == one.n_transitions - 1
    with pytest.raises(ValueError, match="either"):
        samplers.MALA(budget=10.0, burn_in=3)


@pytest.mark.parametrize(("chains", "n"), [(10, 25), (7, 100), (50, 60)])
def test_the_budget_holds_when_the_chains_do_not_divide_the_samples(chains, n):
    # each chain was given budget * ceil(n / chains): 30 / 25, 105 / 100, 100 / 60 of the budget
    res = samplers.MALA(n_chains=chains, budget=30.0, progress=False).run(
        Gaussian(torch.zeros(2)), n, seed=0
    )
    assert res.samples.shape[0] == n
    assert 0.9 * 30.0 <= res.evals_per_sample <= 30.0


def test_results_report_diagnostics_and_serialise():
    import json

    res = samplers.MALA(n_chains=8, burn_in=50, thin=2, progress=False).run(
        Gaussian(torch.zeros(2)), 80, seed=0
    )
    s = res.summary()
    json.dumps(s)
    assert s["n_chains"] == 8 and s["n_samples"] == 80
    assert res.diagnostics["ess_bulk"].shape == (2,)
    assert res.diagnostics["rhat_split_max"] < 1.2
    assert res.wall_time > 0


def test_compile_failure_falls_back_to_eager(monkeypatch):
    import samplers.compile as comp

    def broken(fn, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(comp.torch, "compile", broken)
    monkeypatch.setattr(comp, "compile_available", lambda: True)
    import samplers.base as base

    monkeypatch.setattr(base, "compile_available", lambda: True)
    target = MoG40()
    eager = samplers.MALA(n_chains=5, burn_in=30, compile=False, progress=False).run(
        target, 5, seed=0
    )
    with pytest.warns(RuntimeWarning, match="eager"):
        fallback = samplers.MALA(n_chains=5, burn_in=30, compile=True, progress=False).run(
            target, 5, seed=0
        )
    assert fallback.diagnostics["compiled"] is True
    assert torch.equal(eager.samples, fallback.samples)


def test_auto_compile_rule_needs_analytic_gradients_and_long_runs(monkeypatch):
    import samplers.base as base

    monkeypatch.setattr(base, "compile_available", lambda: True)
    mog = MoG40()
    assert samplers.MALA(n_chains=10, budget=1000.0).plan(mog, 10_000).compiled
    assert not samplers.MALA(n_chains=10, burn_in=100).plan(mog, 10).compiled
    wrapped = from_log_prob(lambda x: mog.log_prob(x), dim=2)
    assert not samplers.MALA(n_chains=10, budget=1000.0).plan(wrapped, 10_000).compiled
    assert not samplers.MALA(n_chains=10, budget=1000.0, compile=False).plan(mog, 10_000).compiled
    # many chains on the CPU: a cheap closed form (MoG-40) compiles only past its own, higher
    # row threshold; an expensive one (LJ-13) from the sampler's default; off the CPU (the
    # meta device stands in for a GPU) the default applies to both
    many = {"n_chains": 10_000, "budget": 1000.0}  # 10M rows, 1,000 sequential evaluations
    assert not samplers.MALA(**many).plan(mog, 10_000).compiled
    assert samplers.MALA(**many).plan(LennardJones(13), 10_000).compiled
    assert samplers.MALA(n_chains=10_000, budget=20_000.0).plan(mog, 10_000).compiled
    assert samplers.MALA(**many).plan(MoG40().to("meta"), 10_000).compiled


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mala", "hmc", "digs", "pt"])
def test_compiled_path_matches_eager_path(name):
    # fixed step sizes: with adaptation, the paths' different float rounding flips an occasional
    # Metropolis decision during warm-up, the dual-averaging step sizes part (HMC 1.55 against
    # 1.83 after 20 transitions) and every chain after that differs -- the test then failed for
    # HMC and PT (0% of samples close) although each transition agrees
    target = MoG40()
    fixed = {"adapt": False, "progress": False}
    make = {
        "mala": lambda c: samplers.MALA(
            n_chains=50, burn_in=100, thin=20, step_size=0.5, compile=c, **fixed
        ),
        "hmc": lambda c: samplers.HMC(
            n_chains=50, burn_in=20, thin=3, step_size=0.3, compile=c, **fixed
        ),
        "digs": lambda c: samplers.DiGS(
            alphas=(0.05, 0.3),
            n_mala=1,
            n_chains=50,
            burn_in=50,
            thin=10,
            step_size=0.5,
            compile=c,
            **fixed,
        ),
        "pt": lambda c: samplers.ParallelTempering(
            n_chains=50, burn_in=10, thin=2, step_size=0.3, compile=c, **fixed
        ),
    }[name]
    a = make(False).run(target, 200, seed=0)
    b = make(True).run(target, 200, seed=0)
    assert b.diagnostics["compiled"] and not a.diagnostics["compiled"]
    assert a.diagnostics["acceptance_rate"] > 0.5  # the chains move
    # float rounding differs between the two paths; Metropolis decisions almost never flip
    close = ((a.samples - b.samples).abs() < 1e-3).all(-1).double().mean()
    assert float(close) > 0.95


def test_digs_noise_schedule_and_validation():
    d = samplers.DiGS(alphas=(0.1, 0.5, 0.9), sweeps_per_level=3)
    assert [d._level(t) for t in range(1, 11)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    res = d.__class__(
        alphas=(0.3, 0.8), n_mala=1, n_chains=50, burn_in=40, thin=2, progress=False
    ).run(Gaussian(torch.zeros(2)), 100, seed=0)
    assert len(res.diagnostics["step_size_per_level"]) == 2
    assert all(0 < a <= 1 for a in res.diagnostics["init_acceptance_per_level"])
    for bad in (
        {"alphas": (0.0,)},
        {"alphas": (1.0,)},
        {"n_mala": -1},
        {"n_mala": 0, "mwg_init": False},
    ):
        with pytest.raises(ValueError):
            samplers.DiGS(**bad)
    with pytest.raises(ValueError, match="one value per noise level"):
        samplers.DiGS(alphas=(0.1, 0.5), step_size=(0.1,))


def test_digs_levels_not_run_after_warm_up_have_no_acceptance_rate():
    """Two levels of 20 sweeps, 40 burn-in sweeps, all of them warm-up (two cycles through
    the levels, ``DiGS._min_warmup``), and 10 kept: only level 0 runs after warm-up. Level 1
    was reported with acceptance 0.0 and the overall rate was the mean over both levels
    (0.280 for a MALA acceptance of 0.560); it is now NaN (None in JSON) and the rate is the
    mean over the sweeps that ran, recomputed here from every sweep's acceptance."""
    s = samplers.DiGS(
        alphas=(0.3, 0.9),
        sweeps_per_level=20,
        n_chains=50,
        burn_in=40,
        thin=1,
        compile=False,
        progress=False,
    )
    seen = []
    sweep = s._sweep

    def spy(*args):
        out = sweep(*args)
        seen.append(float(out[4].mean()))
        return out

    s._sweep = spy
    target = Gaussian(torch.zeros(2, dtype=torch.float64))
    assert s.plan(target, 500).warmup == 40
    res = s.run(target, 500, seed=0)
    d = res.diagnostics
    post = seen[40:]  # the sweeps after warm-up, all at level 0
    assert len(post) == 10 and d["n_transitions"] == 50
    assert math.isnan(d["mala_acceptance_per_level"][1])
    assert math.isnan(d["init_acceptance_per_level"][1])
    assert d["acceptance_rate"] == pytest.approx(sum(post) / len(post), rel=1e-12)
    assert d["mala_acceptance_per_level"][0] == pytest.approx(d["acceptance_rate"], rel=1e-12)
    assert res.summary()["diagnostics"]["mala_acceptance_per_level"][1] is None


def test_map_estimate_finds_the_mode():
    from samplers.optimize import map_estimate

    target = Gaussian(torch.tensor([1.0, -2.0, 0.5]), torch.diag(torch.tensor([1.0, 0.5, 2.0])))
    x, lp = map_estimate(target, n_starts=3, steps=800, lr=0.05, seed=0)
    assert torch.allclose(x, target.mean, atol=1e-3)
    assert lp == pytest.approx(float(target.log_prob(target.mean[None])), abs=1e-5)


def test_run_and_constructor_arguments_are_checked_up_front():
    import numpy as np

    target = Gaussian(torch.zeros(2))
    mala = samplers.MALA(n_chains=4, burn_in=10, progress=False)
    for seed in (1.5, "3", None):  # 1.5 ran as 1, "3" ran, None failed after the whole run
        with pytest.raises(TypeError, match="seed must be an int"):
            mala.run(target, 8, seed=seed)
    # NumPy and one-element tensor step sizes are numbers (np.float32 was refused as "not a
    # positive number")
    for step in (np.float32(0.1), torch.tensor(0.1), np.float64(0.1)):
        assert samplers.MALA(step_size=step).step_size == pytest.approx(0.1)
    with pytest.raises(ValueError, match="step_size must be a positive"):
        samplers.MALA(step_size=np.float32(-0.1))
    with pytest.raises(ValueError, match="target_accept"):  # was accepted until run()
        samplers.ParallelTempering(target_accept=2.0)
    # an init that requires grad does not drag a graph through the chains
    init = torch.zeros(4, 2, requires_grad=True)
    res = samplers.MALA(n_chains=4, burn_in=10, init=init, progress=False).run(target, 8)
    assert not res.samples.requires_grad


def test_bounded_targets_and_stuck_chains_are_reported_not_hidden():
    def box(x):  # a bounded support: -inf outside the unit square
        inside = ((x >= 0) & (x <= 1)).all(-1)
        lp = -0.5 * ((x - 0.5) ** 2).sum(-1)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    target = from_log_prob(box, 2)
    # DiKL: rows whose importance proposals all fall outside the support gave NaN weights
    # (a torch multinomial error); they now get the noise kernel's score
    res = samplers.DiKL(
        n_iters=20,
        batch_size=16,
        n_is=4,
        n_mcmc=1,
        n_posterior=1,
        gen_hidden=16,
        gen_layers=1,
        score_hidden=16,
        score_layers=1,
        data_scale=0.5,
    ).run(target, 50, seed=0)
    assert bool(torch.isfinite(res.samples).all())
    # chains stuck at different points: split R-hat inf (was NaN, hidden by nanmax)
    # and the run warns that the chains never moved (it returned the starting states silently)
    init = torch.arange(8.0).reshape(4, 2)
    with pytest.warns(RuntimeWarning, match="never moved") as record:
        stuck = samplers.MALA(
            n_chains=4, burn_in=10, step_size=1e6, adapt=False, init=init, progress=False
        ).run(Gaussian(torch.zeros(2)), 40)
    assert stuck.diagnostics["rhat_split_max"] == math.inf == stuck.diagnostics["rhat_max"]
    # constant chains: the tail ESS is undefined in every dimension, said as NaN (NumPy's
    # "All-NaN slice" warning came with it)
    assert math.isnan(stuck.diagnostics["ess_tail_min"])
    assert not [w for w in record if "All-NaN" in str(w.message)]
    assert stuck.diagnostics["acceptance_rate"] < 1e-4


def test_tempering_and_digs_warn_when_no_move_can_change_a_chain():
    # swaps only permute states between temperatures and DiGS's noising is never a move of x:
    # with local moves (PT) or initialisation and MALA (DiGS) never accepted, the "samples" are
    # the starting states -- this used to come back without a word
    target, init = Gaussian(torch.zeros(2)), torch.arange(8.0).reshape(4, 2)
    runs = {
        "pt": lambda **kw: samplers.ParallelTempering(
            kernel="mala", n_temperatures=3, n_chains=4, burn_in=10, init=init, progress=False, **kw
        ),
        "digs": lambda **kw: samplers.DiGS(
            n_chains=4, burn_in=10, n_mala=2, init=init, progress=False, **kw
        ),
    }
    stuck = {
        "pt": {"step_size": 1e6, "adapt": False},
        "digs": {"alphas": 1e-9, "step_size": 1e6, "adapt": False},
    }
    for name, make in runs.items():
        with pytest.warns(RuntimeWarning, match="never moved"):
            res = make(**stuck[name]).run(target, 40, seed=0)
        assert set(map(tuple, res.samples.tolist())) == set(map(tuple, init.tolist()))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            make().run(target, 40, seed=0)
