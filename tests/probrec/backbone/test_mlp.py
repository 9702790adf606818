"""MLP encoder: shapes, options, GmP <-> standard equivalence, seeding, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from probrec.backbone import GmPLinear, MLPEncoder

WIDE = 2048 + 217


def test_shapes_and_out_dim() -> None:
    enc = MLPEncoder(12, hidden=(16, 8), out_dim=5, seed=0)
    assert enc.out_dim == 5
    assert enc(torch.randn(3, 12)).shape == (3, 5)
    assert enc(torch.randn(2, 4, 12)).shape == (2, 4, 5)
    assert enc(torch.randn(12)).shape == (5,)
    features = MLPEncoder(12, hidden=(16, 8))
    assert features.out_dim == 8 and features(torch.randn(3, 12)).shape == (3, 8)
    linear = MLPEncoder(12, hidden=(), out_dim=3)
    assert len(linear.linear_layers()) == 1 and linear(torch.randn(2, 12)).shape == (2, 3)


def test_leading_dimensions_are_independent_rows() -> None:
    enc = MLPEncoder(6, hidden=(10,), out_dim=4, norm="layer", seed=1)
    x = torch.randn(2, 3, 6)
    np.testing.assert_allclose(
        enc(x).detach().reshape(6, 4).numpy(), enc(x.reshape(6, 6)).detach().numpy(), atol=1e-6
    )


def test_layer_structure_follows_options() -> None:
    enc = MLPEncoder(5, hidden=(7, 7), out_dim=2, activation="gelu", dropout=0.2, norm="batch")
    kinds = [type(m) for m in enc.net]
    assert kinds == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.GELU,
        nn.Dropout,
        nn.Linear,
        nn.BatchNorm1d,
        nn.GELU,
        nn.Dropout,
        nn.Linear,
    ]
    gmp = MLPEncoder(5, hidden=(7,), norm="layer", gmp=True)
    assert [type(m) for m in gmp.net] == [GmPLinear, nn.LayerNorm, nn.ReLU]


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_gmp_and_standard_compute_the_same_function(norm: str | None, activation: str) -> None:
    std = MLPEncoder(
        40, hidden=(32, 16), out_dim=3, activation=activation, norm=norm, seed=3
    ).double()
    gmp = std.as_gmp()
    assert all(isinstance(m, GmPLinear) for m in gmp.linear_layers()) and gmp.gmp
    x = torch.randn(25, 40, dtype=torch.float64)
    for mode in ("train", "eval"):  # batch norm: batch statistics, then running statistics
        getattr(std, mode)()
        getattr(gmp, mode)()
        np.testing.assert_allclose(
            gmp(x).detach().numpy(), std(x).detach().numpy(), rtol=0, atol=1e-10
        )
    back = gmp.as_standard()
    assert all(isinstance(m, nn.Linear) for m in back.linear_layers())
    np.testing.assert_allclose(back(x).detach().numpy(), std(x).detach().numpy(), atol=1e-10)


def test_wide_gmp_mlp_matches_standard_in_float32_and_float64() -> None:
    std = MLPEncoder(WIDE, hidden=(128,), out_dim=16, seed=0).double()
    gmp = std.as_gmp()
    x = torch.randn(8, WIDE, dtype=torch.float64)
    with torch.no_grad():
        ref = std(x)
        assert float((gmp(x) - ref).abs().max()) < 1e-10
        y32 = gmp.float()(x.float()).double()
        assert float((y32 - ref).abs().max() / ref.abs().max()) < 1e-5


def test_seed_controls_initialisation() -> None:
    for gmp in (False, True):
        a = MLPEncoder(9, hidden=(6,), out_dim=2, gmp=gmp, seed=11)
        b = MLPEncoder(9, hidden=(6,), out_dim=2, gmp=gmp, seed=11)
        c = MLPEncoder(9, hidden=(6,), out_dim=2, gmp=gmp, seed=12)
        for (_, pa), (_, pb), (_, pc) in zip(
            a.named_parameters(), b.named_parameters(), c.named_parameters()
        ):
            assert torch.equal(pa, pb)
            assert not torch.equal(pa, pc) or pa.numel() == 0


def test_dropout_is_active_only_in_training() -> None:
    enc = MLPEncoder(10, hidden=(64,), out_dim=4, dropout=0.5, seed=0)
    x = torch.randn(5, 10)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    enc.train()
    torch.manual_seed(0)
    y1 = enc(x)
    y2 = enc(x)
    assert not torch.equal(y1, y2)


def test_gmp_encoder_trains() -> None:
    """A GmP MLP fits a smooth regression target (gradients reach every parameter)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    enc = MLPEncoder(3, hidden=(32, 32), out_dim=1, gmp=True, seed=0)
    opt = torch.optim.Adam(enc.parameters(), lr=2e-2)
    first = None
    for _ in range(100):
        loss = ((enc(x) - y) ** 2).mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in enc.parameters())
    assert float(loss.detach()) < 0.05 * first


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="activation"):
        MLPEncoder(3, activation="swishy")
    with pytest.raises(ValueError, match="norm"):
        MLPEncoder(3, norm="group")
    with pytest.raises(ValueError, match="dropout"):
        MLPEncoder(3, dropout=1.0)
    for bad in (None, "0.1"):  # a bare float() TypeError / read as 0.1
        with pytest.raises(TypeError, match="dropout must be a real number"):
            MLPEncoder(3, dropout=bad)
    with pytest.raises(ValueError, match="hidden layers or an out_dim"):
        MLPEncoder(3, hidden=())
    with pytest.raises(ValueError, match=r"hidden\[1\]"):
        MLPEncoder(3, hidden=(4, 0))
    with pytest.raises(TypeError, match="in_dim"):
        MLPEncoder(3.5)
    enc = MLPEncoder(3, hidden=(4,))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 3\]"):
        enc(torch.randn(2, 4))
    with pytest.raises(ValueError, match="x has dtype torch.float64 but the encoder's"):
        enc(torch.randn(2, 3, dtype=torch.float64))  # a bare matmul error


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_fingerprints_are_read_in_the_parameters_dtype(dtype) -> None:
    x = _fingerprints((300, 2048), 0.02, torch.int64)  # sparse path (count fingerprints)
    x = x.bool() if dtype == torch.bool else x.to(dtype)
    enc = MLPEncoder(2048, hidden=(16,), seed=0).eval()
    torch.testing.assert_close(enc(x), enc(x.float()), rtol=0, atol=0)  # failed for int64


def _fingerprints(shape: tuple[int, ...], density: float, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 4, shape, generator=g)
    return ((torch.rand(shape, generator=g) < density) * counts).to(dtype)


@pytest.mark.parametrize("gmp", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_first_layer_matches_the_dense_product(gmp: bool, dtype: torch.dtype) -> None:
    x = _fingerprints((3, 40, 512), 0.02, dtype)
    kw = dict(hidden=(32,), out_dim=8, gmp=gmp, norm="layer", seed=0)
    sparse = MLPEncoder(512, sparse_input=True, **kw).to(dtype)
    dense = MLPEncoder(512, sparse_input=False, **kw).to(dtype)
    assert sparse._sparse(x.reshape(-1, 512)) and not dense._sparse(x.reshape(-1, 512))
    ys, yd = sparse(x), dense(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ys, yd, rtol=tol, atol=tol)
    ys.square().sum().backward()
    yd.square().sum().backward()
    for ps, pd in zip(sparse.parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(ps.grad, pd.grad, rtol=tol * 10, atol=tol * 10)


def test_sparse_auto_rule() -> None:
    enc = MLPEncoder(2048, hidden=(8,), seed=0)  # sparse_input="auto"
    fp = _fingerprints((200, 2048), 0.014, torch.float32)
    assert enc._sparse(fp)  # a fingerprint batch of 409,600 entries
    assert not enc._sparse(torch.randn(200, 2048))  # dense inputs
    assert not enc._sparse(fp[:20])  # too small to be worth converting
    assert not enc._sparse(fp.clone().requires_grad_())  # gradients wanted w.r.t. the inputs
    torch.testing.assert_close(
        enc(fp), MLPEncoder(2048, hidden=(8,), seed=0, sparse_input=False)(fp)
    )
    with pytest.raises(ValueError, match="sparse_input"):
        MLPEncoder(3, hidden=(4,), sparse_input="always")
    with pytest.raises(TypeError, match="sparse_input"):
        MLPEncoder(3, hidden=(4,), sparse_input=1)


def test_seeded_encoder_leaves_the_global_stream_alone():
    """MLPEncoder(seed=...) drew nn.Linear's default initialisation from torch's global stream
    before overwriting it from the seed, so building a seeded encoder changed every later
    unseeded draw of the caller. The weights are the seed's uniform draws, layer by layer."""
    import torch

    from probrec.backbone import MLPEncoder

    state = torch.get_rng_state()
    enc = MLPEncoder(6, hidden=(5,), out_dim=3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    g = torch.Generator().manual_seed(4)
    for lin, n_in in zip(enc.linear_layers(), (6, 5)):
        b = n_in**-0.5
        w = torch.empty(lin.weight.shape).uniform_(-b, b, generator=g)
        bias = torch.empty(lin.bias.shape).uniform_(-b, b, generator=g)
        assert torch.equal(lin.weight, w) and torch.equal(lin.bias, bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_encoder_encodes_a_row_alike_in_any_batch(dtype) -> None:
    """A half-precision encoder on CPU sent a large fingerprint batch ("auto": sparse) to a CSR
    product torch lacks ('"addmm_out_sparse_csr_impl_mkl" not implemented for 'Half''), while
    16 of its rows (dense) went through; both now take the dense product, and a row's features
    equal the float64 encoder's up to the dtype's rounding, whatever else is in the batch."""
    x = _fingerprints((256, 2048), 0.02, torch.float32)
    enc = MLPEncoder(2048, hidden=(64,), out_dim=8, seed=0).eval()
    ref = enc.double()(x.double())[:16]
    half = MLPEncoder(2048, hidden=(64,), out_dim=8, seed=0).to(dtype).eval()
    with torch.no_grad():
        whole, part = half(x.to(dtype))[:16], half(x[:16].to(dtype))
    torch.testing.assert_close(whole, part, rtol=0, atol=0)
    torch.testing.assert_close(whole.double(), ref, rtol=0.05, atol=0.02)
    forced = MLPEncoder(2048, hidden=(64,), seed=0, sparse_input=True).to(dtype)
    with pytest.raises(ValueError, match="sparse_input=True"):
        forced(x.to(dtype))


def test_inputs_on_another_device_than_the_weights_are_named() -> None:
    """x on another device than the parameters failed inside the first matmul with torch's
    'Tensor on device cpu is not on the expected device meta!'; now a ValueError naming x."""
    enc = MLPEncoder(2048, hidden=(8,), seed=0)
    with pytest.raises(ValueError, match="x is on device meta but the encoder's parameters"):
        enc(torch.zeros(4, 2048, device="meta"))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_gmp_layer_computes_its_own_parameters_function(dtype, tol) -> None:
    """GmP unit vectors from half-precision angles took the sines in that precision, and their
    rounding compounds over the 2047-factor prefix products: a bfloat16 GmP encoder on 2048
    inputs was 25% off (relative feature error; 1.2% in float16) the float64 map of its own
    angles, against 0.2% for a standard bfloat16 encoder. Now the trigonometry runs in
    float32, and the features match the float64 evaluation of the same parameters to the
    dtype's rounding."""
    x = _fingerprints((64, 2048), 0.02, torch.float32)
    enc = MLPEncoder(2048, hidden=(64,), out_dim=8, gmp=True, seed=0).to(dtype).eval()
    ref = copy.deepcopy(enc).double()  # the same (rounded) parameters, evaluated in float64
    with torch.no_grad():
        for lin, lin64 in zip(enc.linear_layers(), ref.linear_layers(), strict=True):
            err = (lin.direction.double() - lin64.direction).norm(dim=-1).max()
            assert float(err) < 2 * tol  # unit vectors, rounded once to the dtype
        y, y64 = enc(x.to(dtype)).double(), ref(x.double())
    assert float((y - y64).norm() / y64.norm()) < 10 * tol
