"""Real-valued arguments across the distribution refuse NaN, infinities and too-small values.

Every entry point below validates through :func:`probrec.checks.check_real`. The checks they
replaced (``x <= 0``, ``x < 0``, ``not x > 0``) let ``inf`` and, for the first two, NaN through
to the numerics, where they surfaced as NaN parameters, samples or likelihoods.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def _probrec():
    from probrec.data import synthetic_annotations
    from probrec.data.fsmol import clean_chembl_assay_table
    from probrec.gp.exact import GPConfig
    from probrec.gp.head import GPHead
    from probrec.gp.pool_bo import pool_bo
    from probrec.recsys.coldstart import HeadFineTune
    from probrec.recsys.transfer import kd_loss

    z = torch.zeros(3)
    pool = torch.arange(20.0).reshape(10, 2)
    return {
        "GPConfig.prior_scale": ("prior_scale", lambda v: GPConfig(prior_scale=v), 0.0),
        "GPConfig.noise_mode": ("noise_mode", lambda v: GPConfig(noise_mode=v), 0.0),
        "GPConfig.min_noise": ("min_noise", lambda v: GPConfig(min_noise=v), -1.0),
        "GPHead.tol": ("tol", lambda v: GPHead(GPConfig(), tol=v), 0.0),
        "pool_bo.beta": (
            "beta",
            lambda v: pool_bo(pool, pool[:, 0], None, n_init=2, n_iter=1, beta=v),
            -1.0,
        ),
        "clean_chembl_assay_table.max_mol_weight": (
            "max_mol_weight",
            lambda v: clean_chembl_assay_table("missing.csv", max_mol_weight=v),
            0.0,
        ),
        "clean_chembl_assay_table.buffer_fraction": (
            "buffer_fraction",
            lambda v: clean_chembl_assay_table("missing.csv", buffer_fraction=v),
            -1.0,
        ),
        "HeadFineTune.l2": (
            "l2",
            lambda v: HeadFineTune("ft", (0, 2), torch.zeros(2), 0.0, l2=v),
            -1.0,
        ),
        "kd_loss.temperature": ("temperature", lambda v: kd_loss(z, z, v), 0.0),
        "synthetic_annotations.cut_power": (
            "cut_power",
            lambda v: synthetic_annotations(5, cut_power=v),
            0.0,
        ),
    }


def _samplers():
    import samplers
    from samplers.adaptation import DualAveraging
    from samplers.diffusion import TemperedTarget, VESchedule, VPSchedule
    from samplers.dikl import sample_times
    from samplers.metrics import mmd
    from samplers.optimize import map_estimate
    from samplers.score_nets import GeneratorMLP
    from samplers.targets import BNNPosterior, DoubleWell4, Gaussian, LennardJones

    z = torch.zeros(3, 2)
    small = {"n_inputs": 2, "n_hidden": 2, "n_train": 4, "n_test": 4}
    return {
        "Sampler.budget": ("budget", lambda v: samplers.MALA(budget=v), 0.0),
        "Sampler.burn_in_fraction": (
            "burn_in_fraction",
            lambda v: samplers.MALA(budget=10, burn_in_fraction=v),
            -0.5,
        ),
        "DiKL.lr_decay": ("lr_decay", lambda v: samplers.DiKL(lr_decay=v), 0.0),
        "NeuralSampler.budget": ("budget", lambda v: samplers.DiKL(budget=v), 0.0),
        "VPSchedule.beta_min": ("beta_min", lambda v: VPSchedule(beta_min=v), 0.0),
        "VPSchedule.beta_max": ("beta_max", lambda v: VPSchedule(beta_max=v), 0.0),
        "VESchedule.sigma_min": ("sigma_min", lambda v: VESchedule(sigma_min=v), 0.0),
        "VESchedule.sigma_max": ("sigma_max", lambda v: VESchedule(sigma_max=v), 0.0),
        "TemperedTarget.beta": (
            "beta",
            lambda v: TemperedTarget(Gaussian(torch.zeros(2)), v),
            0.0,
        ),
        "sample_times.exponent": (
            "exponent",
            lambda v: sample_times(4, v, torch.Generator().manual_seed(0)),
            0.0,
        ),
        "DiKL.data_scale": ("data_scale", lambda v: samplers.DiKL(data_scale=v), 0.0),
        "DiKL.gen_init_std": ("gen_init_std", lambda v: samplers.DiKL(gen_init_std=v), 0.0),
        "DiKL.grad_clip": ("grad_clip", lambda v: samplers.DiKL(grad_clip=v), 0.0),
        "DiKL.t_exponent": ("t_exponent", lambda v: samplers.DiKL(t_exponent=v), 0.0),
        "DiKL.sigma_min": ("sigma_min", lambda v: samplers.DiKL(sigma_min=v), 0.0),
        "DiKL.sigma_max": ("sigma_max", lambda v: samplers.DiKL(sigma_max=v), 0.0),
        "mmd.bandwidths": ("bandwidths", lambda v: mmd(z, z, bandwidths=(1.0, v)), 0.0),
        "map_estimate.lr": ("lr", lambda v: map_estimate(Gaussian(torch.zeros(2)), lr=v), 0.0),
        "PTSD.max_temperature": (
            "max_temperature",
            lambda v: samplers.PTSD(max_temperature=v),
            1.0,
        ),
        "PTSD.step_size": ("step_size", lambda v: samplers.PTSD(step_size=v), 0.0),
        "PTSD.lr": ("lr", lambda v: samplers.PTSD(lr=v), 0.0),
        "PTSD.ema": ("ema", lambda v: samplers.PTSD(ema=v), -0.1),
        "DiKL.data_shift": ("data_shift", lambda v: samplers.DiKL(data_shift=v), -math.inf),
        "DiKL.lr": ("lr", lambda v: samplers.DiKL(lr=v), 0.0),
        "DiKL.score_lr": ("score_lr", lambda v: samplers.DiKL(score_lr=v), 0.0),
        "DiKL.step_scale": ("step_scale", lambda v: samplers.DiKL(step_scale=v), 0.0),
        "DiKL.target_precision": (
            "target_precision",
            lambda v: samplers.DiKL(target_precision=v),
            -1.0,
        ),
        "DualAveraging.gamma": ("gamma", lambda v: DualAveraging(0.1, 0.8, gamma=v), 0.0),
        "DualAveraging.t0": ("t0", lambda v: DualAveraging(0.1, 0.8, t0=v), -1.0),
        "DualAveraging.kappa": ("kappa", lambda v: DualAveraging(0.1, 0.8, kappa=v), 0.0),
        "LennardJones.oscillator_scale": (
            "oscillator_scale",
            lambda v: LennardJones(oscillator_scale=v),
            -1.0,
        ),
        "PTSD.extrapolation": ("extrapolation", lambda v: samplers.PTSD(extrapolation=v), -1.0),
        "ParallelTempering.max_temperature": (
            "max_temperature",
            lambda v: samplers.ParallelTempering("mala", max_temperature=v),
            0.5,
        ),
        "GeneratorMLP.output_std": ("output_std", lambda v: GeneratorMLP(2, output_std=v), 0.0),
        "BNNPosterior.noise": ("noise", lambda v: BNNPosterior(noise=v, **small), 0.0),
        "BNNPosterior.prior_scale": (
            "prior_scale",
            lambda v: BNNPosterior(prior_scale=v, **small),
            0.0,
        ),
        "ParticleSystem.com_scale": ("com_scale", lambda v: DoubleWell4(com_scale=v), 0.0),
    }


def _metalearn():
    from metalearn.dkl import DKL
    from metalearn.hypergrad import conjugate_gradient, implicit_argmin
    from metalearn.identifiability import LinearCausalModel, make_synthetic_tasks
    from metalearn.identifiability.causal import fit_causal_model
    from metalearn.training import TrainConfig

    def argmin(**kw):
        return implicit_argmin(lambda th: (th * th).sum(), torch.zeros(2), [], **kw)

    def tasks(**kw):
        return make_synthetic_tasks(2, 10, 2, 3, seed=0, **kw)

    return {
        "make_synthetic_tasks.label_noise": (
            "label_noise",
            lambda v: tasks(label_noise=v),
            -1.0,
        ),
        "make_synthetic_tasks.sigma_s": ("sigma_s", lambda v: tasks(sigma_s=v), 0.0),
        "make_synthetic_tasks.gamma_range_low": (
            "gamma_range",
            lambda v: tasks(gamma_range=(v, 1.5)),
            -1.0,
        ),
        "make_synthetic_tasks.gamma_range_high": (
            "gamma_range",
            lambda v: tasks(gamma_range=(0.5, v)),
            -1.0,
        ),
        "LinearCausalModel.min_noise": (
            "min_noise",
            lambda v: LinearCausalModel(3, 2, 2, min_noise=v),
            -1.0,
        ),
        "fit_causal_model.lr": (
            "lr",
            lambda v: fit_causal_model(torch.zeros(4, 3), torch.zeros(4, 2), lr=v),
            0.0,
        ),
        "implicit_argmin.cg_tol": ("cg_tol", lambda v: argmin(cg_tol=v), 0.0),
        "implicit_argmin.damping": ("damping", lambda v: argmin(damping=v), -1.0),
        "conjugate_gradient.tol": (
            "tol",
            lambda v: conjugate_gradient(lambda x: x, torch.ones(2), tol=v),
            -1.0,
        ),
        "TrainConfig.lr": ("lr", lambda v: TrainConfig(lr=v), 0.0),
        "DKL.lr": ("lr", lambda v: DKL(lr=v), 0.0),
        "DKL.weight_decay": ("weight_decay", lambda v: DKL(weight_decay=v), -1.0),
        "TrainConfig.weight_decay": ("weight_decay", lambda v: TrainConfig(weight_decay=v), -1.0),
        "TrainConfig.clip_norm": ("clip_norm", lambda v: TrainConfig(clip_norm=v), -1.0),
        "LinearCausalModel.sigma_s": (
            "sigma_s",
            lambda v: LinearCausalModel(3, 2, 2, sigma_s=v),
            0.0,
        ),
    }


def _entry_points():
    """``id -> (argument, call, a value below the minimum)`` for every checked argument."""
    return {**_probrec(), **_samplers(), **_metalearn()}


@pytest.mark.parametrize("entry", sorted(_entry_points()))
@pytest.mark.parametrize("kind", ["nan", "inf", "below_minimum"])
def test_entry_points_refuse_non_finite_and_too_small_reals(entry, kind):
    argument, call, below = _entry_points()[entry]
    value = {"nan": math.nan, "inf": math.inf, "below_minimum": below}[kind]
    with pytest.raises(ValueError, match=argument):
        call(value)


def test_train_config_checks_its_counts():
    from metalearn.training import TrainConfig

    assert TrainConfig(clip_norm=0).clip_norm == 0.0  # 0 turns clipping off
    for name in ("n_steps", "batch_size", "support_size", "query_size", "eval_every"):
        with pytest.raises(ValueError, match=name):
            TrainConfig(**{name: 0})
        with pytest.raises(TypeError, match=name):
            TrainConfig(**{name: 2.5})


def test_all_finite_agrees_with_the_elementwise_check_including_overflowing_sums():
    from probrec.checks import all_finite

    x = torch.randn(50, 7, dtype=torch.float32)
    cases = [x, x.double(), x.half(), torch.full((10,), 3e38), torch.full((4,), 6e4).half()]
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[3, 4] = bad
        cases.append(y)
    both = x.clone()
    both[0, 0], both[1, 1] = float("inf"), -float("inf")  # their sum is NaN, not inf
    cases += [both, torch.full((10,), 3e38).index_fill(0, torch.tensor([9]), float("nan"))]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all())
    assert all_finite(torch.full((10,), 3e38))  # the sum overflows, the entries are finite


def test_other_arguments_fail_early_with_their_name():
    import samplers
    from metalearn.dkl import DKL
    from probrec.backbone import hidden_widths
    from probrec.flows import ConditionalSoftmaxFlow
    from probrec.gp.exact import GPConfig
    from probrec.gp.head import GPHead, encode_labels
    from probrec.gp.linalg import NotPositiveDefiniteError, robust_cholesky
    from samplers.targets import Gaussian

    y = torch.tensor([[0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="kind"):  # was standardised as regression
        encode_labels(y, "regresion")
    with pytest.raises(TypeError, match="burn_in_fraction must be a real number"):
        samplers.MALA(budget=10, burn_in_fraction="a")
    with pytest.raises(TypeError, match="lr_decay must be a real number"):
        samplers.DiKL(lr_decay="x")
    assert samplers.DiGS(alphas=np.float32(0.25)).alphas == [0.25]  # was "not iterable"
    with pytest.raises(TypeError, match="alphas must be a real number"):
        samplers.DiGS(alphas=("0.1",))
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\)"):
        samplers.MALA(budget=10).run(Gaussian(torch.zeros(2)), 4, seed=2**70)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="mask must be bool"):  # 0.5 was read as True
        GPHead(GPConfig()).fit(z, torch.tensor([0.0, 1.0] * 3), mask=torch.full((6,), 0.5))
    with pytest.raises(NotPositiveDefiniteError, match=r"not positive definite even with"):
        robust_cholesky(-torch.eye(3))  # one matrix: no batch index to name
    assert hidden_widths(8) == (8,) and hidden_widths([4, 2]) == (4, 2)
    assert ConditionalSoftmaxFlow(3, hidden=8).encoder.hidden == (8,)
    assert DKL(hidden=8).config["hidden"] == (8,)
    with pytest.raises(TypeError, match="hidden must be an int or a sequence"):
        hidden_widths("8")
    with pytest.raises(ValueError, match="steps"):
        DKL(steps=-3)
    with pytest.raises(TypeError, match="steps"):
        DKL(steps=2.7)
