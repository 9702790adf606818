"""Audit checks of the classical samplers and their targets (dtype of the starting states,
target construction arguments)."""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.targets import BNNPosterior, DoubleWell4, LennardJones


@pytest.mark.parametrize(
    "make",
    [DoubleWell4, lambda: LennardJones(13), lambda: BNNPosterior(n_train=20, n_test=5)],
    ids=["dw4", "lj13", "bnn"],
)
def test_starting_states_follow_the_targets_dtype(make):
    # a float64 target started its chains in float32 (torch's default dtype), so the whole run,
    # the target's densities included, was float32 whatever target.double() asked for
    target = make().double()
    g = torch.Generator().manual_seed(0)
    assert target.init_positions(3, g).dtype == torch.float64
    mala = samplers.MALA(n_chains=3, burn_in=3, step_size=1e-5, adapt=False, progress=False)
    res = mala.run(target, 3, seed=0)
    assert res.samples.dtype == torch.float64
    assert make().init_positions(3, torch.Generator().manual_seed(0)).dtype == torch.float32


def test_dw4_float32_starting_states_are_unchanged():
    # the published tables' runs start from the same numbers as before the dtype fix
    x = DoubleWell4().init_positions(5, torch.Generator().manual_seed(7))
    assert torch.equal(x, 2.0 * torch.randn(5, 8, generator=torch.Generator().manual_seed(7)))


def test_bnn_seed_must_be_an_int():
    # int(seed) made seed=1.5 the data of seed 1 and seed="3" those of seed 3
    for bad in (1.5, "3"):
        with pytest.raises(TypeError, match="seed"):
            BNNPosterior(n_train=5, n_test=5, seed=bad)
    with pytest.raises(ValueError, match="seed"):
        BNNPosterior(n_train=5, n_test=5, seed=-1)
    assert BNNPosterior(n_train=5, n_test=5, seed=2).seed == 2


def test_integer_options_take_numpy_ints_and_name_bad_values():
    """HMC(n_leapfrog=np.int64(5)) (a value read from an array or a config) was refused as 'not
    a positive int', DiGS(alphas=torch.tensor(0.1)) failed with 'iteration over a 0-d tensor'
    and MoG40(seed=1.5) with torch's unnamed RuntimeError."""
    import numpy as np
    import torch

    import samplers
    from samplers.targets import MoG40

    assert samplers.HMC(n_leapfrog=np.int64(5)).kernel.n_leapfrog == 5
    assert len(samplers.ParallelTempering(n_temperatures=np.int64(4)).temperatures) == 4
    digs = samplers.DiGS(alphas=torch.tensor(0.1), n_mala=np.int64(2), sweeps_per_level=np.int32(1))
    assert digs.alphas == [pytest.approx(0.1)] and digs.n_mala == 2
    assert samplers.DiGS(alphas=np.array([0.1, 0.5])).alphas == [0.1, 0.5]
    for make, name in (
        (lambda: samplers.HMC(n_leapfrog=2.0), "n_leapfrog"),
        (lambda: samplers.DiGS(n_mala=1.5), "n_mala"),
        (lambda: MoG40(seed=1.5), "seed"),
    ):
        with pytest.raises(TypeError, match=name):
            make()
    with pytest.raises(ValueError, match="n_mala"):
        samplers.DiGS(n_mala=-1)
    assert torch.equal(MoG40(seed=np.int64(0)).means, MoG40().means)
