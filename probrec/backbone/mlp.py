"""Multilayer-perceptron feature encoder, with optional geometric parameterization (GmP).

The encoder is the default feature backbone of the few-shot heads: a stack of
``Linear -> [BatchNorm | LayerNorm] -> activation -> [Dropout]`` blocks followed by an optional
linear output layer. With ``gmp=True`` every linear layer is a
:class:`~probrec.backbone.gmp.GmPLinear` (Chen & Ge, NeurIPS 2024, arXiv:2305.15912);
:meth:`MLPEncoder.as_gmp` and :meth:`MLPEncoder.as_standard` convert a trained encoder
between the two parameterizations without changing the function it computes.

Sparse inputs: molecular fingerprints (Morgan counts) are ~98% zeros. With
``sparse_input="auto"`` the first layer multiplies a CSR copy of such a batch on CPU (the dense
product dominates a meta-step's time there), with the same result up to float rounding.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from probrec.backbone.gmp import GmPLinear
from probrec.checks import check_bool, check_choice, check_positive_int, check_real
from probrec.seeding import torch_generator

__all__ = ["ACTIVATIONS", "MLPEncoder", "hidden_widths", "sparse_linear"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
_NORMS = ("none", "batch", "layer")
# "auto" multiplies CSR inputs when at most this fraction of the entries is non-zero (measured
# on one CPU thread: CSR fwd+bwd of a 1.4%-dense 5120 x 2048 batch, conversion included, is ~5x
# faster than the dense product; the two break even near 10% density) ...
SPARSE_MAX_DENSITY = 0.05
# ... and the batch has at least this many entries (smaller products are not worth converting)
SPARSE_MIN_NUMEL = 1 << 18
# rows of the batch sampled to estimate its density
SPARSE_SAMPLE_ROWS = 64


def _crow(counts: Tensor) -> Tensor:
    """CSR row pointers ``[n + 1]`` from per-row non-zero counts ``[n]``."""
    crow = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


class _SparseRowsMatmul(torch.autograd.Function):
    """``x @ m^T`` for a mostly-zero dense ``x [n, k]`` through CSR products.

    Forward: one scan for the non-zeros of ``x`` (row-major, so already in CSR order) and a
    CSR-times-dense product. Backward (to ``m`` only): ``dm = (x^T g)^T``. torch multiplies
    a transposed CSR matrix through a slow path (~5x slower than the forward on one CPU
    thread), so on CPU this product goes through SciPy's compressed-column kernel on the same
    index arrays (no copy); elsewhere torch's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, m: Tensor) -> Tensor:  # type: ignore[override]
        n, k = x.shape
        flat_x = x.detach().reshape(-1)
        flat = torch.nonzero(flat_x).squeeze(1)
        rows = torch.div(flat, k, rounding_mode="floor")
        cols = flat - rows * k
        vals = flat_x.index_select(0, flat)
        crow = _crow(torch.bincount(rows, minlength=n))
        with warnings.catch_warnings():  # torch flags CSR support as beta on every use
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            xs = torch.sparse_csr_tensor(crow, cols, vals, size=(n, k), check_invariants=False)
        ctx.save_for_backward(crow, cols, vals)
        ctx.shape = (n, k)
        return xs @ m.t()

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[None, Tensor | None]:  # type: ignore[override]
        if not ctx.needs_input_grad[1]:
            return None, None
        crow, cols, vals = ctx.saved_tensors
        n, k = ctx.shape
        g = g.to(vals.dtype)
        if vals.device.type == "cpu" and vals.dtype in (torch.float32, torch.float64):
            xs = scipy.sparse.csr_matrix(
                (vals.numpy(), cols.numpy(), crow.numpy()), shape=(n, k), copy=False
            )
            return None, torch.from_numpy(xs.T @ g.contiguous().numpy()).t()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            xs = torch.sparse_csr_tensor(crow, cols, vals, size=(n, k), check_invariants=False)
        return None, (xs.t() @ g).t()


def sparse_linear(x: Tensor, layer: nn.Module) -> Tensor:
    """``layer(x)`` for a mostly-zero 2-D ``x``, through CSR matrix products.

    Gradients flow to the layer's parameters (not to ``x``).

    Args:
        x: ``[n, in]`` dense inputs.
        layer: ``nn.Linear`` or :class:`~probrec.backbone.gmp.GmPLinear`.

    Returns:
        ``[n, out]`` outputs, equal to ``layer(x)`` up to float rounding.
    """
    if isinstance(layer, GmPLinear):
        y = _SparseRowsMatmul.apply(x, layer.direction)
        if layer.offset is not None:
            y = y + layer.offset
        return y * layer.radius
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be nn.Linear or GmPLinear, got {type(layer).__name__}")
    y = _SparseRowsMatmul.apply(x, layer.weight)
    return y if layer.bias is None else y + layer.bias


def hidden_widths(hidden: int | Sequence[int], name: str = "hidden") -> tuple[int, ...]:
    """Hidden-layer widths as a tuple: one int is one layer, a sequence one width per layer.

    Raises:
        TypeError: not an int or a sequence of ints.
        ValueError: a width below 1.
    """
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        hidden = (int(hidden),)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {hidden!r}")
    return tuple(check_positive_int(h, f"{name}[{i}]") for i, h in enumerate(hidden))


class MLPEncoder(nn.Module):
    """MLP mapping ``[..., in_dim]`` inputs to ``[..., out_dim]`` features.

    Hidden block ``i``: ``Linear(d_i, hidden[i])``, then the normalisation (``"batch"``:
    ``BatchNorm1d`` over the flattened leading dimensions, ``"layer"``: ``LayerNorm``), the
    activation and dropout. If ``out_dim`` is given a final ``Linear(hidden[-1], out_dim)``
    without activation follows; otherwise the last hidden block's activations are the features.

    Example:
        >>> enc = MLPEncoder(2265, hidden=(512, 256), out_dim=64, gmp=True, seed=0)
        >>> enc(torch.randn(3, 7, 2265)).shape
        torch.Size([3, 7, 64])

    Args:
        in_dim: input width.
        hidden: widths of the hidden blocks (may be empty if ``out_dim`` is given).
        out_dim: width of an extra linear output layer; ``None`` means no output layer and
            ``out_dim = hidden[-1]``.
        activation: one of :data:`ACTIVATIONS`.
        dropout: dropout probability after each hidden activation, in ``[0, 1)``.
        norm: ``None`` (or ``"none"``), ``"batch"`` or ``"layer"``.
        gmp: use geometric parameterization for every linear layer.
        bias: learn biases in the linear layers.
        sparse_input: ``"auto"`` (default): on CPU, multiply float32 / float64 batches with
            at most 5% non-zero entries (fingerprints) as CSR matrices in the first layer;
            ``True``: always (any device; on CPU float32 / float64 only); ``False``: never.
            Inputs that require gradients always take the dense path.
        seed: seed (or ``torch.Generator``) of the weight initialisation; ``None`` uses torch's
            global generator. Dropout masks use torch's global generator as usual.

    Raises:
        TypeError: ``gmp``, ``bias`` or ``sparse_input`` is not a bool (``sparse_input`` may
            also be ``"auto"``), or ``dropout`` is not a real number.
        ValueError: ``dropout`` is not in ``[0, 1)``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (512, 512),
        out_dim: int | None = None,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str | None = None,
        gmp: bool = False,
        bias: bool = True,
        sparse_input: bool | str = "auto",
        seed: int | torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(sparse_input, str):
            check_choice(sparse_input, "sparse_input", ("auto",))
        elif not isinstance(sparse_input, bool):
            raise TypeError(f"sparse_input must be 'auto', True or False, got {sparse_input!r}")
        self.sparse_input = sparse_input
        self.in_dim = check_positive_int(in_dim, "in_dim")
        self.hidden = hidden_widths(hidden)
        if out_dim is None and not self.hidden:
            raise ValueError("MLPEncoder needs hidden layers or an out_dim; both are empty")
        self.activation = check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.norm = check_choice("none" if norm is None else norm, "norm", _NORMS)
        # float(dropout) read the string "0.1" as 0.1 and failed on None with a bare TypeError
        if not check_real(dropout, "dropout") < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        # a flag read with bool() took "no" / "False" for True (GmP layers, biases)
        self.gmp = check_bool(gmp, "gmp")
        bias = check_bool(bias, "bias")
        self.out_dim = (
            self.hidden[-1] if out_dim is None else check_positive_int(out_dim, "out_dim")
        )
        self.has_output_layer = out_dim is not None

        gen = torch_generator(seed) if seed is not None else None
        layers: list[nn.Module] = []
        width = self.in_dim
        for h in self.hidden:
            layers.append(self._linear(width, h, bias, gen))
            if self.norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif self.norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(ACTIVATIONS[self.activation]())
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        if self.has_output_layer:
            layers.append(self._linear(width, self.out_dim, bias, gen))
        self.net = nn.Sequential(*layers)

    def _linear(self, n_in: int, n_out: int, bias: bool, gen: torch.Generator | None) -> nn.Module:
        if self.gmp:
            return GmPLinear(n_in, n_out, bias=bias, generator=gen)
        if gen is None:
            return nn.Linear(n_in, n_out, bias=bias)
        # same distribution as nn.Linear's default init, from `gen`; built uninitialised, as
        # the default init would draw from (and advance) torch's global stream
        lin = nn.Linear(n_in, n_out, bias=bias, device="meta").to_empty(device="cpu")
        bound = n_in**-0.5
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound, generator=gen)
            if bias:
                lin.bias.uniform_(-bound, bound, generator=gen)
        return lin

    def forward(self, x: Tensor) -> Tensor:
        """Encodes inputs.

        Args:
            x: ``[..., in_dim]`` floating tensor of the parameters' dtype, or integer / bool
                (count or bit fingerprints, read in the parameters' dtype).

        Returns:
            ``[..., out_dim]`` features.

        Raises:
            ValueError: the last dimension of ``x`` is not ``in_dim``, ``x`` is floating in
                another dtype than the parameters (a bare matmul error before), ``x`` is on
                another device than the parameters, or ``sparse_input=True`` with half-precision
                parameters on CPU (which has no half-precision CSR product).
        """
        if x.dim() == 0 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have shape [..., {self.in_dim}], got {tuple(x.shape)}")
        w = next(self.parameters())
        if x.device != w.device:  # a bare "not on the expected device" error inside a matmul
            raise ValueError(
                f"x is on device {x.device} but the encoder's parameters are on {w.device}: "
                f"move x there first (x.to({str(w.device)!r}))"
            )
        if not (x.is_floating_point() or x.is_complex()):
            x = x.to(w.dtype)  # integer counts failed in the sparse product
        elif x.dtype != w.dtype:
            raise ValueError(
                f"x has dtype {x.dtype} but the encoder's parameters are {w.dtype}: convert x "
                "(or the encoder, e.g. encoder.double())"
            )
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_dim)
        if self._sparse(x):
            y = self.net[1:](sparse_linear(x, self.net[0]))
        else:
            y = self.net(x)
        return y.reshape(*lead, self.out_dim)

    def _sparse(self, x: Tensor) -> bool:
        """Whether the first layer takes the CSR path for the ``[n, in_dim]`` batch ``x``."""
        mode = getattr(self, "sparse_input", "auto")  # encoders pickled before the option
        if mode is False or x.requires_grad or x.shape[0] == 0:
            return False
        # CPU CSR products exist for float32 / float64 only: a half-precision encoder failed
        # (torch raised its not-implemented error) on a large batch while a small one (dense)
        # went through
        cpu_half = x.device.type == "cpu" and x.dtype not in (torch.float32, torch.float64)
        if mode is True:
            if cpu_half:
                raise ValueError(
                    f"sparse_input=True multiplies CSR matrices, which torch does not do in "
                    f"{x.dtype} on CPU: use sparse_input='auto' or False for this encoder"
                )
            return True
        if cpu_half or x.device.type != "cpu" or x.numel() < SPARSE_MIN_NUMEL:
            return False
        # the density is estimated on an evenly strided sample of about 64 rows: counting the
        # non-zeros of the whole batch would cost a quarter of the conversion it decides on
        sample = x[:: max(1, x.shape[0] // SPARSE_SAMPLE_ROWS)]
        return int(torch.count_nonzero(sample)) <= SPARSE_MAX_DENSITY * sample.numel()

    def linear_layers(self) -> list[nn.Module]:
        """The linear layers (``nn.Linear`` or ``GmPLinear``) in order."""
        return [m for m in self.net if isinstance(m, (nn.Linear, GmPLinear))]

    def _converted(self, gmp: bool) -> MLPEncoder:
        new = copy.deepcopy(self)
        for i, m in enumerate(new.net):
            if gmp and isinstance(m, nn.Linear):
                new.net[i] = GmPLinear.from_linear(m)
            elif not gmp and isinstance(m, GmPLinear):
                new.net[i] = m.to_linear()
        new.gmp = gmp
        return new

    def as_gmp(self) -> MLPEncoder:
        """A copy with every linear layer in GmP form, computing the same function."""
        return self._converted(True)

    def as_standard(self) -> MLPEncoder:
        """A copy with every linear layer a standard ``nn.Linear``, computing the same function."""
        return self._converted(False)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, hidden={self.hidden}, out_dim={self.out_dim}, "
            f"activation={self.activation!r}, norm={self.norm!r}, dropout={self.dropout}, "
            f"gmp={self.gmp}"
        )
