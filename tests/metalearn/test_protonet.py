"""ProtoNet's distances against direct NumPy computations; the Mahalanobis option end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metalearn import MetaLearner
from metalearn.protonet import ProtoNet, _logits
from probrec.data import latent_feature_tasks, sample_episode, split_tasks

SMALL = dict(
    n_steps=12, batch_size=4, support_size=16, query_size=32, lr=1e-3, hidden=(24,), eval_every=6
)


def _direct_logits(z_s: np.ndarray, y_s: np.ndarray, z_q: np.ndarray, distance: str):
    """One task, one class at a time: np.cov and an explicit inverse (FS-Mol's recipe)."""
    out = np.empty((len(z_q), 2))
    task_cov = np.cov(z_s, rowvar=False)
    for c in (0, 1):
        zc = z_s[y_s == c]
        diff = z_q - zc.mean(0)
        if distance == "euclidean":
            out[:, c] = -(diff**2).sum(1)
            continue
        cls_cov = np.cov(zc, rowvar=False) if len(zc) > 1 else np.zeros_like(task_cov)
        cov = 0.1 * cls_cov + 0.9 * task_cov + 0.1 * np.eye(z_s.shape[1])
        out[:, c] = -np.einsum("md,de,me->m", diff, np.linalg.inv(cov), diff)
    return out


@pytest.mark.parametrize("distance", ["euclidean", "mahalanobis"])
def test_logits_match_a_direct_computation(distance):
    rng = np.random.default_rng(0)
    b, n, m, d = 3, 10, 7, 5
    z_s, z_q = rng.normal(size=(b, n, d)), rng.normal(size=(b, m, d))
    y_s = np.zeros((b, n))
    y_s[:, :4] = 1
    y_s[2] = 0
    y_s[2, 0] = 1  # a class with one support point: its own covariance is zero
    y_s = rng.permuted(y_s, axis=1)
    got = _logits(*(torch.tensor(a) for a in (z_s, y_s, z_q)), distance).numpy()
    for t in range(b):
        want = _direct_logits(z_s[t], y_s[t], z_q[t], distance)
        np.testing.assert_allclose(got[t], want, rtol=1e-10, atol=1e-10)


def test_mahalanobis_protonet_meta_trains_and_reloads_identically(tmp_path):
    tr, va, te = split_tasks(latent_feature_tasks(30, 96, dim=12, seed=0), (22, 4, 4), seed=0)
    learner = ProtoNet(distance="mahalanobis", **SMALL)
    learner.meta_fit(tr, va, progress=False)
    ep = sample_episode(te[0], 16, seed=0)
    p = learner.adapt(ep.support_x, ep.support_y).predict_proba(ep.query_x)
    assert torch.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    euclid = ProtoNet(**SMALL)
    euclid.meta_fit(tr, va, progress=False)
    q = euclid.adapt(ep.support_x, ep.support_y).predict_proba(ep.query_x)
    assert not torch.allclose(p, q)  # the option reaches training and prediction
    back = MetaLearner.load(learner.save(tmp_path / "m.pt"))
    assert back.config["distance"] == "mahalanobis"
    torch.testing.assert_close(back.adapt(ep.support_x, ep.support_y).predict_proba(ep.query_x), p)


def test_unknown_distance_is_refused():
    with pytest.raises(ValueError, match="distance"):
        ProtoNet(distance="cosine")


def test_a_checkpoint_from_before_the_option_resumes_as_euclidean(tmp_path):
    """Options added after a checkpoint was written ran as their defaults there (a ProtoNet
    checkpoint without ``distance`` was refused as written with other options)."""
    tr, va, _ = split_tasks(latent_feature_tasks(30, 96, dim=12, seed=0), (22, 4, 4), seed=0)
    cfg = {**SMALL, "n_steps": 8, "eval_every": 4}
    ProtoNet(**cfg).meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    (path,) = tmp_path.glob("**/last.pt")
    saved = torch.load(path, weights_only=False)
    del saved["learner"]["config"]["distance"]
    torch.save(saved, path)
    with pytest.raises(ValueError, match="other options \\(distance: 'euclidean' -> 'mahal"):
        ProtoNet(**{**cfg, "distance": "mahalanobis"}).meta_fit(
            tr, va, progress=False, checkpoint_dir=tmp_path
        )
    longer = ProtoNet(**{**cfg, "n_steps": 12})
    longer.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    assert longer.history["step"] == list(range(12))
