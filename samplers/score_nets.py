"""Networks of the neural samplers: a time-conditioned score (noise-prediction) MLP and a
one-step generator MLP.

- :class:`ScoreMLP` predicts the noise ``eps`` of a noised state ``z_t = alpha_t z_0 + sigma_t
  eps`` from ``(z_t, t)``; the score is ``-eps_hat / sigma_t`` (Ho et al., 2020; Song et al.,
  2021). For particle systems (``n_particles`` given) the input is centred per configuration
  (the centre of mass is removed) and so is the output, so the score lives in the
  centre-of-mass-free subspace and is invariant to translations of the input.
- :class:`GeneratorMLP` maps latent noise ``w ~ N(0, I)`` to a state in one pass (the DiKL
  generator, He et al., AISTATS 2025), with the same optional centring for particles.

References: Rissanen et al., *Progressive Tempering Sampler with Diffusion* (ICML 2025);
He et al., *Training Neural Samplers with Reverse Diffusive KL Divergence* (AISTATS 2025).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from probrec.checks import check_positive_int, check_real

__all__ = ["ScoreMLP", "GeneratorMLP", "centre_particles", "mlp"]


def mlp(d_in: int, d_out: int, hidden: int, n_layers: int) -> nn.Sequential:
    """``n_layers`` hidden SiLU layers of width ``hidden`` between ``d_in`` and ``d_out``."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def centre_particles(x: Tensor, n_particles: int) -> Tensor:
    """Subtracts the per-configuration mean over particles (``n x (P s)`` -> same shape)."""
    p = x.reshape(x.shape[0], n_particles, -1)
    return (p - p.mean(1, keepdim=True)).reshape(x.shape)


def _check_particles(dim: int, n_particles: int | None) -> int | None:
    if n_particles is None:
        return None
    n_particles = check_positive_int(n_particles, "n_particles", minimum=2)
    if dim % n_particles:
        raise ValueError(f"dim {dim} is not a multiple of n_particles {n_particles}")
    return n_particles


class ScoreMLP(nn.Module):
    """Noise-prediction MLP ``eps_hat(z_t, t)`` with Fourier features of the time ``t in [0, 1]``.

    Args:
        dim: state dimension ``d``.
        hidden: width of the hidden layers.
        n_layers: number of hidden layers.
        n_time_features: Fourier features of ``t`` (``sin`` and ``cos`` of ``n / 2``
            geometrically spaced frequencies from 1 to 200).
        n_particles: particles per configuration for mean-centred coordinates (``None``:
            plain vectors).

    Shapes: ``forward(z [n, d], t [n]) -> [n, d]``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        n_layers: int = 3,
        n_time_features: int = 16,
        n_particles: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        n_time_features = check_positive_int(n_time_features, "n_time_features", minimum=2)
        self.n_particles = _check_particles(self.dim, n_particles)
        half = n_time_features // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(200.0), half))
        self.register_buffer("freqs", freqs)
        self.net = mlp(
            self.dim + 2 * half,
            self.dim,
            check_positive_int(hidden, "hidden"),
            check_positive_int(n_layers, "n_layers"),
        )

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        if self.n_particles is not None:
            z = centre_particles(z, self.n_particles)
        arg = t.to(z)[:, None] * self.freqs.to(z)[None]
        out = self.net(torch.cat([z, torch.sin(arg), torch.cos(arg)], dim=-1))
        if self.n_particles is not None:
            out = centre_particles(out, self.n_particles)
        return out


class GeneratorMLP(nn.Module):
    """One-step generator ``z = g(w)``, ``w ~ N(0, I_latent)`` (output in normalised coordinates).

    Args:
        dim: output dimension ``d``.
        latent_dim: dimension of the latent noise (``d`` if ``None``).
        hidden, n_layers: MLP size.
        n_particles: centre the output per configuration (particle systems).
        output_std: if given, the output layer is rescaled at initialisation so that the
            outputs of ``n_probe`` latent draws have mean 0 and this standard deviation per
            coordinate (e.g. the spread of the target in model coordinates, so the untrained
            generator already covers the target's support; He et al. initialise their MoG-40
            generator this wide). ``None`` keeps PyTorch's default initialisation.
        n_probe: latent draws (from the global torch random stream, like the weights) used
            to measure the initial spread.

    Shapes: ``forward(w [n, latent_dim]) -> [n, d]``.
    """

    def __init__(
        self,
        dim: int,
        latent_dim: int | None = None,
        hidden: int = 256,
        n_layers: int = 3,
        n_particles: int | None = None,
        output_std: float | None = None,
        n_probe: int = 4096,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.latent_dim = (
            self.dim if latent_dim is None else check_positive_int(latent_dim, "latent_dim")
        )
        self.n_particles = _check_particles(self.dim, n_particles)
        self.net = mlp(
            self.latent_dim,
            self.dim,
            check_positive_int(hidden, "hidden"),
            check_positive_int(n_layers, "n_layers"),
        )
        if output_std is not None:
            std = check_real(output_std, "output_std", strict=True)
            self._rescale_output(std, check_positive_int(n_probe, "n_probe"))

    @torch.no_grad()
    def _rescale_output(self, std: float, n_probe: int) -> None:
        """Scales the last layer so that outputs have mean 0 and standard deviation ``std``.

        For a particle system the output is centred after the last layer, which mixes the
        coordinates: one rescaling by ``std / spread`` left spreads from 1.73 to 2.48 for 2.0
        (4 particles). The scales ``S`` then solve ``diag(C diag(S) Cov(y) diag(S) C) = std^2``
        (``y`` the last layer's outputs on the probes, ``C`` the centring) by the fixed-point
        iteration ``S <- S std / spread``.
        """
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        w = torch.randn(n_probe, self.latent_dim, dtype=last.weight.dtype)
        if self.n_particles is None:
            scale = std / self(w).std(0).clamp_min(1e-12)  # d
        else:
            cov = torch.cov(self.net(w).T.double())  # d x d, before the centring
            d = self.dim
            eye = torch.eye(d, dtype=cov.dtype)
            centre = eye - torch.kron(
                torch.full((self.n_particles,) * 2, 1.0 / self.n_particles, dtype=cov.dtype),
                torch.eye(d // self.n_particles, dtype=cov.dtype),
            )  # the linear map of centre_particles
            scale = torch.ones(d, dtype=cov.dtype)
            for _ in range(10_000):
                m = centre * scale  # C diag(S)
                sd = torch.einsum("ij,jk,ik->i", m, cov, m).clamp_min(1e-24).sqrt()
                ratio = std / sd
                scale = scale * ratio
                if float((ratio - 1).abs().max()) < 1e-9:
                    break
            scale = scale.to(last.weight.dtype)
        last.weight.mul_(scale[:, None])
        last.bias.mul_(scale)
        last.bias.sub_(self(w).mean(0))

    def forward(self, w: Tensor) -> Tensor:
        out = self.net(w)
        if self.n_particles is not None:
            out = centre_particles(out, self.n_particles)
        return out
