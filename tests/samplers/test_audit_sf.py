"""Checks found missing by the samplers / flows / recsys audit (F4, F6, F12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samplers
from samplers.metrics import mmd
from samplers.targets import Gaussian, ManyWell, MoG40, from_log_prob

TARGETS = {
    "mog40": MoG40,
    "manywell": ManyWell,
    "gaussian": lambda: Gaussian(torch.zeros(2)),
    "callable": lambda: from_log_prob(lambda x: -0.5 * (x**2).sum(-1), 2),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
@pytest.mark.parametrize("method", ["log_prob", "log_prob_and_grad"])
def test_target_refuses_inputs_that_are_not_n_by_d(name, method):
    # a 1-D x reached torch errors, or (Gaussian) returned a 0-d tensor
    target = TARGETS[name]()
    fn = getattr(target, method)
    d = target.dim
    for shape in [(d,), (2, 3, d), ()]:
        with pytest.raises(ValueError, match=rf"x must have shape \(n, {d}\)"):
            fn(torch.zeros(shape))
    with pytest.raises(ValueError, match=rf"x must have shape \(n, {d}\)"):
        fn(torch.zeros(3, d + 1))
    with pytest.raises(TypeError, match="floating"):  # "result type Float can't be cast"
        fn(torch.zeros(3, d, dtype=torch.long))
    out = fn(torch.zeros(3, d))
    lp = out[0] if isinstance(out, tuple) else out
    assert lp.shape == (3,)


def test_ptsd_hot_fraction_must_be_a_number():
    with pytest.raises(TypeError, match="hot_fraction"):  # '<' not supported ... 'str'
        samplers.PTSD(hot_fraction="0.4")
    with pytest.raises(ValueError, match="hot_fraction"):
        samplers.PTSD(hot_fraction=float("nan"))
    with pytest.raises(ValueError, match="hot_fraction"):
        samplers.PTSD(hot_fraction=1.0)
    assert samplers.PTSD(hot_fraction=np.float32(0.25)).hot_fraction == 0.25


def test_mmd_takes_one_bandwidth():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, generator=gen), torch.randn(50, 2, generator=gen) + 0.5
    one = mmd(x, y, bandwidths=1.0)  # 'float' object is not iterable
    assert one == mmd(x, y, bandwidths=[1.0]) == mmd(x, y, bandwidths=np.float32(1.0))
    assert one == mmd(x, y, bandwidths=torch.tensor(1.0))
    two = mmd(x, y, bandwidths=(1.0, 2.0))
    assert two == mmd(x, y, bandwidths=np.array([1.0, 2.0]))
    assert two == mmd(x, y, bandwidths=torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    ("bandwidths", "error"),
    [
        ("2", TypeError),
        (["a"], TypeError),
        ([True], TypeError),
        ([], ValueError),
        (0.0, ValueError),
        ([float("nan")], ValueError),
        (-1.0, ValueError),
    ],
)
def test_mmd_names_bad_bandwidths(bandwidths, error):
    x = torch.zeros(4, 2)
    with pytest.raises(error, match="bandwidths"):
        mmd(x, x, bandwidths=bandwidths)
