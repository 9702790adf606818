r"""Geometric parameterization (GmP) of linear layers.

Chen & Ge, "Neural Characteristic Activation Analysis and Geometric Parameterization for ReLU
Networks" (NeurIPS 2024, arXiv:2305.15912). Each output neuron's weight vector
:math:`w \in \mathbb{R}^n` is written in hyperspherical coordinates,
:math:`w = \lambda\, u(\theta)`, with a radial part :math:`\lambda` and :math:`n - 1` angles
:math:`\theta`:

.. math::

    u_1 = \cos\theta_1,\quad
    u_k = \Big(\prod_{j<k} \sin\theta_j\Big) \cos\theta_k \;(1<k<n),\quad
    u_n = \prod_{j<n} \sin\theta_j ,

so :math:`\lVert u(\theta) \rVert = 1` for *any* real angles. A GmP layer computes
:math:`y = \lambda \odot (U(\theta)\, x + \beta)`; for a ReLU unit with :math:`\lambda > 0`
this equals :math:`\lambda\,\mathrm{ReLU}(u^\top x + \beta)`, so the unit's activation boundary
:math:`\{x : u^\top x + \beta = 0\}` depends on the angles and the offset :math:`\beta` only,
not on :math:`\lambda`: radial and angular parts are learned separately. The equivalent standard
layer has :math:`W = \mathrm{diag}(\lambda) U` and :math:`b = \lambda \odot \beta`.

Numerical approach (wide inputs, e.g. 2048 + 217 molecular features):

* **Angles to unit vector** (:func:`hyperspherical_to_cartesian`). Sines and cosines are taken in
  the parameter dtype (float32 for float16 / bfloat16 parameters, whose rounded sines compound
  over thousands of factors); the prefix products :math:`\prod_{j<k}\sin\theta_j` are a cumulative
  product in float64, cast back. Two reasons. (1) Accuracy does not depend on how a backend
  accumulates a float32 scan over thousands of factors; what is left is the rounding of the
  sines (measured at :math:`n = 2265` with float32 angles from a default initialisation:
  largest row error :math:`\lVert u_{32} - u_{64}\rVert` of 2.4e-6 over 256 rows, float32
  unit roundoff being 6e-8). (2) Gradients: ``torch.cumprod``'s backward divides by its
  factors, which is wrong when a product underflows while a factor is tiny but non-zero
  (float32 sines of angles within 1e-38 of 0 or :math:`\pi` gave gradients off by 40-60 % or
  exactly 0). A non-zero float32 sine is at least 1.4e-45 in magnitude, so a float64 product
  of them underflows only after seven such factors; exact zeros are handled by torch.
  Products are not summed in log space: :math:`\log\lvert\sin\theta\rvert` has an unbounded
  derivative at :math:`\sin\theta = 0`. A parallel (log-depth) scan was tried and rejected:
  its result passes through as many roundings as the sequential product and it was about
  9 times slower on CPU. Underflow of a prefix product in the result is harmless:
  :math:`\lVert u\rVert = 1`, so such a component is below the dtype's smallest normal number.
  Devices without float64 (MPS) use float32.
* **Unit vector to angles** (:func:`cartesian_to_hyperspherical`): each row is scaled by its
  largest magnitude (no overflow or underflow of squares), tail norms
  :math:`\lVert w_{k:}\rVert` are reverse cumulative sums of squares (accumulated from the
  small end), and :math:`\theta_k = \operatorname{atan2}(\lVert w_{k+1:}\rVert, w_k)` (last
  angle :math:`\operatorname{atan2}(w_n, w_{n-1})`), which is well conditioned everywhere,
  unlike :math:`\arccos`. This runs in float64 (except on devices without it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probrec.checks import check_positive_int

__all__ = [
    "GmPLinear",
    "cartesian_to_hyperspherical",
    "hyperspherical_to_cartesian",
]


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64


def hyperspherical_to_cartesian(angles: Tensor, radius: Tensor | None = None) -> Tensor:
    r"""Maps hyperspherical angles to (scaled) unit vectors.

    Args:
        angles: ``[..., n - 1]`` angles :math:`\theta` (any real values).
        radius: optional ``[...]`` radial part :math:`\lambda`; omitted means 1.

    Returns:
        ``[..., n]`` vectors :math:`\lambda\, u(\theta)` (unit norm when ``radius`` is omitted).
    """
    # half-precision angles: trigonometry in float32 (sines rounded to float16 / bfloat16
    # compound over the product: unit vectors of 2048 inputs were off by up to 0.62 in norm
    # in bfloat16, 0.035 in float16, against 0.0018 / 0.0002 for rounding the exact map)
    low = angles.dtype not in (torch.float32, torch.float64)
    a = angles.float() if low else angles
    ones = a.new_ones(a.shape[:-1] + (1,))
    sines = torch.sin(a)
    prefix = torch.cumprod(sines.to(_work_dtype(sines)), dim=-1).to(a.dtype)
    u = torch.cat([ones, prefix], dim=-1) * torch.cat([torch.cos(a), ones], dim=-1)
    u = u.to(angles.dtype) if low else u
    return u if radius is None else radius.unsqueeze(-1) * u


def cartesian_to_hyperspherical(w: Tensor) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`hyperspherical_to_cartesian`.

    Angles are :math:`\theta_k = \operatorname{atan2}(\lVert w_{k+1:}\rVert, w_k)` in
    :math:`[0, \pi]` for :math:`k < n - 1` and :math:`\theta_{n-1} = \operatorname{atan2}(w_n,
    w_{n-1})` in :math:`(-\pi, \pi]`; the radius is :math:`\lVert w\rVert \ge 0`. For ``n == 1``
    there are no angles and the radius is ``w`` itself (signed, since :math:`u = 1`). A zero
    vector maps to radius 0 and zero angles. Computed in float64 and cast back.

    Args:
        w: ``[..., n]`` vectors (finite).

    Returns:
        ``(radius [...], angles [..., n - 1])`` in the dtype of ``w``.
    """
    if w.shape[-1] == 0:
        raise ValueError("w must have at least one entry along its last dimension")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w contains non-finite values (NaN or inf)")
    x = w.to(_work_dtype(w))
    if x.shape[-1] == 1:
        return x[..., 0].to(w.dtype), x[..., :0].to(w.dtype)
    scale = x.abs().amax(dim=-1, keepdim=True)
    x = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    tail_sq = torch.flip(torch.cumsum(torch.flip(x * x, dims=[-1]), dim=-1), dims=[-1])
    tail = torch.sqrt(tail_sq)  # tail[..., k] = ||x[..., k:]||
    angles = torch.cat(
        [torch.atan2(tail[..., 1:-1], x[..., :-2]), torch.atan2(x[..., -1:], x[..., -2:-1])],
        dim=-1,
    )
    radius = tail[..., 0] * scale[..., 0]
    return radius.to(w.dtype), angles.to(w.dtype)


class GmPLinear(nn.Module):
    r"""Linear layer in geometric parameterization: :math:`y = \lambda \odot (U(\theta) x + \beta)`.

    Parameters: ``angles`` ``[out, in - 1]`` (row :math:`i` gives the unit direction
    :math:`u_i`), ``radius`` ``[out]`` (:math:`\lambda`) and ``offset`` ``[out]``
    (:math:`\beta`, the signed distance-like offset of each unit's activation boundary; ``None``
    without bias). Computes the same function as ``nn.Linear`` with weight
    :attr:`weight` ``= diag(λ) U`` and bias :attr:`bias` ``= λ β``; see :meth:`from_linear` and
    :meth:`to_linear`. Reference: Chen & Ge, NeurIPS 2024 (arXiv:2305.15912).

    Example:
        >>> lin = nn.Linear(5, 3)
        >>> gmp = GmPLinear.from_linear(lin)
        >>> x = torch.randn(4, 5)
        >>> bool(torch.allclose(gmp(x), lin(x), atol=1e-5))
        True

    Args:
        in_features: input width ``n``.
        out_features: number of units.
        bias: learn an offset per unit.
        device: device of the parameters.
        dtype: floating dtype of the parameters.
        generator: random generator of the initialisation (same distribution as
            ``nn.Linear``'s default: weights and biases uniform on
            :math:`\pm 1/\sqrt{n}`, then converted).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        kw = {"device": device, "dtype": dtype}
        self.angles = nn.Parameter(torch.empty(self.out_features, self.in_features - 1, **kw))
        self.radius = nn.Parameter(torch.empty(self.out_features, **kw))
        self.offset = nn.Parameter(torch.empty(self.out_features, **kw)) if bias else None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draws weights as ``nn.Linear`` does (uniform on ``±1/sqrt(in)``) and converts them."""
        bound = 1.0 / math.sqrt(self.in_features)
        p = self.radius
        w = torch.empty(self.out_features, self.in_features, dtype=p.dtype, device=p.device)
        w.uniform_(-bound, bound, generator=generator)
        b = None
        if self.offset is not None:
            b = torch.empty(self.out_features, dtype=p.dtype, device=p.device)
            b.uniform_(-bound, bound, generator=generator)
        self.set_standard_parameters(w, b)

    @torch.no_grad()
    def set_standard_parameters(self, weight: Tensor, bias: Tensor | None = None) -> None:
        r"""Sets the parameters so the layer equals ``nn.Linear`` with ``weight`` and ``bias``.

        Args:
            weight: ``[out, in]`` standard weight matrix.
            bias: ``[out]`` standard bias (required iff the layer has an offset).

        Raises:
            ValueError: wrong shapes, non-finite values, or a zero weight row with a non-zero
                bias (a unit with :math:`\lambda = 0` outputs 0, which no offset can change), or
                one so small that the offset ``bias / norm`` overflows.
        """
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight must have shape {(self.out_features, self.in_features)}, "
                f"got {tuple(weight.shape)}"
            )
        if (bias is None) != (self.offset is None):
            raise ValueError("bias must be given exactly when the layer has an offset (bias=True)")
        radius, angles = cartesian_to_hyperspherical(weight)
        self.angles.copy_(angles)
        self.radius.copy_(radius)
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(
                    f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}"
                )
            if not bool(torch.isfinite(bias).all()):
                raise ValueError("bias contains non-finite values (NaN or inf)")
            r64, b64 = radius.to(_work_dtype(bias)), bias.to(_work_dtype(bias))
            dead = (r64 == 0) & (b64 != 0)
            if bool(dead.any()):
                i = int(torch.nonzero(dead)[0, 0])
                raise ValueError(
                    f"weight row {i} is zero but bias[{i}] = {float(bias[i])} is not: "
                    "GmP cannot represent a constant non-zero unit"
                )
            offset = torch.where(r64 == 0, torch.zeros_like(b64), b64 / r64)
            if not bool(torch.isfinite(offset.to(self.offset.dtype)).all()):  # gave inf outputs
                i = int(torch.nonzero(~torch.isfinite(offset.to(self.offset.dtype)))[0, 0])
                raise ValueError(
                    f"weight row {i} (norm {float(r64[i]):.3g}) is too small for bias[{i}] = "
                    f"{float(bias[i]):.3g}: the GmP offset bias / norm overflows"
                )
            self.offset.copy_(offset)

    @property
    def direction(self) -> Tensor:
        r"""Unit directions :math:`U(\theta)`, ``[out, in]``."""
        return hyperspherical_to_cartesian(self.angles)

    @property
    def weight(self) -> Tensor:
        r"""Equivalent standard weight :math:`\mathrm{diag}(\lambda)\, U(\theta)`, ``[out, in]``."""
        return hyperspherical_to_cartesian(self.angles, self.radius)

    @property
    def bias(self) -> Tensor | None:
        r"""Equivalent standard bias :math:`\lambda \odot \beta`, ``[out]`` (or ``None``)."""
        return None if self.offset is None else self.radius * self.offset

    def forward(self, x: Tensor) -> Tensor:
        r"""Applies the layer.

        Args:
            x: ``[..., in_features]`` inputs.

        Returns:
            ``[..., out_features]`` outputs :math:`\lambda \odot (U x + \beta)`.
        """
        return F.linear(x, self.direction, self.offset) * self.radius

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> GmPLinear:
        """A GmP layer computing the same function as ``linear`` (same device and dtype).

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear``.
            ValueError: see :meth:`set_standard_parameters`.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        layer.set_standard_parameters(
            w.detach(), None if linear.bias is None else linear.bias.detach()
        )
        layer.train(linear.training)
        return layer

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (same device and dtype)."""
        p = self.radius
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.offset is not None,
            device=p.device,
            dtype=p.dtype,
        )
        lin.weight.copy_(self.weight)
        if self.offset is not None:
            lin.bias.copy_(self.bias)
        lin.train(self.training)
        return lin

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.offset is not None}"
        )
