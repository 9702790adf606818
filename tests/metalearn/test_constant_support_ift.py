"""ADKF-IFT on a regression support with constant labels: the task keeps the prior modes of
its hyperparameters (probrec.gp.fit holds them), which are no stationary point of its inner
objective, so the implicit-function-theorem term does not apply: its meta-gradient must be the
one with ``theta`` held constant, i.e. ADKF's."""

from __future__ import annotations

import torch

import metalearn
from metalearn.episodes import MetaBatch


def _learners():
    kw = dict(kind="regression", hidden=(8,), out_dim=4, seed=0)
    ift, plain = metalearn.ADKFIFT(**kw), metalearn.ADKF(**kw)
    ift.build(6)
    plain.build(6)
    plain.encoder.load_state_dict(ift.encoder.state_dict())
    return ift, plain


def _batch(support_y: torch.Tensor) -> MetaBatch:
    g = torch.Generator().manual_seed(0)
    b, n_s, n_q = support_y.shape[0], support_y.shape[1], 10
    return MetaBatch(
        torch.randn(b, n_s, 6, generator=g),
        support_y,
        torch.randn(b, n_q, 6, generator=g),
        torch.randn(b, n_q, generator=g),
        torch.ones(b, n_q, dtype=torch.bool),
        [f"t{i}" for i in range(b)],
    )


def _grad(learner, batch: MetaBatch) -> torch.Tensor:
    learner.encoder.zero_grad()
    learner.episode_loss(batch).backward()
    return torch.cat([p.grad.flatten() for p in learner.encoder.parameters()])


def test_constant_support_gets_no_implicit_term_and_other_tasks_keep_theirs() -> None:
    ift, plain = _learners()
    flat = _batch(torch.full((1, 8), 2.5))
    assert bool(ift.episode_loss(flat) == plain.episode_loss(flat))
    torch.testing.assert_close(_grad(ift, flat), _grad(plain, flat), rtol=1e-10, atol=1e-12)
    assert bool(ift.last_fit.held.all())
    # in a batch with an informative task, that task's IFT term is unchanged
    informative = _batch(torch.randn(1, 8, generator=torch.Generator().manual_seed(3)))
    both = MetaBatch(
        *(
            torch.cat([getattr(flat, k), getattr(informative, k)])
            for k in ("support_x", "support_y", "query_x", "query_y", "query_mask")
        ),
        flat.names + informative.names,
    )
    want = _grad(plain, flat) + _grad(ift, informative)
    assert not torch.allclose(_grad(ift, informative), _grad(plain, informative))
    torch.testing.assert_close(_grad(ift, both), want, rtol=1e-4, atol=1e-4 * float(want.norm()))
