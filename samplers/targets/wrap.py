"""Wrapping any user callable ``log_prob(x[n, d]) -> [n]`` as a target."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from probrec.checks import check_positive_int

from .base import Target, _generator

__all__ = ["CallableTarget", "from_log_prob"]


class CallableTarget(Target):
    """A target defined by user functions (see :func:`from_log_prob`)."""

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        dim: int,
        grad_fn: Callable[[Tensor], Tensor] | None = None,
        sample_fn: Callable[[int, torch.Generator], Tensor] | None = None,
        init_fn: Callable[[int, torch.Generator], Tensor] | None = None,
        name: str = "custom",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        for arg, val in (("grad_fn", grad_fn), ("sample_fn", sample_fn), ("init_fn", init_fn)):
            if val is not None and not callable(val):
                raise TypeError(f"{arg} must be callable or None, got {type(val).__name__}")
        super().__init__(dim)
        self.fn, self.grad_fn, self.sample_fn, self.init_fn = fn, grad_fn, sample_fn, init_fn
        self.name = name

    def _check_out(self, out: object, x: Tensor, what: str) -> Tensor:
        if not isinstance(out, Tensor):
            raise TypeError(
                f"target {self.name!r}: {what} must return a torch.Tensor, got {type(out).__name__}"
            )
        want = (x.shape[0],) if what == "log_prob" else tuple(x.shape)
        if tuple(out.shape) != want:
            raise ValueError(
                f"target {self.name!r}: {what} must return shape {want} for input of shape "
                f"{tuple(x.shape)}, got {tuple(out.shape)}"
            )
        return out

    def log_prob(self, x: Tensor) -> Tensor:
        return self._check_out(self.fn(x), x, "log_prob")

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.grad_fn is None:
            return super().log_prob_and_grad(x)
        with torch.no_grad():
            lp = self.log_prob(x)
            g = self._check_out(self.grad_fn(x), x, "grad_fn")
        return lp, g

    def sample(self, n: int, seed: int | torch.Generator | None = None) -> Tensor:
        if self.sample_fn is None:
            raise NotImplementedError(
                f"target {self.name!r} has no exact sampler (pass sample_fn=)"
            )
        n = check_positive_int(n, "n")
        return self._check_out(
            self.sample_fn(n, _generator(seed, torch.device("cpu"))),
            torch.empty(n, self.dim),
            "sample_fn",
        )

    @property
    def has_exact_sampler(self) -> bool:
        return self.sample_fn is not None

    def init_positions(self, n: int, generator: torch.Generator) -> Tensor:
        if self.init_fn is None:
            return super().init_positions(n, generator)
        return self._check_out(self.init_fn(n, generator), torch.empty(n, self.dim), "init_fn")


def from_log_prob(
    fn: Callable[[Tensor], Tensor],
    dim: int,
    *,
    grad_fn: Callable[[Tensor], Tensor] | None = None,
    sample_fn: Callable[[int, torch.Generator], Tensor] | None = None,
    init_fn: Callable[[int, torch.Generator], Tensor] | None = None,
    name: str = "custom",
) -> CallableTarget:
    """Wraps a batched log-density function as a target.

    Args:
        fn: ``log_prob(x)`` mapping a ``n x dim`` tensor to a ``n``-dim tensor (unnormalised;
            ``-inf`` outside the support). Without ``grad_fn`` it must be differentiable by
            torch autograd for the gradient-based samplers.
        dim: dimension of the state space.
        grad_fn: optional ``n x dim -> n x dim`` gradient of ``fn``.
        sample_fn: optional exact sampler ``(n, generator) -> n x dim``.
        init_fn: optional starting states ``(n, generator) -> n x dim`` (default: the origin).
        name: name used in reports.

    Returns:
        A :class:`CallableTarget`. Output shapes are checked on every call.

    Example:
        >>> import torch
        >>> t = from_log_prob(lambda x: -0.5 * (x**2).sum(-1), dim=3)
        >>> t.log_prob_and_grad(torch.ones(2, 3))[1]
        tensor([[-1., -1., -1.],
                [-1., -1., -1.]])
    """
    return CallableTarget(fn, dim, grad_fn=grad_fn, sample_fn=sample_fn, init_fn=init_fn, name=name)
