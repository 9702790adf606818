"""Inputs a GP head must treat specially: supports without information, half precision,
classification labels other than 0 / 1.

Regression supports with no information on the signal (one point, or equal labels): their
targets encode to exact zeros, whose marginal likelihood grows without bound as the
outputscale shrinks: fitted, the head ended (unconverged) at an outputscale near 0 and was
certain of its mean at any distance from the data. Such a task keeps the prior modes instead.
"""

from __future__ import annotations

import gpytorch
import pytest
import torch

from probrec.gp import GPConfig, GPHead
from probrec.gp.bo_models import DeepKernelGP
from probrec.gp.head import encode_labels


def _z(n: int = 12, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("labels", [torch.full((12,), 3.0), torch.tensor([2.0])])
def test_constant_support_keeps_the_prior_scale(labels: torch.Tensor) -> None:
    z = _z(len(labels))
    gp = GPHead(GPConfig(kind="regression")).fit(z, labels.double())
    hp = gp.hyperparameters()
    assert float(hp["outputscale"]) == 1.0 and float(hp["noise"]) == pytest.approx(0.01)
    assert bool(gp.fit.converged.all()) and bool(gp.fit.held.all())
    assert "1 held at the prior" in gp.fit.summary()
    far = 100 * _z(3, seed=1)
    mean, var = gp.predict(far)
    torch.testing.assert_close(mean, torch.full((3,), float(labels[0]), dtype=torch.float64))
    # far from the support: the prior variance (outputscale 1) plus the noise, not the noise
    torch.testing.assert_close(var, torch.full((3,), 1.0 + float(hp["noise"]), dtype=torch.float64))
    # the same GP computed by gpytorch at the held hyperparameters
    model, lik = gp.to_gpytorch()
    with torch.no_grad(), gpytorch.settings.fast_computations(False, False, False):
        out = lik(model(far))
    torch.testing.assert_close(out.variance * gp.scale**2, var, rtol=1e-8, atol=1e-10)


def test_tied_labels_encode_to_exact_zeros_even_where_their_mean_rounds() -> None:
    # 0.1 three times: the float mean is not exactly 0.1, residuals would be ~1e-17; 1e8 + 0.3
    # in float32: residuals of an ulp (8) in the labels' units, read as real signal before
    for y in (torch.full((1, 3), 0.1, dtype=torch.float64), torch.full((1, 6), 1e8 + 0.3)):
        t, shift, scale = encode_labels(y, "regression")
        assert bool((t == 0).all()) and float(scale[0]) == 1.0


def test_a_batch_fits_its_informative_tasks_as_alone() -> None:
    z = _z()
    y = torch.stack([torch.full((12,), 3.0, dtype=torch.float64), _z(12, 1, seed=2)[:, 0]])
    both = GPHead(GPConfig(kind="regression")).fit(torch.stack([z, z]), y)
    alone = GPHead(GPConfig(kind="regression")).fit(z, y[1])
    torch.testing.assert_close(both.theta[1], alone.theta[0], rtol=0, atol=0)
    assert both.fit.held.tolist() == [True, False] and alone.fit.held is None
    assert int(both.fit.n_iter[0]) == 0 and int(both.fit.n_iter[1]) > 0


def test_botorch_model_on_constant_observations_is_not_certain() -> None:
    x = _z(20)
    model = DeepKernelGP.fit(x, torch.full((20, 1), 2.0, dtype=torch.float64))
    with torch.no_grad():
        post = model.posterior(100 * _z(4, seed=3)[:, None])
    assert bool((post.variance > 0.5).all())  # was ~2.5e-8: every acquisition saw an oracle


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_features_are_refused_by_name(dtype: torch.dtype) -> None:
    # were fitted (silently unconverged), then predict failed inside torch's Cholesky
    with pytest.raises(TypeError, match="z_s must be float32 or float64"):
        GPHead(GPConfig(kind="regression")).fit(_z().to(dtype), _z(12, 1)[:, 0].to(dtype))


@pytest.mark.parametrize("labels", [[0.0, 2.0], [-1.0, 1.0]])
def test_classification_labels_other_than_0_1_are_named_before_the_class_count(labels) -> None:
    # {0, 2} was reported as a single-class support; {-1, 1} did not name y_s
    y = torch.tensor(labels * 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="y_s must hold 0/1 labels"):
        GPHead(GPConfig()).fit(_z(), y)
