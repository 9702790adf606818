"""Audit checks of the meta-learners: DKT's data-parallel start."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _dkt_and_batch():
    from tests.metalearn._ddp_worker import make_learner_and_batch

    return make_learner_and_batch("DKT")


def _dkt_step(learner, batch):
    from metalearn.training import meta_gradient

    params = [p for m in learner.trainable_modules().values() for p in m.parameters()]
    loss = meta_gradient(learner, batch, len(batch), params)
    return loss, learner.hyper.theta.detach().clone(), [p.grad.detach().clone() for p in params]


def _dkt_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_dkt_step(*_dkt_and_batch()), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_dkt_ranks_start_from_the_single_process_lengthscale(tmp_path):
    """DKT's lengthscale starts at the median heuristic of the first meta-batch: under
    torch.distributed every rank saw only its own tasks (log lengthscales 0.162 and 0.290
    against 0.201 in one process), so the ranks trained different models."""
    from tests.metalearn import test_learners_audit as w

    mp.start_processes(
        w._dkt_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path / "out")),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    loss, theta, grads = _dkt_step(*_dkt_and_batch())
    for r_loss, r_theta, r_grads in ranks:
        torch.testing.assert_close(r_theta, theta, rtol=0, atol=1e-12)
        assert r_loss == pytest.approx(loss, rel=1e-6)
        for a, b in zip(r_grads, grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "option,value,error",
    [
        ("inner_max_iter", 0, ValueError),
        ("inner_tol", -1.0, ValueError),
        ("inner_tol", float("nan"), ValueError),
        ("joint_outer", "no", TypeError),
    ],
)
def test_inner_loop_options_are_checked_when_the_learner_is_made(option, value, error):
    """inner_max_iter=0 / inner_tol=-1 failed only at the first validation, eval_every steps
    into meta-training and named as max_iter / tol; joint_outer='no' trained with the joint
    outer loss (bool('no') is True)."""
    from metalearn import ADKF, ADKFIFT, DKT
    from metalearn.protonet import ProtoNet

    for cls in (ADKFIFT, ADKF, DKT, ProtoNet):
        with pytest.raises(error, match=option):
            cls(**{option: value})


def test_meta_training_reports_inner_fits_that_stopped_before_the_tolerance():
    """An ADKF-IFT inner fit that hits inner_max_iter gives an inexact hypergradient; meta_fit
    used to say nothing. The history lists [step, tasks] for such steps (the first step's
    count checked against an independent one-iteration fit of the same batch on the initial
    encoder) and a warning names the total."""
    import warnings

    from metalearn import ADKFIFT, DKT
    from metalearn.episodes import eligible_tasks, sample_meta_batch
    from probrec.data import latent_feature_tasks
    from probrec.gp import fit_hyperparameters, geometry, prior_centres

    tasks = latent_feature_tasks(12, 64, dim=10, seed=0)
    opts = dict(hidden=(16,), support_size=12, query_size=20, batch_size=4, n_steps=3, seed=0)
    rough = dict(inner_max_iter=1, inner_tol=1e-12, **opts)
    with pytest.warns(RuntimeWarning, match="inner fit of .* task"):
        hist = ADKFIFT(**rough).meta_fit(tasks, progress=False)
    assert [s for s, _ in hist["inner_unconverged"]] == [0, 1, 2]

    fresh = ADKFIFT(**rough)
    fresh.build(10)
    batch = sample_meta_batch(eligible_tasks(tasks, 12), 4, 12, 20, np.random.default_rng([0, 0]))
    c = fresh.gp_config
    with torch.no_grad():
        z = fresh.encoder(batch.support_x.reshape(-1, 10)).reshape(4, 12, -1).double()
    geom = geometry(c, z, z)
    t = 2.0 * batch.support_y.double() - 1.0
    fit = fit_hyperparameters(
        c, geom, t, None, prior_centres(c, z, geom=geom), tol=1e-12, max_iter=1
    )
    assert hist["inner_unconverged"][0][1] == int((~fit.converged).sum()) > 0

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for learner in (ADKFIFT(**opts), DKT(**opts)):
            assert "inner_unconverged" not in learner.meta_fit(tasks, progress=False)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_meta_batch_smaller_than_the_world_is_refused_on_every_rank(tmp_path, batch_size):
    """With batch_size 1 on 2 ranks, rank 1 got an empty meta-batch (and a failure of its own
    while rank 0 waited in all_reduce); every rank now refuses it before training, and
    batch_size 2 trains."""
    from tests.metalearn import _ddp_worker as w

    mp.start_processes(
        w.run_meta_fit,
        args=(2, str(tmp_path / "init"), str(tmp_path / "out"), batch_size),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    msgs = [(tmp_path / f"out.{r}").read_text() for r in range(2)]
    if batch_size == 1:
        assert all(
            "batch_size=1 is smaller than the torch.distributed world size 2" in m for m in msgs
        )
    else:
        assert msgs == ["", ""]
