"""The target abstraction: an unnormalised log-density over ``R^d``, batched over rows.

A target is anything with a ``dim`` and a batched ``log_prob(x[n, d]) -> [n]``. Samplers call
:meth:`Target.log_prob_and_grad`, which targets with a cheap closed-form gradient override (and
then set ``analytic_grad = True``, which lets the samplers compile their step). Targets that can
be sampled exactly implement :meth:`Target.sample`.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from probrec.checks import check_positive_int
from probrec.seeding import check_generator_device, torch_generator

__all__ = ["Target", "check_positions", "check_start", "load_reference_samples"]


class Target(nn.Module, ABC):
    """Base class of targets: ``log p(x)`` up to a constant, batched over rows of ``x``.

    Subclasses implement :meth:`log_prob`; they may override :meth:`log_prob_and_grad` with a
    closed form (then set the class attribute ``analytic_grad = True``), :meth:`sample` when exact
    samples exist and :meth:`init_positions` for a sensible starting distribution.

    Buffers (means, data) live on the module, so ``target.to(device, dtype)`` moves them; the
    methods also cast them to the dtype and device of their input, so ``x`` decides both.

    Attributes:
        dim: dimension ``d`` of the state space.
        name: short name used in reports.
        analytic_grad: ``True`` when :meth:`log_prob_and_grad` is pure tensor code without
            autograd, which samplers may compile with ``torch.compile``.
        log_normalizer: ``log Z`` of ``exp(log_prob)`` when known, else ``None``.
        cpu_compile_min_row_evals: for a target on the CPU, the rows of evaluations (chains x
            evaluations per chain) from which ``compile="auto"`` compiles a sampler's step;
            ``None``: the sampler's own threshold. Cheap closed forms set it high: on a CPU
            their eager step is already fast, so compilation (8-60 s per step function with
            TorchInductor, most of it on the first run before its disk cache is warm) pays
            only on very long runs.
    """

    name: str = "target"
    analytic_grad: bool = False
    log_normalizer: float | None = None
    cpu_compile_min_row_evals: int | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        # every log_prob / log_prob_and_grad a subclass defines checks the width of its input:
        # a [n, d'] batch with d' != dim could otherwise broadcast to finite, wrong densities
        super().__init_subclass__(**kwargs)
        for name in ("log_prob", "log_prob_and_grad"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, _width_checked(fn))

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        # constants derived from the buffers are derived again from loaded ones
        self.register_load_state_dict_post_hook(_rederive)

    def _derive(self) -> None:  # noqa: B027 - optional hook
        """Recomputes constants derived from the buffers (after ``load_state_dict``)."""

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised log-density.

        Args:
            x: a ``n x d`` tensor of states.

        Returns:
            A ``n``-dim tensor of log-densities (``-inf`` outside the support).
        """

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    def energy(self, x: Tensor) -> Tensor:
        """``-log_prob(x)``: the energy used in energy histograms (``n x d`` -> ``n``)."""
        return -self.log_prob(x)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log-density and its gradient with respect to ``x``.

        The default uses autograd on ``log_prob(x).sum()``, which is exact for targets whose
        rows do not interact. Subclasses with a cheap closed form override it.

        Args:
            x: a ``n x d`` tensor.

        Returns:
            ``(log_prob, grad)`` with shapes ``n`` and ``n x d``, both detached.

        Raises:
            TypeError: ``log_prob`` is not differentiable by autograd.
        """
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            lp = self.log_prob(xr)
            if not lp.requires_grad:
                raise TypeError(
                    f"the log_prob of target {self.name!r} does not depend differentiably on x "
                    "(torch autograd sees no graph); give the target a gradient (grad_fn= in "
                    "from_log_prob) or use a gradient-free sampler (RandomWalkMetropolis)"
                )
            (grad,) = torch.autograd.grad(lp.sum(), xr)
        return lp.detach(), grad.detach()

    @property
    def has_exact_sampler(self) -> bool:
        """Whether :meth:`sample` draws exact samples."""
        return type(self).sample is not Target.sample

    def sample(self, n: int, seed: int | torch.Generator | None = None) -> Tensor:
        """Exact samples from the normalised target (``n x d``), where they exist."""
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")

    def init_positions(self, n: int, generator: torch.Generator) -> Tensor:
        """Default starting states of ``n`` chains (``n x d``); the origin unless overridden."""
        return torch.zeros(n, self.dim, dtype=self._dtype(), device=self._device())

    def _dtype(self) -> torch.dtype:
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype
        return torch.get_default_dtype()

    def _device(self) -> torch.device:
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _rederive(module: Target, _incompatible_keys: object) -> None:
    """``load_state_dict`` post-hook (a module-level function: a target stays picklable)."""
    module._derive()


def _width_checked(fn: Callable) -> Callable:
    """``fn(self, x, ...)`` that first checks that a tensor ``x`` is floating and ``(n, self.dim)``
    (a 1-D or 3-D ``x`` reached torch errors or, for some targets, a silently wrong shape)."""
    if getattr(fn, "_checks_width", False):
        return fn

    @functools.wraps(fn)
    def checked(self: Target, x: Tensor, *args, **kwargs):
        if isinstance(x, Tensor):
            if x.dim() != 2 or x.shape[1] != self.dim:
                raise ValueError(
                    f"x must have shape (n, {self.dim}) for target {self.name!r}, got "
                    f"{tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise TypeError(
                    f"x must be a floating tensor for target {self.name!r}, got dtype {x.dtype}"
                )
        return fn(self, x, *args, **kwargs)

    checked._checks_width = True  # type: ignore[attr-defined]
    return checked


def _generator(seed: int | torch.Generator | None, device: torch.device) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return check_generator_device(seed, device)
    return torch_generator(seed, device=device)


def check_positions(x: Tensor, dim: int, name: str = "x") -> Tensor:
    """Checks that ``x`` is a floating ``n x dim`` tensor and returns it.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: wrong shape.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {tuple(x.shape)}")
    return x


def check_start(target: Target, x: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Validates a target at the starting states of the chains.

    Evaluates the target once at ``x`` and checks the output: its shape must be ``n`` and every
    value (and gradient, when ``need_grad``) finite, so that a bad target fails at once with a
    message instead of producing silent NaN later.

    Args:
        target: the target.
        x: a ``n x d`` tensor of starting states.
        need_grad: also evaluate and check the gradient.

    Returns:
        ``(log_prob, grad)`` at ``x`` (``grad`` is ``None`` when not needed).

    Raises:
        TypeError: ``target`` is not a :class:`Target`.
        ValueError: wrong output shape or non-finite values at the start.
    """
    if not isinstance(target, Target):
        raise TypeError(
            f"target must be a samplers.targets.Target (wrap a function with "
            f"samplers.targets.from_log_prob(fn, dim)), got {type(target).__name__}"
        )
    check_positions(x, target.dim, "initial positions")
    n = x.shape[0]
    if need_grad:
        lp, grad = target.log_prob_and_grad(x)
    else:
        lp, grad = target.log_prob(x), None
    if not isinstance(lp, Tensor) or lp.shape != (n,):
        shape = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
        raise ValueError(
            f"target {target.name!r}: log_prob must return a tensor of shape ({n},) for "
            f"{n} states, got {shape}"
        )
    bad = ~torch.isfinite(lp)
    if bool(bad.any()):
        raise ValueError(
            f"target {target.name!r}: log_prob is non-finite at {int(bad.sum())} of {n} "
            f"starting states (first: {x[bad][0].tolist()[:6]}); start the chains inside the "
            "support (init=...)"
        )
    if grad is not None:
        if grad.shape != x.shape:
            raise ValueError(
                f"target {target.name!r}: the gradient must have shape {tuple(x.shape)}, "
                f"got {tuple(grad.shape)}"
            )
        gbad = ~torch.isfinite(grad).all(-1)
        if bool(gbad.any()):
            raise ValueError(
                f"target {target.name!r}: the gradient is non-finite at {int(gbad.sum())} of "
                f"{n} starting states"
            )
    return lp.detach(), grad


def load_reference_samples(path: str | Path, dim: int | None = None) -> Tensor:
    """Loads reference samples from a ``.npy`` / ``.pt`` file as a ``n x d`` float tensor.

    Args:
        path: file path (``.npy`` arrays or ``.pt`` tensors; ``n x d`` or ``n x particles x s``).
        dim: expected ``d`` (checked when given).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the array does not reshape to ``n x dim``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference samples file {path} does not exist")
    if path.suffix == ".pt":
        arr = torch.load(path, map_location="cpu", weights_only=True)
        t = torch.as_tensor(arr)
    else:
        t = torch.from_numpy(np.load(path))
    t = t.reshape(t.shape[0], -1).to(torch.get_default_dtype())
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"reference samples in {path} have dimension {t.shape[1]}, expected {dim}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"reference samples in {path} contain non-finite values")
    return t


LOG_2PI = math.log(2 * math.pi)
