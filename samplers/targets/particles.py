"""Particle systems: the 4-particle double well (DW-4) and Lennard-Jones clusters (LJ-13, LJ-55).

Definitions follow Koehler et al. (2020) and Akhound-Sadegh et al. (DEM, ICML 2024):

- DW-4: ``E(x) = sum_{i<j} 0.9 (r_ij - 4)^4 - 4 (r_ij - 4)^2`` for 4 particles in 2-D.
- LJ-n: ``E(x) = sum_{i != j} r_ij^-12 - 2 r_ij^-6 + 0.5 sum_i ||x_i - mean(x)||^2`` in 3-D (the
  sum runs over ordered pairs, so each pair is counted twice, as in the reference code).

Both energies are invariant to translations, so ``exp(-E)`` is not normalisable along the
centre of mass ``c = mean_i x_i``. The targets add a Gaussian on the centre of mass,
``-0.5 n ||c||^2 / com_scale^2``, which the energy does not see: energies and interatomic
distances are distributed exactly as under ``exp(-E)`` restricted to the centre-of-mass-free
subspace. :meth:`energy` returns the physical energy ``E`` (without that term).
Gradients are closed-form.
"""

from __future__ import annotations

import itertools
import math
from abc import abstractmethod
from pathlib import Path

import torch
from torch import Tensor

from probrec.checks import check_positive_int, check_real

from .base import Target, load_reference_samples

__all__ = ["ParticleSystem", "DoubleWell4", "LennardJones", "interatomic_distances"]


def interatomic_distances(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Distances of all unordered particle pairs.

    Args:
        x: a ``n x (n_particles * spatial_dim)`` tensor of flattened coordinates.
        n_particles: particles per configuration.
        spatial_dim: coordinates per particle.

    Returns:
        A ``n x (n_particles (n_particles - 1) / 2)`` tensor of distances ``r_ij``, ``i < j``.
    """
    if x.shape[-1] != n_particles * spatial_dim:
        raise ValueError(
            f"x must have {n_particles * spatial_dim} columns ({n_particles} particles x "
            f"{spatial_dim}), got {x.shape[-1]}"
        )
    p = x.reshape(x.shape[0], n_particles, spatial_dim)
    i, j = torch.triu_indices(n_particles, n_particles, offset=1, device=x.device)
    return (p[:, i] - p[:, j]).norm(dim=-1)


class ParticleSystem(Target):
    """Base of pairwise-interacting particle systems with a centre-of-mass Gaussian.

    Subclasses give the pair energy ``pair_energy(r)`` and its derivative ``pair_denergy(r)``
    (both elementwise over a tensor of distances), and optionally a one-body term.

    Args:
        n_particles: number of particles.
        spatial_dim: coordinates per particle.
        com_scale: standard deviation of the centre-of-mass Gaussian (see module docstring).
        reference_path: optional ``.npy`` file of reference samples (see
            :meth:`reference_samples`).
    """

    analytic_grad = True
    pair_multiplicity: float = 1.0  # 2.0 when the energy sums over ordered pairs

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        com_scale: float = 1.0,
        reference_path: str | Path | None = None,
    ) -> None:
        self.n_particles = check_positive_int(n_particles, "n_particles", minimum=2)
        self.spatial_dim = check_positive_int(spatial_dim, "spatial_dim")
        super().__init__(self.n_particles * self.spatial_dim)
        self.com_scale = check_real(com_scale, "com_scale", strict=True)
        self.reference_path = None if reference_path is None else Path(reference_path)
        self.register_buffer("_offdiag", 1.0 - torch.eye(self.n_particles), persistent=False)

    # --- to be provided by subclasses -------------------------------------------------------
    @abstractmethod
    def pair_energy(self, r: Tensor) -> Tensor:
        """Energy of a pair at distance ``r`` (any shape, elementwise)."""

    @abstractmethod
    def pair_denergy(self, r: Tensor) -> Tensor:
        """Derivative of :meth:`pair_energy` with respect to ``r`` (elementwise)."""

    def one_body(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """One-body energy and its gradient for ``n x P x s`` positions (none by default)."""
        return p.new_zeros(p.shape[0]), torch.zeros_like(p)

    # --- shared maths -------------------------------------------------------------------------
    def _pairs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = x.reshape(x.shape[0], self.n_particles, self.spatial_dim)
        diff = p[:, :, None, :] - p[:, None, :, :]  # n x P x P x s
        mask = self._offdiag.to(x)
        r = torch.sqrt((diff * diff).sum(-1) + (1.0 - mask))  # diagonal set to 1 (masked out)
        return p, diff, r, mask

    def energy(self, x: Tensor) -> Tensor:
        """Physical energy ``E(x)`` (``n x d`` -> ``n``), without the centre-of-mass term."""
        p, _, r, mask = self._pairs(x)
        e = 0.5 * self.pair_multiplicity * (self.pair_energy(r) * mask).sum((-1, -2))
        return e + self.one_body(p)[0]

    def _com_term(self, p: Tensor) -> tuple[Tensor, Tensor]:
        c = p.mean(1)  # n x s
        k = 1.0 / self.com_scale**2
        lp = -0.5 * self.n_particles * k * (c * c).sum(-1)
        grad = (-k * c)[:, None, :].expand_as(p)
        return lp, grad

    def log_prob(self, x: Tensor) -> Tensor:
        p = x.reshape(x.shape[0], self.n_particles, self.spatial_dim)
        return -self.energy(x) + self._com_term(p)[0]

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p, diff, r, mask = self._pairs(x)
        e_pair = 0.5 * self.pair_multiplicity * (self.pair_energy(r) * mask).sum((-1, -2))
        e_one, g_one = self.one_body(p)
        coef = self.pair_multiplicity * self.pair_denergy(r) * mask / r  # n x P x P
        grad_e = (coef[..., None] * diff).sum(2) + g_one  # dE/dp_i
        lp_c, g_c = self._com_term(p)
        lp = -(e_pair + e_one) + lp_c
        return lp, (g_c - grad_e).reshape(x.shape)

    def interatomic_distances(self, x: Tensor) -> Tensor:
        """See :func:`interatomic_distances`."""
        return interatomic_distances(x, self.n_particles, self.spatial_dim)

    def reference_samples(self, path: str | Path | None = None) -> Tensor:
        """Loads reference samples (``n x d``) from ``path`` or ``reference_path``."""
        path = path if path is not None else self.reference_path
        if path is None:
            raise ValueError(
                f"no reference samples for {self.name!r}: pass path= or reference_path= "
                "(e.g. ../shared/data/samplers/lj13_reference_10000.npy)"
            )
        return load_reference_samples(path, self.dim)


class DoubleWell4(ParticleSystem):
    """DW-4: 4 particles in 2-D with a double-well pair potential in the distance.

    ``E = sum_{i<j} a (r_ij - r0)^4 + b (r_ij - r0)^2`` with ``a = 0.9``, ``b = -4``, ``r0 = 4``
    (Koehler et al., ICML 2020). Chains start from Gaussian positions of scale 2.

    Args:
        com_scale: see :class:`ParticleSystem`.
        reference_path: optional reference samples (``dw4_reference_10000.npy``).
    """

    # MALA on DW-4, 10,000 chains, one CPU thread: 1.47 us per row eager, 0.31 compiled, 64 s to
    # compile with a cold cache (~8 s warm): pays from ~7M rows (warm) to ~55M (cold). LJ-13
    # (15.4 against 6.0 us per row) keeps the sampler's default
    cpu_compile_min_row_evals = 20_000_000

    def __init__(self, com_scale: float = 1.0, reference_path: str | Path | None = None) -> None:
        super().__init__(4, 2, com_scale, reference_path)
        self.name = "dw4"
        self.a, self.b, self.r0 = 0.9, -4.0, 4.0

    def pair_energy(self, r: Tensor) -> Tensor:
        u = r - self.r0
        u2 = u * u
        return self.a * u2 * u2 + self.b * u2

    def pair_denergy(self, r: Tensor) -> Tensor:
        u = r - self.r0
        return 4 * self.a * u * u * u + 2 * self.b * u

    def init_positions(self, n: int, generator: torch.Generator) -> Tensor:
        """``N(0, 4 I)`` positions (``n x 8``) in the target's dtype."""
        return 2.0 * torch.randn(
            n, self.dim, generator=generator, dtype=self._dtype(), device=generator.device
        )


class LennardJones(ParticleSystem):
    """Lennard-Jones cluster with a harmonic restraint (LJ-13, LJ-55 of the DEM benchmark).

    ``E = sum_{i != j} (r_ij^-12 - 2 r_ij^-6) + 0.5 sum_i ||x_i - mean||^2``; the pair sum runs
    over ordered pairs (each pair twice, as in the reference code). Chains start on a jittered
    cubic lattice of spacing 1.1, so no two particles overlap.

    Args:
        n_particles: 13 or 55 for the benchmarks (any number >= 2 works).
        spatial_dim: 3.
        oscillator_scale: weight of the harmonic restraint.
        com_scale: see :class:`ParticleSystem`.
        reference_path: optional reference samples (``lj13_reference_10000.npy``).
    """

    pair_multiplicity = 2.0

    def __init__(
        self,
        n_particles: int = 13,
        spatial_dim: int = 3,
        oscillator_scale: float = 1.0,
        com_scale: float = 1.0,
        reference_path: str | Path | None = None,
    ) -> None:
        super().__init__(n_particles, spatial_dim, com_scale, reference_path)
        self.name = f"lj{self.n_particles}"
        self.oscillator_scale = check_real(oscillator_scale, "oscillator_scale")

    def pair_energy(self, r: Tensor) -> Tensor:
        inv6 = r.pow(-6)
        return inv6 * inv6 - 2 * inv6

    def pair_denergy(self, r: Tensor) -> Tensor:
        inv6 = r.pow(-6)
        return (-12 * inv6 * inv6 + 12 * inv6) / r

    def one_body(self, p: Tensor) -> tuple[Tensor, Tensor]:
        centred = p - p.mean(1, keepdim=True)
        e = 0.5 * self.oscillator_scale * (centred * centred).sum((-1, -2))
        # d/dp_i of 0.5 sum_k ||p_k - c||^2 is (p_i - c) (the sum of centred vectors is zero)
        return e, self.oscillator_scale * centred

    def init_positions(self, n: int, generator: torch.Generator) -> Tensor:
        side = math.ceil(self.n_particles ** (1 / self.spatial_dim)) + 1
        grid = torch.tensor(
            list(itertools.product(range(side), repeat=self.spatial_dim)), dtype=torch.float32
        )
        grid = grid - grid.mean(0)
        order = torch.argsort((grid * grid).sum(-1), stable=True)
        lattice = 1.1 * grid[order[: self.n_particles]]
        lattice = lattice - lattice.mean(0)
        dev, dt = generator.device, self._dtype()
        jitter = 0.05 * torch.randn(
            n, self.n_particles, self.spatial_dim, generator=generator, dtype=dt, device=dev
        )
        return (lattice.to(dev, dt) + jitter).reshape(n, self.dim)
