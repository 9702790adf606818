"""Geometric parameterization: coordinates, layer equivalence, gradients, wide inputs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from probrec.backbone.gmp import (
    GmPLinear,
    cartesian_to_hyperspherical,
    hyperspherical_to_cartesian,
)

WIDE = 2048 + 217  # Morgan counts + RDKit descriptors


def _reference_unit(angles: np.ndarray) -> np.ndarray:
    """Textbook n-sphere coordinates, one component at a time (independent of the scan)."""
    n = len(angles) + 1
    u = np.empty(n)
    s = 1.0
    for k in range(n - 1):
        u[k] = s * math.cos(angles[k])
        s *= math.sin(angles[k])
    u[n - 1] = s
    return u


def test_three_dimensional_closed_form() -> None:
    a, b = 0.7, -2.1
    u = hyperspherical_to_cartesian(torch.tensor([a, b], dtype=torch.float64))
    expected = [math.cos(a), math.sin(a) * math.cos(b), math.sin(a) * math.sin(b)]
    np.testing.assert_allclose(u.numpy(), expected, rtol=0, atol=1e-15)


def test_unit_norm_for_any_real_angles_and_reference_formula() -> None:
    g = torch.Generator().manual_seed(0)
    angles = (torch.rand(4, 49, generator=g, dtype=torch.float64) - 0.5) * 40  # far outside [0, pi]
    u = hyperspherical_to_cartesian(angles)
    np.testing.assert_allclose(u.norm(dim=-1).numpy(), 1.0, atol=1e-13)
    for row in range(4):
        np.testing.assert_allclose(u[row].numpy(), _reference_unit(angles[row].numpy()), atol=1e-13)
    r = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    np.testing.assert_allclose(
        hyperspherical_to_cartesian(angles, r).numpy(), (r[:, None] * u).numpy(), atol=1e-13
    )


@pytest.mark.parametrize("n", [2, 3, 10, 300])
def test_round_trip_and_angle_ranges(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    w = (
        torch.randn(6, n, generator=g, dtype=torch.float64)
        * 10.0 ** torch.randint(-150, 150, (6, 1), generator=g).double()
    )
    radius, angles = cartesian_to_hyperspherical(w)
    np.testing.assert_allclose(radius.numpy(), np.linalg.norm(w.numpy(), axis=1), rtol=1e-13)
    assert bool((angles[:, :-1] >= 0).all()) and bool((angles[:, :-1] <= math.pi).all())
    assert bool((angles[:, -1] > -math.pi).all()) and bool((angles[:, -1] <= math.pi).all())
    back = hyperspherical_to_cartesian(angles, radius)
    rel = (back - w).norm(dim=1) / w.norm(dim=1)
    assert float(rel.max()) < 1e-13


def test_round_trip_special_vectors() -> None:
    w = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # zero vector
            [0.0, 0.0, 0.0, -3.0],  # only the last component
            [2.0, 0.0, 0.0, 0.0],  # only the first: tail exactly zero
            [0.0, -1.0, 0.0, 0.0],
            [1e-300, -1e-300, 0.0, 1e-300],
        ],  # squares underflow without rescaling
        dtype=torch.float64,
    )
    radius, angles = cartesian_to_hyperspherical(w)
    assert bool(torch.isfinite(angles).all())
    assert float(radius[0]) == 0.0
    back = hyperspherical_to_cartesian(angles, radius)
    assert torch.equal(back[0], w[0])
    # relative to each row's size (cos(pi/2) is 6e-17, not 0; norms of 1e-300 rows underflow)
    err = (back - w).abs().amax(dim=1)[1:] / w.abs().amax(dim=1)[1:]
    assert float(err.max()) < 1e-15


def test_one_dimensional_input_keeps_sign() -> None:
    w = torch.tensor([[-2.5], [0.0], [4.0]], dtype=torch.float64)
    radius, angles = cartesian_to_hyperspherical(w)
    assert angles.shape == (3, 0)
    np.testing.assert_array_equal(radius.numpy(), [-2.5, 0.0, 4.0])
    np.testing.assert_array_equal(hyperspherical_to_cartesian(angles, radius).numpy(), w.numpy())


def test_non_finite_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        cartesian_to_hyperspherical(torch.tensor([[1.0, float("nan")]]))


@pytest.mark.parametrize("in_features,bias", [(1, True), (2, True), (17, False), (40, True)])
def test_from_linear_computes_the_same_function(in_features: int, bias: bool) -> None:
    torch.manual_seed(in_features)
    lin = nn.Linear(in_features, 7, bias=bias).double()
    gmp = GmPLinear.from_linear(lin)
    assert gmp.angles.shape == (7, in_features - 1) and gmp.radius.shape == (7,)
    assert (gmp.offset is None) == (not bias)
    x = torch.randn(11, in_features, dtype=torch.float64)
    np.testing.assert_allclose(gmp(x).detach().numpy(), lin(x).detach().numpy(), atol=1e-13)
    back = gmp.to_linear()
    np.testing.assert_allclose(
        back.weight.detach().numpy(), lin.weight.detach().numpy(), atol=1e-15
    )
    if bias:
        np.testing.assert_allclose(
            back.bias.detach().numpy(), lin.bias.detach().numpy(), atol=1e-15
        )
    # the layer's own view of the equivalent parameters
    np.testing.assert_allclose(gmp.weight.detach().numpy(), lin.weight.detach().numpy(), atol=1e-15)


def test_activation_boundary_does_not_depend_on_radius() -> None:
    """For ReLU units, scaling the radius scales the output but moves no boundary."""
    torch.manual_seed(0)
    gmp = GmPLinear(5, 4).double()
    x = torch.randn(200, 5, dtype=torch.float64)
    active = torch.relu(gmp(x)) > 0
    with torch.no_grad():
        gmp.radius.mul_(torch.tensor([0.1, 3.0, 7.0, 0.5], dtype=torch.float64))
    assert torch.equal(torch.relu(gmp(x)) > 0, active)


def test_zero_row_with_bias_is_rejected_and_without_bias_accepted() -> None:
    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight[1] = 0.0
        lin.bias[1] = 0.5
    with pytest.raises(ValueError, match="weight row 1 is zero"):
        GmPLinear.from_linear(lin)
    with torch.no_grad():
        lin.bias[1] = 0.0
    gmp = GmPLinear.from_linear(lin)
    x = torch.randn(4, 3, dtype=torch.float64)
    np.testing.assert_allclose(gmp(x).detach().numpy(), lin(x).detach().numpy(), atol=1e-14)
    with torch.no_grad():  # offset bias / norm = inf gave inf outputs where Linear gave 1e9
        lin.weight[1] = torch.tensor([1e-30, 0.0, 0.0])
        lin.bias[1] = 1e9
    with pytest.raises(ValueError, match="weight row 1 .* is too small for bias"):
        GmPLinear.from_linear(lin.float())


def test_from_linear_type_and_shape_errors() -> None:
    with pytest.raises(TypeError, match="nn.Linear"):
        GmPLinear.from_linear(nn.Conv1d(2, 2, 1))
    layer = GmPLinear(3, 2)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer.set_standard_parameters(torch.zeros(3, 3), torch.zeros(2))


def test_seeded_initialisation_is_reproducible_and_matches_linear_distribution() -> None:
    a = GmPLinear(30, 200, generator=torch.Generator().manual_seed(5))
    b = GmPLinear(30, 200, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.angles, b.angles) and torch.equal(a.radius, b.radius)
    w = a.weight.detach()
    bound = 1 / math.sqrt(30)
    assert float(w.abs().max()) <= bound * (1 + 1e-5)
    # uniform on [-bound, bound] has variance bound^2 / 3
    assert abs(float(w.var()) / (bound**2 / 3) - 1) < 0.05


def test_gradcheck_of_the_parameterisation() -> None:
    """Finite differences against autograd for angles, radius, offset and inputs."""
    torch.manual_seed(1)
    layer = GmPLinear(6, 3).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in layer.named_parameters()}
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def f(angles, radius, offset, inputs):
        out = torch.func.functional_call(
            layer, {"angles": angles, "radius": radius, "offset": offset}, (inputs,)
        )
        return torch.tanh(out)

    assert torch.autograd.gradcheck(
        f, (params["angles"], params["radius"], params["offset"], x), eps=1e-6, atol=1e-7
    )


def test_second_derivatives() -> None:
    """Double backward (Hessian-vector products, e.g. for implicit hypergradients) is exact."""
    torch.manual_seed(3)
    layer = GmPLinear(5, 2).double()
    x = torch.randn(3, 5, dtype=torch.float64)

    def f(angles, radius):
        out = torch.func.functional_call(
            layer, {"angles": angles, "radius": radius}, (x,), strict=False
        )
        return torch.tanh(out)

    inputs = (
        layer.angles.detach().clone().requires_grad_(True),
        layer.radius.detach().clone().requires_grad_(True),
    )
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_wide_layer_float32_accuracy_and_function_match() -> None:
    """At 2265 inputs the float32 mapping stays within float32 precision of float64."""
    torch.manual_seed(0)
    with torch.no_grad():
        _check_wide_float32()


def _check_wide_float32() -> None:
    lin64 = nn.Linear(WIDE, 64).double()
    gmp64 = GmPLinear.from_linear(lin64)
    x = torch.randn(32, WIDE, dtype=torch.float64)
    err64 = (gmp64(x) - lin64(x)).abs().max().item()
    assert err64 < 1e-11
    gmp32 = GmPLinear.from_linear(copy.deepcopy(lin64).float())
    u32 = gmp32.direction.detach().double()
    u64 = hyperspherical_to_cartesian(gmp32.angles.detach().double())  # same angles, float64
    assert float((u32.norm(dim=1) - 1).abs().max()) < 5e-6
    assert float((u32 - u64).norm(dim=1).max()) < 5e-6  # float32 sines: about 2.4e-6
    w_rel = (gmp32.weight.detach().double() - lin64.weight).norm(dim=1) / lin64.weight.norm(dim=1)
    assert float(w_rel.max()) < 1e-5
    y32 = gmp32(x.float()).double()
    scale = lin64(x).abs().max().item()
    assert (y32 - lin64(x)).abs().max().item() / scale < 1e-5


def test_wide_layer_directional_derivative_matches_finite_difference() -> None:
    """Central differences in float64 at 2265 inputs along a random direction of the angles."""
    torch.manual_seed(2)
    layer = GmPLinear(WIDE, 8).double()
    x = torch.randn(16, WIDE, dtype=torch.float64)
    target = torch.randn(16, 8, dtype=torch.float64)

    def loss(angles: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(layer, {"angles": angles}, (x,), strict=False)
        return ((torch.relu(out) - target) ** 2).mean()

    a = layer.angles.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(a), a)
    assert bool(torch.isfinite(grad).all())
    v = torch.randn_like(a)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(a + h * v) - loss(a - h * v)) / (2 * h)
    ad = (grad * v).sum()
    assert abs(float(fd - ad)) <= 1e-6 * abs(float(ad)) + 1e-10


def test_gradient_exact_when_a_sine_is_tiny_or_zero() -> None:
    """d u_n / d theta_0 = cos(theta_0) prod_{j>0} sin(theta_j), even when sin(theta_0) ~ 0.

    A float32 cumulative product's backward (division by the factors) returns 0.14 or 0
    here instead of 0.09.
    """
    n = WIDE
    rest = torch.full((n - 2,), math.pi / 2, dtype=torch.float32)
    rest[:2] = math.asin(0.3)
    for theta0 in (0.0, 1e-44, 3e-45, 1e-30):
        angles = torch.cat([torch.tensor([theta0], dtype=torch.float32), rest])
        angles.requires_grad_(True)
        u = hyperspherical_to_cartesian(angles)
        (g,) = torch.autograd.grad(u[-1], angles)
        expected = math.cos(theta0) * 0.3 * 0.3
        assert abs(float(g[0]) - expected) < 1e-6, (theta0, float(g[0]))
        assert bool(torch.isfinite(g).all())
