"""Accelerator checks of the GP heads (probrec.gp) and the meta-learners (metalearn).

Each test runs one capability on the device under test (the ``device`` fixture of
``tests/gpu/conftest.py``) and on the CPU from the same inputs and compares them: float64
results to 1e-8 (the IFT hypergradient to 1e-6 relative), float32 results and pipelines with a
float32 encoder to a float32 tolerance. Where an independent reference exists (gpytorch's
``ExactGP``, BoTorch's batched posterior path) the device result is also compared with it on
the device, and every output is checked to stay on the device.

Mixed devices (model on the device, data on the CPU or the other way): the library moves data
to the model's (learner's) device in ``GPHead.fit``, ``FittedGP``, the learners' ``adapt`` /
predictors and ``DeepKernelGP.fit``; scikit-learn baselines copy to the host; evaluation reads
predictions from any device; ``DeepKernelGP.posterior`` refuses candidates on another device
with a ``ValueError`` naming both.

Synthetic float features only (no RDKit), fixed seeds, small sizes: 15-20 s on one CPU
thread with the CPU standing in.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gpytorch
import numpy as np
import pytest
import torch
from botorch.acquisition import LogExpectedImprovement, qLogExpectedImprovement
from botorch.models.gpytorch import GPyTorchModel
from botorch.optim import optimize_acqf_discrete
from botorch.sampling import SobolQMCNormalSampler

from metalearn import ADKF, ADKFIFT, DKT, MetaLearner, evaluate
from metalearn.dkl import DKL
from metalearn.episodes import sample_meta_batch
from metalearn.protonet import ProtoNet
from metalearn.single_task import GPST, KNN, LogisticRegression, RandomForest
from probrec.data import TaskSet, latent_feature_tasks, sample_episode, split_tasks
from probrec.data.tasks import Episode
from probrec.gp import (
    GPConfig,
    GPHead,
    batched_newton,
    fit_hyperparameters,
    geometry,
    inner_objective,
    posterior,
    prior_centres,
)
from probrec.gp.bo_models import DeepKernelGP, ForestModel
from probrec.gp.exact import initial_theta, unpack
from probrec.gp.head import _ExactGP
from probrec.gp.kernels import TanimotoKernel
from probrec.gp.pool_bo import pool_bo, score_pool
from tests.probrec.gp.test_bo_models import _data as _bo_data
from tests.probrec.gp.test_bo_models import _encoder as _bo_encoder
from tests.probrec.gp.test_pool_bo import _pool

F64 = {"rtol": 1e-8, "atol": 1e-8}
F32 = {"rtol": 1e-4, "atol": 1e-4}
IN_DIM = 8
# one meta-step, tiny encoder; the inner fit far below its default tolerance, so that the two
# devices stop the Newton iterations at the same point
LEARNER: dict[str, Any] = {
    "n_steps": 1,
    "batch_size": 2,
    "support_size": 10,
    "query_size": 16,
    "lr": 1e-3,
    "hidden": (16,),
    "eval_every": 1,
    "valid_support_size": 10,
    "valid_seeds": 1,
    "inner_tol": 1e-9,
    "inner_max_iter": 100,
}
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------ helpers
def _on(t: torch.Tensor, device: torch.device) -> bool:
    """Whether ``t`` lives on ``device`` (``cuda`` and ``cuda:0`` count as the same)."""
    return t.device.type == device.type and device.index in (None, t.device.index)


def _assert_on(device: torch.device, *tensors: torch.Tensor) -> None:
    """Every tensor lives on ``device``."""
    where = [str(t.device) for t in tensors]
    assert all(_on(t, device) for t in tensors), f"expected {device}, got {where}"


def _close(actual: torch.Tensor, expected: torch.Tensor, **tol: float) -> None:
    """``assert_close`` after moving both to the CPU (dtypes must agree)."""
    torch.testing.assert_close(actual.detach().cpu(), expected.detach().cpu(), **tol)


def _state_cpu(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """All tensors of the modules' state dicts, on the CPU, by ``module.name``."""
    return {
        f"{k}.{n}": v.detach().cpu().clone()
        for k, m in modules.items()
        for n, v in m.state_dict().items()
    }


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-for-bit equal state (same keys, dtypes, values)."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _gp_problem(kernel: str, dtype: torch.dtype) -> tuple[GPConfig, dict[str, torch.Tensor]]:
    """Three padded regression tasks with fixed hyperparameters, on the CPU.

    Noise 0.1 and 12 support points keep ``K + noise I`` well conditioned (float32 needs no
    jitter, so both devices factorise the same matrix).
    """
    config = GPConfig(kernel=kernel, mean="constant", kind="regression")
    g = torch.Generator().manual_seed(0)
    t, n, m, d = 3, 12, 7, 6
    z_s = torch.randn(t, n, d, generator=g, dtype=torch.float64)
    z_q = torch.randn(t, m, d, generator=g, dtype=torch.float64)
    if kernel == "tanimoto":  # non-negative counts
        z_s, z_q = (2 * z_s).abs().round(), (2 * z_q).abs().round()
    y_s = torch.sin(z_s[..., 0]) + 0.3 * z_s[..., 1]
    mask = torch.ones(t, n, dtype=torch.bool)
    mask[2, -3:] = False
    values = {"log_lengthscale": 1.3, "log_outputscale": 0.8, "log_noise": 0.1, "mean": 0.2}
    theta = torch.tensor(
        [[np.log(values[k]) if k != "mean" else values[k] for k in config.names]] * t,
        dtype=torch.float64,
    )
    theta[:, 0] += torch.tensor([0.0, 0.1, -0.1], dtype=torch.float64)  # per-task values
    data = {"theta": theta, "z_s": z_s, "y_s": y_s, "z_q": z_q, "mask": mask}
    return config, {k: v.to(dtype) if v.is_floating_point() else v for k, v in data.items()}


def _gpytorch_latent(
    config: GPConfig, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent posterior mean and variance of one task from a gpytorch ``ExactGP`` built on
    ``x``'s device with the hyperparameters ``theta [1, p]`` (Cholesky, no fast paths)."""
    h = unpack(theta, config)
    base = {
        "matern52": lambda: gpytorch.kernels.MaternKernel(nu=2.5),
        "rbf": gpytorch.kernels.RBFKernel,
        "tanimoto": TanimotoKernel,
    }[config.kernel]()
    covar = gpytorch.kernels.ScaleKernel(base).to(x)
    covar.outputscale = h.outputscale[0]
    if h.lengthscale is not None:
        covar.base_kernel.lengthscale = h.lengthscale[0]
    lik = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(1e-12)
    ).to(x)
    lik.noise = h.noise[0]
    mean = gpytorch.means.ConstantMean().to(x)
    mean.constant.data.fill_(float(h.mean[0]))
    model = _ExactGP(x, y, lik, mean, covar).eval()  # gpytorch's plain exact GP
    with torch.no_grad(), gpytorch.settings.fast_computations(False, False, False):
        pred = model(xq)
        return pred.mean, pred.variance


def _make_learner(
    cls: type[MetaLearner], kind: str, device: torch.device, **config: Any
) -> MetaLearner:
    """A learner on ``device`` with its modules built (weights seeded: equal on every device)."""
    if cls is DKL:
        return DKL(kind, device=device, steps=10, hidden=(16,))
    learner = cls(kind, device=device, **LEARNER, **config)
    learner.build(IN_DIM)
    return learner


@pytest.fixture(scope="module")
def cls_tasks() -> tuple[TaskSet, TaskSet, TaskSet]:
    """Train / valid / test classification tasks (40 rows, 8 float features)."""
    return split_tasks(latent_feature_tasks(10, 40, dim=IN_DIM, seed=0), (6, 2, 2), seed=0)


@pytest.fixture(scope="module")
def reg_tasks() -> tuple[TaskSet, TaskSet, TaskSet]:
    """Train / valid / test regression tasks (40 rows, 8 float features)."""
    tasks = latent_feature_tasks(10, 40, dim=IN_DIM, kind="regression", seed=1)
    return split_tasks(tasks, (6, 2, 2), seed=0)


# ------------------------------------------------------------------------------ 1. exact GP
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kernel", ["matern52", "rbf", "tanimoto"])
def test_exact_posterior_on_device_equals_cpu_and_gpytorch(
    device: torch.device, kernel: str, dtype: torch.dtype
) -> None:
    """``posterior`` (padded batch, full covariance) and a ``GPHead`` with fixed hyperparameters
    on the device against the same on the CPU; in float64 also against gpytorch's ``ExactGP``
    run on the device, task by task on the valid points."""
    config, data = _gp_problem(kernel, dtype)
    tol = F64 if dtype == torch.float64 else F32
    out = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        d = {k: v.to(dev) for k, v in data.items()}
        post = posterior(d["theta"], config, d["z_s"], d["y_s"], d["z_q"], d["mask"], full_cov=True)
        fitted = GPHead(config).fit(d["z_s"], d["y_s"], d["mask"], theta=d["theta"])
        pred = fitted.predict(d["z_q"])
        out[label] = (post.mean, post.var, post.cov, post.noise, *pred)
    for dev_t, cpu_t in zip(out["dev"], out["cpu"]):
        _assert_on(device, dev_t)
        assert dev_t.dtype == cpu_t.dtype == dtype
        _close(dev_t, cpu_t, **tol)
    if dtype != torch.float64:
        return
    mean, var = out["dev"][:2]
    d = {k: v.to(device) for k, v in data.items()}
    for t in range(d["theta"].shape[0]):
        keep = d["mask"][t]
        ref_mean, ref_var = _gpytorch_latent(
            config, d["theta"][t : t + 1], d["z_s"][t][keep], d["y_s"][t][keep], d["z_q"][t]
        )
        _assert_on(device, ref_mean, ref_var)
        _close(mean[t], ref_mean, rtol=1e-7, atol=1e-9)
        _close(var[t], ref_var, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------ 2. inner fit
@pytest.mark.parametrize(
    "kernel,mean,kind", [("matern52", "constant", "regression"), ("rbf", "zero", "classification")]
)
def test_newton_fit_on_device_reaches_the_cpu_optimum(
    device: torch.device, kernel: str, mean: str, kind: str
) -> None:
    """Batched (4 tasks, padded) MAP fit of the hyperparameters in float64: the closed-form
    Newton solver on the device against the CPU (theta, objective, Hessian), and the autograd
    Newton path (Hessian-vector products, batched Armijo search) on the device against both."""
    config = GPConfig(kernel=kernel, mean=mean, kind=kind)
    g = torch.Generator().manual_seed(1)
    t, n, dim = 4, 14, 5
    z = torch.randn(t, n, dim, generator=g, dtype=torch.float64)
    f = torch.sin(2 * z[..., 0]) + z[..., 1] ** 2
    y = (f > f.median(-1, keepdim=True).values).double() * 2 - 1 if kind == "classification" else f
    mask = torch.ones(t, n, dtype=torch.bool)
    mask[1, -4:] = False
    mask[3, -2:] = False
    y = y * mask
    res = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        zd, yd, md = z.to(dev), y.to(dev), mask.to(dev)
        geom = geometry(config, zd, zd)
        centres = prior_centres(config, zd, md, geom=geom)
        fit = fit_hyperparameters(config, geom, yd, md, centres, tol=1e-10, max_iter=100)
        assert bool(fit.converged.all()), fit.summary()
        res[label] = fit
        if label == "dev":

            def objective(
                th: torch.Tensor, geom=geom, yd=yd, md=md, centres=centres
            ) -> torch.Tensor:
                return inner_objective(th, config, geom, yd, md, centres)

            auto = batched_newton(
                objective, initial_theta(config, yd, md, centres), tol=1e-10, max_iter=100
            )
            assert auto.all_converged
            _assert_on(device, auto.theta, auto.hessian)
            _close(auto.theta, fit.theta, **F64)
    dev_fit, cpu_fit = res["dev"], res["cpu"]
    _assert_on(
        device, dev_fit.theta, dev_fit.objective, dev_fit.hessian, dev_fit.converged, dev_fit.n_iter
    )
    _close(dev_fit.theta, cpu_fit.theta, **F64)
    _close(dev_fit.objective, cpu_fit.objective, rtol=1e-10, atol=1e-12)
    _close(dev_fit.hessian, cpu_fit.hessian, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_gp_head_fit_on_device_equals_cpu(device: torch.device, dtype: torch.dtype) -> None:
    """``GPHead.fit`` (one unbatched regression task, Newton inner loop) then ``predict`` on the
    device against the CPU: fitted hyperparameters and predictions, in the features' dtype."""
    x, y, xq = _bo_data(n=20, d=4, m=9, seed=2)
    head = GPHead(GPConfig(kind="regression"), tol=1e-10, max_iter=100)
    tol = F64 if dtype == torch.float64 else F32
    out = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        gp = head.fit(x.to(dev, dtype), y[:, 0].to(dev, dtype))
        assert bool(gp.fit.converged.all())
        out[label] = (gp.theta, *gp.predict(xq.to(dev, dtype)))
    for dev_t, cpu_t in zip(out["dev"], out["cpu"]):
        _assert_on(device, dev_t)
        assert dev_t.dtype == dtype
        _close(dev_t, cpu_t, **tol)


# ------------------------------------------------------------------------------ 3. learners
@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_adkf_ift_hypergradient_on_device_equals_cpu(
    device: torch.device, kind: str, cls_tasks: tuple, reg_tasks: tuple
) -> None:
    """ADKF-IFT with a float64 encoder on one meta-batch: the meta-loss and the IFT
    hypergradient in the encoder's ``.grad`` on the device against the CPU (1e-6 relative); on
    the device it differs from ADKF's gradient (the IFT correction ran there)."""
    train = (cls_tasks if kind == "classification" else reg_tasks)[0]
    batch = sample_meta_batch(train, 3, 12, 16, np.random.default_rng(0), dtype=torch.float64)

    def gradient(cls: type[ADKFIFT], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        learner = _make_learner(cls, kind, dev)
        learner.encoder.double()
        loss = learner.episode_loss(batch.to(dev))
        loss.backward()
        assert bool(learner.last_fit.converged.all())
        _assert_on(dev, loss, learner.last_fit.theta, *learner.encoder.parameters())
        grads = [p.grad for p in learner.encoder.parameters()]
        _assert_on(dev, *grads)
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])

    loss_cpu, g_cpu = gradient(ADKFIFT, CPU)
    loss_dev, g_dev = gradient(ADKFIFT, device)
    _close(loss_dev, loss_cpu, rtol=1e-9, atol=1e-12)
    scale = float(g_cpu.abs().max())
    _close(g_dev, g_cpu, rtol=1e-6, atol=1e-6 * scale)
    assert float((g_dev.cpu() - g_cpu).norm() / g_cpu.norm()) < 1e-6
    _, g_adkf = gradient(ADKF, device)
    assert float((g_adkf - g_dev).norm() / g_dev.norm()) > 1e-3


@pytest.mark.parametrize(
    "cls,config",
    [(ADKFIFT, {}), (DKT, {}), (ProtoNet, {}), (ProtoNet, {"distance": "mahalanobis"})],
    ids=["ADKF-IFT", "DKT", "ProtoNet", "ProtoNet-Mahalanobis"],
)
def test_one_meta_training_step_on_device_moves_parameters_like_cpu(
    device: torch.device, cls: type[MetaLearner], config: dict, cls_tasks: tuple
) -> None:
    """One step of ``meta_fit`` (Adam, clipping) from the same weights: the parameter change
    and the loss on the device against the CPU (float32 encoder); parameters stay on the
    device."""
    train = cls_tasks[0]
    out = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        learner = _make_learner(cls, "classification", dev, **config)
        before = _state_cpu(learner.trainable_modules())
        learner.meta_fit(train, None, progress=False)
        params = [p for m in learner.trainable_modules().values() for p in m.parameters()]
        _assert_on(dev, *params)
        after = _state_cpu(learner.trainable_modules())
        out[label] = (before, after, learner.history["loss"])
    (b_cpu, a_cpu, loss_cpu), (b_dev, a_dev, loss_dev) = out["cpu"], out["dev"]
    _assert_same_state(b_dev, b_cpu)
    assert loss_dev == pytest.approx(loss_cpu, rel=1e-5)
    moved = 0.0
    for k in b_cpu:
        if not b_cpu[k].is_floating_point():
            continue
        delta_cpu, delta_dev = a_cpu[k] - b_cpu[k], a_dev[k] - b_dev[k]
        torch.testing.assert_close(delta_dev, delta_cpu, rtol=1e-3, atol=1e-6, msg=k)
        moved = max(moved, float(delta_cpu.abs().max()))
    assert moved > 0.5 * LEARNER["lr"]  # Adam's first step moves weights by about lr


@pytest.mark.parametrize(
    "cls,kind,config",
    [
        (ADKFIFT, "classification", {}),
        (ADKFIFT, "regression", {}),
        (DKT, "classification", {}),
        (ProtoNet, "classification", {}),
        (ProtoNet, "classification", {"distance": "mahalanobis"}),
        (DKL, "regression", {}),
    ],
    ids=["ADKF-IFT-cls", "ADKF-IFT-reg", "DKT", "ProtoNet", "ProtoNet-Mahalanobis", "DKL"],
)
def test_adapt_and_predict_on_device_equals_cpu(
    device: torch.device,
    cls: type[MetaLearner],
    kind: str,
    config: dict,
    cls_tasks: tuple,
    reg_tasks: tuple,
) -> None:
    """``adapt`` + ``predict`` (+ ``predict_proba``) of a learner on the device against the
    same learner on the CPU; the device learner is given the episode as CPU numpy arrays and as
    device tensors (the same predictions, on the device)."""
    test = (cls_tasks if kind == "classification" else reg_tasks)[2]
    ep = sample_episode(test[0], 10, seed=0)
    out = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        learner = _make_learner(cls, kind, dev, **config)
        pred = learner.adapt(ep.support_x, ep.support_y)
        res = list(pred.predict(ep.query_x))
        if kind == "classification":
            res.append(pred.predict_proba(ep.query_x))
        _assert_on(dev, *res)
        out[label] = res
        if label == "dev":  # data already on the device: same numbers
            on = [torch.as_tensor(a, device=dev) for a in (ep.support_x, ep.support_y, ep.query_x)]
            pred2 = learner.adapt(on[0], on[1])
            res2 = list(pred2.predict(on[2]))
            if kind == "classification":
                res2.append(pred2.predict_proba(on[2]))
            for a, b in zip(res2, res):
                _assert_on(dev, a)
                _close(a, b, rtol=1e-5, atol=1e-6)
    tol = {"rtol": 1e-3, "atol": 1e-4} if cls is DKL else F32
    for dev_t, cpu_t in zip(out["dev"], out["cpu"]):
        assert bool(torch.isfinite(cpu_t).all())
        _close(dev_t, cpu_t, **tol)


# ------------------------------------------------------------------------------ 4. checkpoints
def test_checkpoints_move_between_device_and_cpu(
    device: torch.device, reg_tasks: tuple, tmp_path: Path
) -> None:
    """``meta_fit`` with checkpoints on the device, ``save``, then ``load`` on the CPU and back
    on the device: state dicts bit-for-bit equal, predictions equal (float32 tolerance across
    devices); a CPU-trained learner loaded onto the device likewise."""
    tr, va, te = reg_tasks
    ep = sample_episode(te[0], 10, seed=1)

    def predictions(learner: MetaLearner) -> tuple[torch.Tensor, torch.Tensor]:
        return learner.adapt(ep.support_x, ep.support_y).predict(ep.query_x)

    for label, trained_on, other in (("dev", device, CPU), ("cpu", CPU, device)):
        learner = ADKFIFT("regression", device=trained_on, **{**LEARNER, "n_steps": 2})
        learner.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / label)
        assert learner.history["step"] == [0, 1]
        _assert_on(trained_on, *learner.encoder.parameters())
        assert (tmp_path / label / "last.pt").exists()
        path = learner.save(tmp_path / f"{label}.pt")
        state = _state_cpu(learner.modules())
        ref = predictions(learner)
        for dev in (other, trained_on):
            again = MetaLearner.load(path, device=dev)
            assert isinstance(again, ADKFIFT) and again.history == learner.history
            _assert_on(dev, *again.encoder.parameters())
            _assert_same_state(_state_cpu(again.modules()), state)
            pred = predictions(again)
            _assert_on(dev, *pred)
            tol = {"rtol": 1e-6, "atol": 1e-7} if dev == trained_on else F32
            for a, b in zip(pred, ref):
                _close(a, b, **tol)
    # the default load (no device) is the CPU
    _assert_on(CPU, *MetaLearner.load(tmp_path / "dev.pt").encoder.parameters())


def test_resume_from_a_device_checkpoint_on_cpu_and_device(
    device: torch.device, cls_tasks: tuple, tmp_path: Path
) -> None:
    """A run stopped after 2 steps on the device resumes from its ``last.pt`` on the CPU and on
    the device to step 3 (optimizer state included): the same weights and losses."""
    tr = cls_tasks[0]
    config = {**LEARNER, "n_steps": 2}
    ADKFIFT(device=device, **config).meta_fit(
        tr, None, progress=False, checkpoint_dir=tmp_path / "a"
    )
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    out = {}
    for label, dev, folder in (("cpu", CPU, "a"), ("dev", device, "b")):
        learner = ADKFIFT(device=dev, **{**config, "n_steps": 3})
        learner.meta_fit(tr, None, progress=False, checkpoint_dir=tmp_path / folder)
        assert learner.history["step"] == [0, 1, 2]
        _assert_on(dev, *learner.encoder.parameters())
        out[label] = learner
    a, b = out["cpu"], out["dev"]
    assert b.history["loss"] == pytest.approx(a.history["loss"], rel=1e-5)
    sa, sb = _state_cpu(a.modules()), _state_cpu(b.modules())
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------ 5. BoTorch
@pytest.mark.parametrize("with_encoder", [False, True], ids=["features", "encoder"])
def test_deep_kernel_gp_posterior_on_device(device: torch.device, with_encoder: bool) -> None:
    """``DeepKernelGP`` fitted on the device: its direct q=1 posterior, the joint q=40
    posterior and a qLogEI value (Sobol base samples) against the CPU model; on the device the
    direct path against BoTorch's own batched posterior path."""
    x, y, xq = _bo_data()
    enc = _bo_encoder() if with_encoder else None
    tol = F32 if with_encoder else F64  # float32 encoder: float32 tolerance
    xb = xq[:8].reshape(4, 2, 5)
    out = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        model = DeepKernelGP.fit(
            x.to(dev), y.to(dev), encoder=None if enc is None else enc.to(dev), tol=1e-10
        )
        q1 = model.posterior(xq.to(dev).unsqueeze(-2), observation_noise=True)
        joint = model.posterior(xq.to(dev))
        acq = qLogExpectedImprovement(
            model,
            best_f=y.max().to(dev),
            sampler=SobolQMCNormalSampler(torch.Size([64]), seed=0),
        )
        with torch.no_grad():
            q_ei = acq(xb.to(dev))
        res = (q1.mean, q1.variance, joint.mean, joint.variance, q_ei)
        _assert_on(dev, *res)
        out[label] = res
        if label == "dev":
            ref = GPyTorchModel.posterior(model, xq.to(dev).unsqueeze(-2), observation_noise=True)
            _assert_on(dev, ref.mean, ref.variance)
            _close(q1.mean, ref.mean, rtol=1e-7, atol=1e-8)
            _close(q1.variance, ref.variance, rtol=1e-6, atol=1e-9)
    for dev_t, cpu_t in zip(out["dev"], out["cpu"]):
        _close(dev_t, cpu_t, **tol)


def test_pool_selection_on_device_picks_the_cpu_candidate(device: torch.device) -> None:
    """LogEI pool scoring, ``optimize_acqf_discrete`` and three ``pool_bo`` iterations with the
    GP model on the device, and the forest model's posterior on device tensors, against the
    CPU: the same scores (to 1e-6) and the same chosen candidates (the top two CPU scores are
    far apart, so the argmax is determined)."""
    x, y = _pool(n=60)
    obs = torch.arange(8)
    out = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        xd, yd = x.to(dev), y.to(dev)
        model = DeepKernelGP.fit(xd[obs], yd[obs, None], tol=1e-10)
        acq = LogExpectedImprovement(model, best_f=yd[obs].max())
        scores = score_pool(acq, xd[8:])
        cand, value = optimize_acqf_discrete(acq, q=1, choices=xd[8:])
        forest = ForestModel.fit(xd[obs], yd[obs, None], n_estimators=10, seed=0)
        f_post = forest.posterior(xd[8:].unsqueeze(-2))
        res = (scores, cand, value, f_post.mean, f_post.variance)
        _assert_on(dev, *res)
        trace = pool_bo(
            xd, yd, lambda a, b, s: DeepKernelGP.fit(a, b, tol=1e-10), n_init=6, n_iter=3
        )
        out[label] = (res, trace)
    (r_cpu, t_cpu), (r_dev, t_dev) = out["cpu"], out["dev"]
    top = torch.topk(r_cpu[0], 2).values
    assert float(top[0] - top[1]) > 1e-3 * float(top.abs().max())  # a clear argmax
    _close(r_dev[0], r_cpu[0], rtol=1e-6, atol=1e-9)
    _close(r_dev[1], r_cpu[1], rtol=0, atol=0)  # the same pool row
    _close(r_dev[2], r_cpu[2], rtol=1e-6, atol=1e-9)
    for a, b in zip(r_dev[3:], r_cpu[3:]):
        _close(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(t_dev.order, t_cpu.order)
    np.testing.assert_allclose(t_dev.best_so_far, t_cpu.best_so_far, rtol=0, atol=0)


# ------------------------------------------------------------------------------ 6. mixed devices
def test_gp_head_on_device_takes_cpu_data(device: torch.device) -> None:
    """Head features on the device, labels / mask / fixed hyperparameters / queries on the CPU
    (tensors or numpy): ``GPHead.fit`` and ``FittedGP.predict`` move them to the features'
    device and give the all-on-device result, on the device."""
    config, data = _gp_problem("matern52", torch.float64)
    d = {k: v.to(device) for k, v in data.items()}
    head = GPHead(config, tol=1e-10, max_iter=100)
    ref_fit = head.fit(d["z_s"], d["y_s"], d["mask"])
    ref = ref_fit.predict(d["z_q"])
    mixed_fit = head.fit(d["z_s"], data["y_s"].numpy(), data["mask"])
    _assert_on(device, mixed_fit.theta, mixed_fit.targets)
    _close(mixed_fit.theta, ref_fit.theta, **F64)
    for q in (data["z_q"], data["z_q"].numpy()):
        for a, b in zip(mixed_fit.predict(q), ref):
            _assert_on(device, a)
            _close(a, b, **F64)
    fixed = head.fit(d["z_s"], data["y_s"], data["mask"], theta=data["theta"])
    on_device = head.fit(d["z_s"], d["y_s"], d["mask"], theta=d["theta"])
    for a, b in zip(fixed.predict(data["z_q"]), on_device.predict(d["z_q"])):
        _assert_on(device, a)
        _close(a, b, **F64)


def test_deep_kernel_gp_on_device_scores_cpu_candidates(device: torch.device) -> None:
    """A ``DeepKernelGP`` on the device scoring candidates on the CPU: the posterior either
    moves them to the model's device (then it equals the on-device posterior) or refuses with a
    ``ValueError`` naming the devices; not a torch device-mismatch error deep in gpytorch."""
    x, y, xq = _bo_data()
    model = DeepKernelGP.fit(x.to(device), y.to(device))
    ref = model.posterior(xq.to(device).unsqueeze(-2))
    try:
        post = model.posterior(xq.unsqueeze(-2))
    except ValueError as err:
        assert "device" in str(err)
        return
    _close(post.mean, ref.mean, **F64)
    _close(post.variance, ref.variance, **F64)


def test_deep_kernel_gp_fit_on_device_data_with_a_cpu_encoder(device: torch.device) -> None:
    """``DeepKernelGP.fit`` with data on the device and the caller's encoder on the CPU: the
    training points are encoded on the CPU, the model (and its frozen encoder copy) lives on the
    data's device; the same model as with the encoder moved, up to the float32 encoder's
    rounding on two devices (6e-7 relative, seen on an H200), and the caller's encoder stays
    on the CPU."""
    x, y, xq = _bo_data()
    enc = _bo_encoder()
    ref = DeepKernelGP.fit(x.to(device), y.to(device), encoder=_bo_encoder().to(device))
    model = DeepKernelGP.fit(x.to(device), y.to(device), encoder=enc)
    _assert_on(CPU, *enc.parameters())
    a = model.posterior(xq.to(device).unsqueeze(-2))
    b = ref.posterior(xq.to(device).unsqueeze(-2))
    _assert_on(device, a.mean)
    _close(a.mean, b.mean, **F32)
    _close(a.variance, b.variance, **F32)


def test_evaluate_scores_a_learner_on_the_device_like_on_cpu(
    device: torch.device, reg_tasks: tuple
) -> None:
    """``evaluate`` (FS-Mol protocol; its docs say learners on CUDA run in-process) with an
    ADKF-IFT on the device gives the CPU learner's R^2_os scores."""
    te = reg_tasks[2]
    scores = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        res = evaluate(
            {"m": _make_learner(ADKFIFT, "regression", dev)}, te, (10,), 2, progress=False
        )
        scores[label] = [r["score"] for r in res.rows]
    assert len(scores["cpu"]) == 2 * len(te)
    np.testing.assert_allclose(scores["dev"], scores["cpu"], rtol=0, atol=1e-4)


def _nonneg_episode(tasks: TaskSet) -> Episode:
    """A classification episode with non-negative inputs (the Tanimoto kernel's domain)."""
    task = tasks[0]
    return sample_episode(task.with_inputs(np.round(2 * np.abs(task.inputs))), 10, seed=0)


def test_gp_st_runs_on_device_support_tensors(device: torch.device, cls_tasks: tuple) -> None:
    """GP-ST (Tanimoto GP per task) on the device adapted on support tensors on the device,
    queried with numpy: predictions on the device, equal to the CPU ones (float64)."""
    ep = _nonneg_episode(cls_tasks[2])
    out = {}
    for label, dev in (("cpu", CPU), ("dev", device)):
        pred = GPST(device=dev).adapt(
            torch.as_tensor(ep.support_x, device=dev), torch.as_tensor(ep.support_y, device=dev)
        )
        res = (*pred.predict(ep.query_x), pred.predict_proba(ep.query_x))
        _assert_on(dev, *res)
        out[label] = res
    for a, b in zip(out["dev"], out["cpu"]):
        _close(a, b, **F64)


def test_gp_st_predicts_device_query_tensors(device: torch.device, cls_tasks: tuple) -> None:
    """GP-ST adapted on the device, queried with a tensor on the device: the same predictions
    as for the numpy queries."""
    ep = _nonneg_episode(cls_tasks[2])
    sx, sy = (torch.as_tensor(a, device=device) for a in (ep.support_x, ep.support_y))
    pred = GPST(device=device).adapt(sx, sy)
    for a, b in zip(
        pred.predict(torch.as_tensor(ep.query_x, device=device)), pred.predict(ep.query_x)
    ):
        _close(a, b, rtol=0, atol=0)


def test_gp_st_honours_its_device(device: torch.device, cls_tasks: tuple) -> None:
    """``GPST(device=...)`` given numpy data computes on that device like the deep learners
    (``check_support(..., device=self.device)``): predictions on the device."""
    ep = _nonneg_episode(cls_tasks[2])
    pred = GPST(device=device).adapt(ep.support_x, ep.support_y)
    mean, var = pred.predict(ep.query_x)
    _assert_on(device, mean, var)
    ref = GPST().adapt(ep.support_x, ep.support_y).predict(ep.query_x)
    _close(mean, ref[0], **F64)
    _close(var, ref[1], **F64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: KNN(),
        lambda: LogisticRegression(),
        lambda: RandomForest(n_estimators=10),
    ],
    ids=["kNN", "LogReg", "RF"],
)
def test_sklearn_baselines_take_device_tensors(
    device: torch.device,
    make: Callable[[], MetaLearner],
    cls_tasks: tuple,
) -> None:
    """The scikit-learn baselines (CPU models) adapted and queried with tensors on the device:
    the same CPU predictions as from numpy (their predictors already copy queries to the host)."""
    ep = sample_episode(cls_tasks[2][0], 10, seed=0)
    on = [torch.as_tensor(a, device=device) for a in (ep.support_x, ep.support_y, ep.query_x)]
    got = make().adapt(on[0], on[1]).predict_proba(on[2])
    want = make().adapt(ep.support_x, ep.support_y).predict_proba(ep.query_x)
    _close(got, want, rtol=0, atol=0)
