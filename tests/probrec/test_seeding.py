"""Seeds and generators (probrec.seeding)."""

from __future__ import annotations

import pytest
import torch

from probrec.seeding import seeded_rng


def test_seeded_rng_draws_as_torch_manual_seed_and_restores_the_global_stream():
    torch.manual_seed(11)
    ref_next = torch.rand(5)  # what the global stream gives next without the block
    torch.manual_seed(3)
    ref_block = torch.rand(5), torch.nn.functional.dropout(torch.ones(64), 0.5)
    torch.manual_seed(11)
    with seeded_rng(3, torch.device("cpu")):
        block = torch.rand(5), torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(block[0], ref_block[0]) and torch.equal(block[1], ref_block[1])
    assert torch.equal(torch.rand(5), ref_next)
    with seeded_rng(None, torch.device("cpu")):  # no seed: the global stream runs on
        assert not torch.equal(torch.rand(5), ref_block[0])


def test_seeded_rng_names_a_bad_seed():
    with pytest.raises(TypeError, match="seed"), seeded_rng(1.5):
        pass


def test_check_generator_device_names_the_argument_and_both_devices():
    from probrec.seeding import check_generator_device

    g = torch.Generator()
    assert check_generator_device(g, "cpu") is g
    with pytest.raises(ValueError, match=r"seed is a torch.Generator on cpu .* made on meta"):
        check_generator_device(g, "meta")
