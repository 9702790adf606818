"""BoTorch models: the deep-kernel GP against the GP head and gpytorch; the forest model."""

import warnings

import numpy as np
import pytest
import torch
from botorch.acquisition import (
    ExpectedImprovement,
    LogExpectedImprovement,
    UpperConfidenceBound,
    qExpectedImprovement,
    qLogNoisyExpectedImprovement,
)
from botorch.models.gpytorch import GPyTorchModel
from botorch.optim import optimize_acqf_discrete
from botorch.sampling import SobolQMCNormalSampler

from probrec.gp import GPConfig, GPHead
from probrec.gp.bo_models import DeepKernelGP, ForestModel
from probrec.gp.head import FittedGP, encode_labels
from probrec.gp.pool_bo import score_pool


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's advice to prefer LogEI over EI
        yield


def _data(n=25, d=5, m=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = (3 * x[:, :1]).sin() + x[:, 1:2] ** 2 + 0.05 * torch.randn(n, 1, generator=g).double()
    xq = torch.rand(m, d, generator=g, dtype=torch.float64)
    return x, 10 * y + 3, xq


def _encoder(d=5, k=4):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, k))


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
@pytest.mark.parametrize("mean", ["zero", "constant"])
def test_posterior_equals_gp_head_prediction(kernel, mean):
    x, y, xq = _data()
    enc = _encoder()
    config = GPConfig(kernel=kernel, mean=mean, kind="regression")
    model = DeepKernelGP.fit(x, y, encoder=enc, config=config)
    with torch.no_grad():
        z, zq = enc(x.float()).double(), enc(xq.float()).double()
    head = GPHead(config).fit(z, y[:, 0])
    mean_h, var_h = head.predict(zq)  # noise included, original units
    lat_m, lat_v = head.latent(zq)
    post = model.posterior(xq.unsqueeze(-2), observation_noise=True)  # pool scoring path
    assert post.mean.shape == (40, 1, 1)
    torch.testing.assert_close(post.mean.reshape(-1), mean_h, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(post.variance.reshape(-1), var_h, rtol=1e-7, atol=1e-9)
    joint = model.posterior(xq)  # q = 40: gpytorch's joint path, no observation noise
    torch.testing.assert_close(joint.mean.reshape(-1), mean_h, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(
        joint.variance.reshape(-1), lat_v * head.scale[0] ** 2, rtol=1e-6, atol=1e-8
    )
    torch.testing.assert_close(lat_m * head.scale[0] + head.shift[0], mean_h)


def test_direct_marginals_equal_gpytorch_batched_path():
    x, y, xq = _data()
    model = DeepKernelGP.fit(x, y, encoder=_encoder())
    xb = xq.reshape(4, 10, 1, 5)  # batch 4 x 10, q = 1
    for noise in (False, True):
        ours = model.posterior(xb, observation_noise=noise)
        ref = GPyTorchModel.posterior(model, xb, observation_noise=noise)
        assert ours.mean.shape == ref.mean.shape == (4, 10, 1, 1)
        torch.testing.assert_close(ours.mean, ref.mean, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(ours.variance, ref.variance, rtol=1e-6, atol=1e-9)


def test_tanimoto_gp_on_counts():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (30, 64), generator=g).double()
    y = x[:, :8].sum(-1, keepdim=True) + 0.1 * torch.randn(30, 1, generator=g).double()
    xq = torch.randint(0, 3, (20, 64), generator=g).double()
    config = GPConfig(kernel="tanimoto", kind="regression")
    model = DeepKernelGP.fit(x, y, config=config)
    mean_h, var_h = GPHead(config).fit(x, y[:, 0]).predict(xq)
    post = model.posterior(xq.unsqueeze(1), observation_noise=True)
    torch.testing.assert_close(post.mean.reshape(-1), mean_h, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(post.variance.reshape(-1), var_h, rtol=1e-7, atol=1e-9)


def test_botorch_acquisitions_and_discrete_optimisation_run_unchanged():
    x, y, pool = _data(m=60)
    model = DeepKernelGP.fit(x, y, encoder=_encoder())
    best = y.max()
    log_ei = LogExpectedImprovement(model, best_f=best)
    cand, val = optimize_acqf_discrete(log_ei, q=1, choices=pool)
    scores = score_pool(log_ei, pool)
    torch.testing.assert_close(cand[0], pool[int(scores.argmax())])
    torch.testing.assert_close(val.reshape(()), scores.max())
    # analytic EI and LogEI agree where EI is representable
    ei = score_pool(ExpectedImprovement(model, best_f=best), pool)
    ok = ei > 1e-12
    torch.testing.assert_close(scores[ok], ei[ok].log(), rtol=1e-6, atol=1e-8)
    for acq, q in [
        (qExpectedImprovement(model, best_f=best), 3),
        (qLogNoisyExpectedImprovement(model, X_baseline=x), 2),
        (UpperConfidenceBound(model, beta=2.0), 1),
    ]:
        cand, val = optimize_acqf_discrete(acq, q=q, choices=pool)
        assert cand.shape == (q, 5) and bool(torch.isfinite(val).all())
        rows = [(pool == c).all(-1).nonzero().numel() for c in cand]
        assert rows == [1] * q  # real pool members, all different
        assert len({tuple(c.tolist()) for c in cand}) == q
    # MC expected improvement of one point approximates the analytic value
    qei = qExpectedImprovement(
        model, best_f=best, sampler=SobolQMCNormalSampler(torch.Size([4096]), seed=0)
    )
    with torch.no_grad():
        mc = qei(pool[:5].unsqueeze(1))
    torch.testing.assert_close(mc, ei[:5], rtol=0.05, atol=1e-3)


def test_condition_on_observations_equals_gp_with_the_same_hyperparameters():
    x, y, xq = _data()
    enc = _encoder()
    model = DeepKernelGP.fit(x, y, encoder=enc)
    x_new, y_new = xq[:3], torch.tensor([[1.0], [5.0], [9.0]], dtype=torch.float64)
    model.posterior(xq[:2])  # gpytorch fantasy updates need the prediction caches
    cond = model.condition_on_observations(x_new, y_new)
    gp = GPHead(GPConfig(kind="regression")).fit(enc(x.float()).double().detach(), y[:, 0])
    # an exact GP with the fitted hyperparameters on all points, standardised as before
    x_all, y_all = torch.cat([x, x_new]), torch.cat([y, y_new])[:, 0]
    with torch.no_grad():
        z_all = enc(x_all.float()).double()
    t_all = (y_all - gp.shift[0]) / gp.scale[0]
    ref = FittedGP(
        gp.config, gp.theta, z_all[None], t_all[None], None, gp.shift, gp.scale, None, True
    )
    with torch.no_grad():
        m_ref, v_ref = ref.predict(enc(xq[3:].float()).double()[None])
    post = cond.posterior(xq[3:], observation_noise=True)
    torch.testing.assert_close(post.mean.reshape(-1), m_ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(post.variance.reshape(-1), v_ref[0], rtol=1e-6, atol=1e-8)
    fant = model.fantasize(xq[:2], sampler=SobolQMCNormalSampler(torch.Size([8]), seed=0))
    assert fant.posterior(xq[5:9]).mean.shape == (8, 4, 1)


def test_encoder_is_copied_not_modified():
    x, y, _ = _data()
    enc = _encoder()
    before = [p.detach().clone() for p in enc.parameters()]
    model = DeepKernelGP.fit(x, y, encoder=enc)
    model.to(torch.float64)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in enc.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, enc.parameters(), strict=True))
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_gradients_flow_to_continuous_inputs():
    x, y, xq = _data()
    model = DeepKernelGP.fit(x, y, encoder=_encoder())
    xc = xq[:4].unsqueeze(1).clone().requires_grad_(True)
    LogExpectedImprovement(model, best_f=y.max())(xc).sum().backward()
    assert xc.grad is not None and bool(torch.isfinite(xc.grad).all())
    assert float(xc.grad.abs().sum()) > 0


def test_bad_inputs_are_named():
    x, y, _ = _data()
    with pytest.raises(ValueError, match="train_Y"):
        DeepKernelGP.fit(x, y[:, 0])
    with pytest.raises(ValueError, match="train_Y"):
        DeepKernelGP.fit(x, torch.full_like(y, float("nan")))
    with pytest.raises(ValueError, match="regression"):
        DeepKernelGP.fit(x, y, config=GPConfig(kind="classification"))
    with pytest.raises(ValueError, match="train_X"):
        DeepKernelGP.fit(x[:1], y[:1])
    gp = GPHead(GPConfig(kind="regression")).fit(x, y[:, 0])
    with pytest.raises(ValueError, match="train_X"):
        DeepKernelGP(x[:-1], y[:-1], gp)
    with pytest.raises(ValueError, match="train_Y differs"):
        DeepKernelGP(x, y + 1.0, gp)
    # candidates: NaN gave a silent NaN posterior (a random forest: finite numbers), another
    # width a gpytorch RuntimeError
    models = [DeepKernelGP.fit(x, y, encoder=_encoder()), ForestModel.fit(x, y, n_estimators=5)]
    for model in models:
        with pytest.raises(ValueError, match="X contains non-finite"):
            model.posterior(torch.full((4, 1, x.shape[-1]), float("nan"), dtype=x.dtype))
        with pytest.raises(ValueError, match=r"X must have shape \[\.\.\., q,"):
            model.posterior(torch.zeros(4, 1, x.shape[-1] + 1, dtype=x.dtype))
    # candidates on another device than the model (here torch's shape-only "meta" device)
    with pytest.raises(ValueError, match="X is on device meta but the model is on device cpu"):
        models[0].posterior(torch.zeros(4, 1, x.shape[-1], dtype=x.dtype, device="meta"))


def test_forest_model_posterior_matches_the_forest():
    x, y, xq = _data(n=40)
    model = ForestModel.fit(x, y, n_estimators=30, seed=0)
    post = model.posterior(xq.unsqueeze(1))
    x32 = xq.numpy().astype(np.float32)
    per_tree = np.stack([t.predict(x32) for t in model.forest.estimators_])
    np.testing.assert_allclose(post.mean.reshape(-1).numpy(), model.forest.predict(xq.numpy()))
    np.testing.assert_allclose(
        post.variance.reshape(-1).numpy(), per_tree.var(0) + model.noise, rtol=1e-10
    )
    assert model.noise > 0
    cand, val = optimize_acqf_discrete(LogExpectedImprovement(model, y.max()), q=1, choices=xq)
    assert bool(torch.isfinite(val).all()) and (xq == cand).all(-1).any()
    with pytest.raises(ValueError, match="noise"):
        ForestModel(model.forest, noise=-1.0)


def test_encode_labels_round_trip_used_by_the_transform():
    _, y, _ = _data()
    t, shift, scale = encode_labels(y[:, 0][None], "regression")
    model = DeepKernelGP.fit(*_data()[:2])
    torch.testing.assert_close(model.outcome_transform.means.reshape(()), shift[0])
    torch.testing.assert_close(model.outcome_transform.stdvs.reshape(()), scale[0])
    model.train()  # the statistics stay fixed
    assert not model.outcome_transform.training
    torch.testing.assert_close(model.train_targets, t[0])


@pytest.mark.parametrize(("scale", "offset"), [(1e-6, 0.0), (0.1, 1e5), (1e4, -3.0)])
def test_predictions_follow_the_labels_units(scale, offset):
    x, y, xq = _data()
    base = DeepKernelGP.fit(x, y).posterior(xq[:, None])
    # labels in small units (molar IC50) or on a large offset counted as tied: sd taken as 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = DeepKernelGP.fit(x, y * scale + offset)
    sd = float(y.std(0, correction=0))
    assert float(model.outcome_transform.stdvs) == pytest.approx(sd * scale, rel=1e-9)
    with torch.no_grad():
        post = model.posterior(xq[:, None])
    torch.testing.assert_close(post.mean, base.mean * scale + offset, rtol=1e-6, atol=0)
    floored = [w for w in caught if "min_variance" in str(w.message)]
    if scale < 1e-3:  # gpytorch rounds variances under 1e-10 up: said at fit time
        assert floored
    else:
        assert not floored
        torch.testing.assert_close(post.variance, base.variance * scale**2, rtol=1e-6, atol=0)
    tied = encode_labels(torch.full((1, 4), 0.1, dtype=torch.float32), "regression")
    assert float(tied[2]) == 1.0  # equal labels keep the prior's scale


def test_a_train_mode_encoder_is_fitted_as_posterior_reads_it_and_left_untouched():
    from probrec.backbone import MLPEncoder

    x, y, xq = _data()
    enc = MLPEncoder(5, (16,), 4, seed=0, norm="batch", dropout=0.3)  # train mode
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    model = DeepKernelGP.fit(x, y, encoder=enc)
    assert enc.training and all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())
    want = DeepKernelGP.fit(x, y, encoder=enc.eval())  # fitted on train-mode features before
    with torch.no_grad():
        torch.testing.assert_close(
            model.posterior(xq[:, None]).mean, want.posterior(xq[:, None]).mean, rtol=0, atol=0
        )


def test_conditioning_after_a_direct_posterior_and_checked_candidates():
    x, y, xq = _data()
    model = DeepKernelGP.fit(x, y)
    with torch.no_grad():
        model.posterior(xq[:3, None])  # the q = 1 path built no gpytorch caches
        cond = model.condition_on_observations(xq[:2], torch.ones(2, 1, dtype=torch.float64))
        post = cond.posterior(xq[:2, None])
    assert float(post.variance.max()) < float(model.posterior(xq[:2, None]).variance.min())
    with pytest.raises(ValueError, match="X has dtype torch.float32 but the model's is"):
        model.posterior(xq[:, None].float())
    forest = ForestModel.fit(x, y, n_estimators=5)
    with pytest.raises(ValueError, match=r"\['bootstrap'\] cannot be set"):
        ForestModel.fit(x, y, bootstrap=False)
    from sklearn.ensemble import RandomForestRegressor

    two = RandomForestRegressor(n_estimators=3).fit(x.numpy(), torch.cat([y, y], 1).numpy())
    with pytest.raises(ValueError, match="one output"):
        ForestModel(two)
    assert forest.posterior(xq[:, None]).mean.shape == (40, 1, 1)
