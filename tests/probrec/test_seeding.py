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


def test_child_seeds_are_fixed_distinct_and_independent_of_how_many() -> None:
    from probrec.seeding import child_seeds

    a = child_seeds(5, 3)
    assert a == child_seeds(5, 3) and a[:2] == child_seeds(5, 2)
    assert len(set(a)) == 3 and all(0 <= s < 2**63 for s in a)
    # neither the parent nor its neighbours' children: no stream shared with seed 5 or seed 6
    assert 5 not in a and not set(a) & set(child_seeds(6, 3))
    with pytest.raises(TypeError, match="seed"):
        child_seeds(1.5, 2)
    with pytest.raises(ValueError, match="n must be"):
        child_seeds(1, 0)


def test_fit_multitask_draws_its_minibatch_order_apart_from_its_initialisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order generator was seeded with the initialisation's seed: the first epoch's
    permutation was the one a fresh ``Generator(seed)`` draws first."""
    from metalearn.identifiability import fit_multitask

    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randn(64, 2)
    seen = []
    real = torch.randperm

    def spy(n, *args, **kwargs):
        out = real(n, *args, **kwargs)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(torch, "randperm", spy)
    fit_multitask(x, y, 2, hidden=(4,), epochs=1, batch_size=16, seed=3)
    monkeypatch.undo()
    assert len(seen) == 1
    assert not torch.equal(seen[0], torch.randperm(64, generator=torch.Generator().manual_seed(3)))


def test_wrap_seed_reduces_derived_seeds_into_check_seeds_range() -> None:
    from probrec.checks import check_seed
    from probrec.seeding import wrap_seed

    assert wrap_seed(7) == 7 and wrap_seed(2**63 - 1) == 2**63 - 1  # in range: itself
    for value in (2**63, 2**63 + 5, (2**63 - 1) * 1_000 + 999):
        assert wrap_seed(value) == value - (value // 2**63) * 2**63
        assert check_seed(wrap_seed(value)) == wrap_seed(value)
