"""Step-size adaptation by dual averaging (Nesterov, 2009; Hoffman & Gelman, 2014, Alg. 5).

Step sizes are adapted per *group* of chains, not per chain: all chains of a plain sampler share
one step size (one group), parallel tempering has one group per temperature and DiGS one per
noise level. Each update uses the acceptance probability averaged over the chains of a group,
which is far less noisy than a single chain's and keeps every chain on the same kernel. After
warm-up the step size is frozen at the dual-averaging iterate ``exp(log_eps_bar)``.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from probrec.checks import check_real

__all__ = ["DualAveraging", "check_target_accept"]


def check_target_accept(target_accept: float | None, default: float | None = None) -> float:
    """Validates an acceptance rate for step-size adaptation (``None`` gives ``default``)."""
    value = float(default if target_accept is None else target_accept)
    if not 0.0 < value < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {value}")
    return value


class DualAveraging:
    """Dual-averaging adaptation of ``G`` log step sizes towards a target acceptance rate.

    The update for a group with mean acceptance ``a_t`` at its ``t``-th update is

    .. math::
        \\bar h_t = (1 - \\tfrac{1}{t + t_0}) \\bar h_{t-1} + \\tfrac{1}{t + t_0} (\\delta - a_t),
        \\quad \\log \\epsilon_t = \\mu - \\tfrac{\\sqrt t}{\\gamma} \\bar h_t,
        \\quad \\log \\bar\\epsilon_t = t^{-\\kappa} \\log \\epsilon_t
        + (1 - t^{-\\kappa}) \\log \\bar\\epsilon_{t-1},

    with ``mu = log(10 eps_0)``.

    Args:
        initial: a ``G``-dim tensor (or float) of starting step sizes ``eps_0``.
        target_accept: the target acceptance rate ``delta``.
        gamma, t0, kappa: the usual constants (0.05, 10, 0.75).
    """

    def __init__(
        self,
        initial: Tensor | float,
        target_accept: float,
        gamma: float = 0.05,
        t0: float = 10.0,
        kappa: float = 0.75,
    ) -> None:
        target_accept = check_target_accept(target_accept)
        eps0 = torch.as_tensor(initial, dtype=torch.float64).reshape(-1).clone()
        if bool((eps0 <= 0).any()) or not bool(torch.isfinite(eps0).all()):
            raise ValueError("initial step sizes must be positive and finite")
        self.target_accept = float(target_accept)
        self.gamma = check_real(gamma, "gamma", strict=True)
        self.t0 = check_real(t0, "t0")
        self.kappa = check_real(kappa, "kappa", strict=True)
        if self.kappa > 1.0:
            raise ValueError(f"kappa must be in (0, 1], got {kappa}")
        self.mu = torch.log(10 * eps0)
        self.log_eps = torch.log(eps0)
        self.log_eps_bar = torch.zeros_like(eps0)
        self.h_bar = torch.zeros_like(eps0)
        self.t = torch.zeros_like(eps0)

    @property
    def n_groups(self) -> int:
        return self.log_eps.shape[0]

    def step_size(self) -> Tensor:
        """Current step sizes (``G``, float64) during warm-up."""
        return torch.exp(self.log_eps)

    def final_step_size(self) -> Tensor:
        """Step sizes after warm-up (``G``): the averaged iterate, or the current one for groups
        that were never updated."""
        return torch.where(self.t > 0, torch.exp(self.log_eps_bar), torch.exp(self.log_eps))

    def update(self, accept_rate: Tensor | float, group: int | None = None) -> None:
        """Updates with mean acceptance ``accept_rate`` (``G``-dim or one value for all groups,
        or one value for ``group``).

        A non-finite acceptance value (no chain in its group) leaves that group unchanged; the
        other groups are updated.

        Raises:
            ValueError: ``accept_rate`` has neither 1 nor ``G`` values (one with ``group``), or
                ``group`` is not a group index.
        """
        a = torch.as_tensor(accept_rate, dtype=torch.float64).reshape(-1).cpu()
        g = self.n_groups
        if group is None:
            if a.numel() not in (1, g):
                raise ValueError(
                    f"accept_rate must have 1 or {g} values (one per group), got {a.numel()}"
                )
            idx = torch.arange(g)
            a = a.expand(g)
        else:
            try:
                gi = None if isinstance(group, bool) else operator.index(group)
            except TypeError:
                gi = None
            if gi is None or not 0 <= gi < g:
                raise ValueError(f"group must be an int in [0, {g}), got {group!r}")
            if a.numel() != 1:
                raise ValueError(f"accept_rate for one group must be one value, got {a.numel()}")
            idx = torch.tensor([gi])
        # a group whose chains gave no value keeps its state (before, one NaN group skipped
        # the update of every group)
        ok = torch.isfinite(a)
        if not bool(ok.any()):
            return
        idx, a = idx[ok], a[ok]
        t = self.t[idx] + 1
        eta = 1.0 / (t + self.t0)
        h = (1 - eta) * self.h_bar[idx] + eta * (self.target_accept - a)
        log_eps = self.mu[idx] - torch.sqrt(t) / self.gamma * h
        w = t.pow(-self.kappa)
        self.log_eps_bar[idx] = w * log_eps + (1 - w) * self.log_eps_bar[idx]
        self.log_eps[idx] = log_eps
        self.h_bar[idx] = h
        self.t[idx] = t
