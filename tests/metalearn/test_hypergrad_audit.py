"""Audit checks of the implicit hypergradient: the conjugate-gradient iteration cap."""

import pytest
import torch

from metalearn.hypergrad import conjugate_gradient, implicit_argmin


def _inner(th, ph):
    return ((th - ph**2) ** 2).sum()  # theta* = phi^2, so dtheta*/dphi = 2 phi


def test_cg_solver_gives_the_implicit_derivative_and_refuses_no_iterations():
    """``cg_max_iter=0`` (or negative) ran no iteration and solved ``H w = v`` with ``w = 0``:
    dtheta*/dphi came out 0.0 instead of 4.0, a hypergradient silently without the IFT term."""
    phi = torch.tensor([2.0], requires_grad=True)
    th = implicit_argmin(_inner, (phi**2).detach(), [phi], solver="cg", cg_max_iter=1)
    th.sum().backward()
    assert float(phi.grad) == pytest.approx(4.0)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="cg_max_iter"):
            implicit_argmin(_inner, (phi**2).detach(), [phi], solver="cg", cg_max_iter=bad)
        with pytest.raises(ValueError, match="max_iter"):
            conjugate_gradient(lambda v: 2 * v, torch.ones(3), max_iter=bad)
    with pytest.raises(TypeError, match="cg_max_iter"):
        implicit_argmin(_inner, (phi**2).detach(), [phi], solver="cg", cg_max_iter=2.5)
