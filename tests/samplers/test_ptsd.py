"""PTSD: resampling, evaluation accounting, budgets, checkpoints and the sampled distribution.

The end-to-end check runs a small PTSD on a 2-D mixture of two unequal, well-separated
Gaussians (weights 0.25 / 0.75, 12 standard deviations apart, so plain MALA at T = 1 would not
cross) and compares the mode weights and per-mode moments with the truth; the evaluation count
is checked against an independent counter wrapped around the target.
"""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.ptsd import PRESETS, PTSD, systematic_resample
from samplers.targets import DoubleWell4, GaussianMixture, from_log_prob


def test_systematic_resampling_counts_are_floor_or_ceil():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(50, generator=g) ** 3
    n = 1000
    idx = systematic_resample(torch.log(w), n, g)
    counts = torch.bincount(idx, minlength=50).double()
    expect = n * (w / w.sum()).double()
    assert bool(((counts - expect).abs() < 1.0 + 1e-9).all())
    assert int(counts.sum()) == n


def _mixture():
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    return GaussianMixture(means, 0.5, torch.tensor([0.25, 0.75]))


def test_ptsd_recovers_unequal_mode_weights_and_counts_every_evaluation(tmp_path):
    mix = _mixture()
    calls = {"rows": 0}

    def grad_fn(x):
        return mix.log_prob_and_grad(x)[1]

    def fn(x):
        calls["rows"] += x.shape[0]
        return mix.log_prob(x)

    target = from_log_prob(fn, 2, grad_fn=grad_fn)
    s = PTSD(
        n_temperatures=6,
        extrapolation=0.5,
        max_temperature=30.0,
        buffer_size=1000,
        budget=60,
        hidden=64,
        n_layers=2,
        train_steps_first=600,
        train_steps=200,
        batch_size=256,
        n_ode_steps=20,
        step_size=0.3,
        checkpoint_dir=tmp_path,
    )
    res = s.run(target, 2000, seed=0)
    assert res.n_evals == calls["rows"]  # every row of log p, gradients included
    assert 0.8 * 60 <= res.evals_per_sample <= 60
    x = res.samples
    right = x[:, 0] > 0
    frac = float(right.double().mean())
    assert abs(frac - 0.75) < 0.06, frac
    for sel, mu in ((right, 3.0), (~right, -3.0)):
        assert abs(float(x[sel, 0].mean()) - mu) < 0.15
        assert abs(float(x[sel].std(0).mean()) - 0.5) < 0.1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"ptsd_T{k}.pt" for k in (0, 1, 2, 3, 4, 5)]  # T0: the samples
    ck = torch.load(tmp_path / "ptsd_T1.pt", weights_only=False)
    assert abs(ck["temperature"] - s.temperatures[1]) < 1e-12
    assert ck["buffer"].shape == (1000, 2)
    levels = res.diagnostics["levels"]
    assert [lv["level"] for lv in levels] == [4, 3, 2, 1, 0]
    assert all(0 < lv["importance_ess_fraction"] <= 1 for lv in levels[1:])


def test_budget_plan_and_bad_arguments():
    s = PTSD(n_temperatures=5, buffer_size=100, budget=40)
    hot, ref = s.plan_steps(100)
    # hot: 0.4 * 40 per sample over one buffer; refinements: the rest over 3 runs, minus
    # the importance weight and the two starting evaluations per refined sample
    assert hot == int((0.4 * 40 - 1) / 2 - 1)
    assert ref == int(((0.6 * 40 * 100 - 300 * 3) / 300) / 2 - 1)
    with pytest.raises(ValueError, match="too small"):
        PTSD(budget=3).plan_steps(1000)
    with pytest.raises(ValueError, match="n_temperatures"):
        PTSD(n_temperatures=2)
    with pytest.raises(ValueError, match="importance_weights"):
        PTSD(proposal="sde", importance_weights=True)
    with pytest.raises(ValueError, match="n_chains"):
        PTSD(n_chains=10)
    assert isinstance(samplers.PTSD.preset("mog40_gpu"), PTSD)
    assert set(PRESETS) >= {"mog40", "mw32", "mog40_gpu", "mw32_gpu"}


def test_a_sampler_reused_on_another_target_runs_as_a_fresh_one():
    """The particle count taken from a particle target is the run's, not the sampler's: a
    later run on a plain target trains the same networks as a fresh sampler would."""
    from samplers.targets import DoubleWell4

    cfg = dict(
        n_temperatures=3,
        buffer_size=64,
        budget=20,
        hidden=16,
        n_layers=1,
        train_steps_first=20,
        train_steps=10,
        batch_size=32,
        n_ode_steps=4,
    )
    used = PTSD(**cfg)
    used.run(DoubleWell4(), 64, seed=1)
    assert used.n_particles is None
    plain = GaussianMixture(torch.tensor([[-3.0, 1.0], [3.0, 0.0]]), 0.5)
    fresh_sampler = PTSD(**cfg)
    again, fresh = used.run(plain, 64, seed=2), fresh_sampler.run(plain, 64, seed=2)
    torch.testing.assert_close(again.samples, fresh.samples, rtol=0, atol=0)
    assert used.models_.keys() == fresh_sampler.models_.keys()
    for k, model in used.models_.items():
        theirs = dict(fresh_sampler.models_[k].named_parameters())
        for name, p in model.named_parameters():
            torch.testing.assert_close(p, theirs[name], rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:pt. mean acceptance:RuntimeWarning")  # tiny chains
@pytest.mark.parametrize("target", [_mixture(), DoubleWell4()], ids=["plain", "particles"])
def test_a_checkpointed_model_reloads_to_the_same_samples(tmp_path, target):
    s = PTSD(
        n_temperatures=3,
        max_temperature=4.0,
        buffer_size=64,
        hot_steps=3,
        refine_steps=2,
        hidden=16,
        n_layers=2,
        train_steps_first=20,
        train_steps=10,
        batch_size=32,
        n_ode_steps=4,
        checkpoint_dir=tmp_path,
    )
    res = s.run(target, 64, seed=0)
    temp, model, buffer = PTSD.load_checkpoint(tmp_path / "ptsd_T1.pt")
    assert temp == pytest.approx(s.temperatures[1]) and buffer.shape == (64, target.dim)
    # a particle model rebuilt as a plain one loaded without an error and sampled wrongly
    assert model.net.n_particles == getattr(target, "n_particles", None)
    with torch.no_grad():
        want = s.models_[1].sample(50, seed=3, n_steps=5)
        torch.testing.assert_close(model.sample(50, seed=3, n_steps=5), want, rtol=0, atol=0)
    temp0, none, samples = PTSD.load_checkpoint(tmp_path / "ptsd_T0.pt")
    assert temp0 == 1.0 and none is None
    torch.testing.assert_close(samples, res.samples, rtol=0, atol=0)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a PTSD checkpoint"):
        PTSD.load_checkpoint(tmp_path / "other.pt")


@pytest.mark.filterwarnings("ignore:pt. mean acceptance:RuntimeWarning")  # tiny chains
def test_every_seed_that_run_accepts_runs_and_reproduces():
    """Sub-seeds were ``seed * 1_000_003 + i``: a run seed from about 9.2e12 on (e.g. one from
    ``time.time_ns()``), accepted by ``run``, failed with 'seed must be in [0, 2**63), got
    10000030000000000000' for ``seed=10**13``; they are now reduced into ``[0, 2**63)``."""
    cfg = dict(
        n_temperatures=3,
        buffer_size=16,
        hot_steps=1,
        refine_steps=0,
        hidden=8,
        n_layers=1,
        train_steps_first=2,
        train_steps=2,
        batch_size=8,
        n_ode_steps=2,
    )
    target = _mixture()
    for seed in (10**13, 2**63 - 1):
        res = PTSD(**cfg).run(target, 16, seed=seed)
        assert res.samples.shape == (16, 2) and bool(torch.isfinite(res.samples).all())
    a, b = PTSD(**cfg).run(target, 16, seed=10**13), PTSD(**cfg).run(target, 16, seed=10**13)
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
