"""Meta-training internals against independent computations: batch-norm statistics of padded
meta-batches, and what :func:`metalearn.training.check_resumable` reads of a checkpoint."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

import metalearn.training as training
from metalearn import ADKFIFT, DKT, KNN, evaluate
from metalearn.episodes import MetaBatch, stack_episodes
from metalearn.hypergrad import implicit_argmin
from metalearn.protonet import ProtoNet
from probrec.data import latent_feature_tasks, sample_episode

from .conftest import TINY_META


def _padded_batch() -> tuple[MetaBatch, MetaBatch]:
    """Four episodes whose query sets have 20 and 110 rows (padded to 110), and the same
    batch padded with 40 more zero rows."""
    tasks = latent_feature_tasks(2, 30, dim=5, seed=1) + latent_feature_tasks(2, 120, dim=5, seed=2)
    batch = stack_episodes([sample_episode(t, 10, seed=i) for i, t in enumerate(tasks)])
    b, n_q, d = batch.query_x.shape
    more = MetaBatch(
        batch.support_x,
        batch.support_y,
        torch.cat([batch.query_x, torch.zeros(b, 40, d)], 1),
        torch.cat([batch.query_y, torch.zeros(b, 40)], 1),
        torch.cat([batch.query_mask, torch.zeros(b, 40, dtype=torch.bool)], 1),
        batch.names,
    )
    return batch, more


@pytest.mark.parametrize("cls", [ADKFIFT, DKT, ProtoNet])
def test_batch_norm_statistics_cover_the_real_rows_not_the_padding(cls):
    """With ``norm="batch"`` the zero rows padding short query sets went through the encoder in
    the batch-norm call: 180 of 480 rows here, moving every support feature by up to 0.31 and
    the running statistics kept for adaptation; the loss depended on how much padding there
    was. Now the statistics are those of the real rows, as batch norm over them alone gives."""
    batch, more = _padded_batch()
    m = cls(hidden=(16,), out_dim=4, norm="batch")
    m.build(5)
    reference = copy.deepcopy(m.encoder)
    b, n_s, d = batch.support_x.shape
    real = torch.cat([batch.support_x.reshape(-1, d), batch.query_x[batch.query_mask]])
    m.encoder.train()
    reference.train()
    with torch.no_grad():
        z_ref = reference(real)  # batch norm over the real rows only
    loss = m.episode_loss(batch)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.encoder.parameters())
    for name, buf in reference.named_buffers():  # running mean / var / count
        torch.testing.assert_close(dict(m.encoder.named_buffers())[name], buf, rtol=0, atol=0)
    if cls is not ProtoNet:
        with torch.no_grad():
            z_s, z_q = m._features(batch)
        torch.testing.assert_close(z_s.reshape(-1, z_s.shape[-1]).float(), z_ref[: b * n_s])
        torch.testing.assert_close(z_q[batch.query_mask].float(), z_ref[b * n_s :])
    with torch.no_grad():  # the amount of padding changes nothing
        torch.testing.assert_close(m.episode_loss(more), loss.detach(), rtol=1e-6, atol=0)


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` of this process (``/proc/self/maps``), or ``None``."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        lo, hi = (int(a, 16) for a in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) > 5 else None
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
def test_check_resumable_leaves_the_checkpoint_tensors_on_disk(cls_tasks, tmp_path, monkeypatch):
    """``check_resumable`` read the whole checkpoint (weights, best weights, Adam moments: 134
    MiB, 135 MiB of resident memory and 159 ms for the reference encoder) that ``meta_train``
    then loads again; now its tensors stay memory-mapped, unread, and the refusals are the
    same."""
    tr, va = cls_tasks[:6], cls_tasks[6:]
    cfg = {**TINY_META, "n_steps": 2, "eval_every": 2}
    ADKFIFT(**cfg).meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    ckpt = tmp_path / "last.pt"
    seen = []
    load = torch.load

    def spy(*args, **kwargs):
        out = load(*args, **kwargs)
        ptr = out["optimizer"]["state"][0]["exp_avg"].data_ptr()
        seen.append(_mapped_file(ptr))
        return out

    monkeypatch.setattr(training.torch, "load", spy)
    learner = ADKFIFT(**{**cfg, "n_steps": 4})
    training.check_resumable(learner, learner.train_config, tmp_path)
    assert seen == [str(ckpt)]  # the Adam moment lies in a mapping of the file, unread
    monkeypatch.undo()
    with pytest.raises(ValueError, match="other options \\(lr: "):
        learner = ADKFIFT(**{**cfg, "lr": 0.5})
        training.check_resumable(learner, learner.train_config, tmp_path)
    with pytest.raises(ValueError, match="not a classification DKT"):
        training.check_resumable(DKT(**cfg), DKT(**cfg).train_config, tmp_path)
    # the mapping is gone: meta_train resumes and replaces the file as before
    longer = ADKFIFT(**{**cfg, "n_steps": 4})
    longer.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    assert longer.history["step"] == [0, 1, 2, 3]
    assert int(np.asarray(load(ckpt, weights_only=False)["step"])) == 4


@pytest.mark.parametrize(
    ("cls", "extra"),
    [(ADKFIFT, {"norm": "batch", "dropout": 0.2}), (DKT, {"dropout": 0.2}), (ProtoNet, {})],
)
def test_an_extended_run_equals_an_uninterrupted_one_bit_for_bit(cls_tasks, tmp_path, cls, extra):
    """A run resumed from a shorter run's checkpoint ends with the uninterrupted run's weights,
    optimizer state and history, bit for bit; its history recorded the shorter run's config
    (``n_steps`` 4 for a run of 6 steps)."""
    tr, va = cls_tasks[:6], cls_tasks[6:]
    cfg = {**TINY_META, "lr": 1e-2, **extra}
    full = cls(**{**cfg, "n_steps": 6})
    full.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / "a")
    cls(**cfg).meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / "b")
    torch.rand(3)  # the global stream moves on between the runs, as in a new process
    resumed = cls(**{**cfg, "n_steps": 6})
    resumed.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / "b")
    a, b = (torch.load(p / "last.pt", weights_only=False) for p in (tmp_path / "a", tmp_path / "b"))
    for k, mod in a["learner"]["modules"].items():
        for name, t in mod.items():
            assert torch.equal(t, b["learner"]["modules"][k][name]), (k, name)
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s_a[k], s_b[k]) for k in s_a)
    for m_a, m_b in zip(full.modules().values(), resumed.modules().values()):  # the best state
        assert all(
            torch.equal(x, y) for x, y in zip(m_a.state_dict().values(), m_b.state_dict().values())
        )
    assert {k: v for k, v in full.history.items() if k != "seconds"} == {
        k: v for k, v in resumed.history.items() if k != "seconds"
    }
    assert resumed.history["config"]["n_steps"] == 6


def test_evaluate_and_meta_fit_name_the_argument_on_bad_input(cls_tasks):
    """Each of these failed with a bare ``'int' / 'KNN' / 'Task' object is not iterable``, or
    returned an empty result (no learners; a classification support size of 1, whose every
    task was skipped, with a warning blaming the tasks)."""
    knn = {"kNN": KNN()}
    with pytest.raises(TypeError, match="support_sizes must be a sequence"):
        evaluate(knn, cls_tasks, 16, 1)
    with pytest.raises(TypeError, match="learners must be .* got a single KNN"):
        evaluate(KNN(), cls_tasks, (16,), 1)
    with pytest.raises(ValueError, match="learners is empty"):
        evaluate({}, cls_tasks, (16,), 1)
    with pytest.raises(ValueError, match="support_sizes \\[1, 16\\] holds 1"):
        evaluate(knn, cls_tasks, (1, 16), 1)
    with pytest.raises(TypeError, match="tasks must be a list of Task objects, got Task"):
        evaluate(knn, cls_tasks[0], (16,), 1)
    with pytest.raises(TypeError, match="tasks must hold Task objects, but tasks\\[1\\] is"):
        evaluate(knn, [cls_tasks[0], "assay"], (16,), 1)
    m = ADKFIFT(**TINY_META)
    with pytest.raises(TypeError, match="train_tasks must be a list of Task objects, got Task"):
        m.meta_fit(cls_tasks[0], progress=False)
    with pytest.raises(TypeError, match="valid_tasks must be a list of Task objects, got Task"):
        m.meta_fit(cls_tasks[:6], cls_tasks[6], progress=False)
    assert not m.trainable_modules()  # refused before anything was built
    # what worked still does: arrays and ranges of sizes, tuples of tasks, a list of learners
    a = evaluate(knn, tuple(cls_tasks), np.array([16]), 2).summary()
    b = evaluate([KNN()], cls_tasks, range(16, 17), 2).summary()
    assert a["kNN"] == b["kNN"] and a["kNN"][16]["n_tasks"] == len(cls_tasks)


def test_exact_solver_takes_per_task_hessian_blocks_and_wrong_shapes_are_named():
    """``hessian`` may be ``[T, p, p]`` blocks (documented), but the exact solver reshaped them
    to ``[n, n]`` inside ``loss.backward()`` (RuntimeError "shape '[6, 6]' is invalid for input
    of size 12"); a wrong shape failed there too. Now the blocks are assembled block-diagonally
    and the hypergradient is the closed form; other shapes are refused at the call."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    a = m @ m.transpose(-1, -2) + 2 * torch.eye(2, dtype=torch.float64)  # SPD per task
    phi = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def inner(th, ph):  # theta_t* = A_t^-1 sin(phi_t)
        return (0.5 * (th[:, None] @ a @ th[..., None]).sum() - (ph.sin() * th).sum()).sum()

    star = torch.linalg.solve(a, phi.detach().sin()[..., None])[..., 0]
    w = torch.randn(3, 2, generator=g, dtype=torch.float64)
    # d/dphi of sum(w * theta*) = cos(phi) * A^-1 w (A symmetric)
    want = phi.detach().cos() * torch.linalg.solve(a, w[..., None])[..., 0]
    for solver in ("exact", "block", "auto"):
        phi.grad = None
        (implicit_argmin(inner, star, [phi], solver=solver, hessian=a) * w).sum().backward()
        torch.testing.assert_close(phi.grad, want, rtol=1e-12, atol=1e-12)
    for bad in (a[:2], torch.eye(5, dtype=torch.float64), a[0]):
        with pytest.raises(ValueError, match=r"hessian must be the dense \[6, 6\] Hessian"):
            implicit_argmin(inner, star, [phi], solver="exact", hessian=bad)
