"""Worker for the two-process gloo test (run with torch.multiprocessing)."""

import numpy as np
import torch
import torch.distributed as dist


def make_learner_and_batch(name: str = "ADKFIFT"):
    """A built ``metalearn.<name>`` on 10 input features and one 6-task meta-batch."""
    import metalearn
    from metalearn.episodes import eligible_tasks, sample_meta_batch
    from probrec.data import latent_feature_tasks

    tasks = latent_feature_tasks(12, 64, dim=10, seed=0)
    learner = getattr(metalearn, name)(
        hidden=(16,), support_size=12, query_size=20, batch_size=6, seed=0
    )
    learner.build(10)
    batch = sample_meta_batch(eligible_tasks(tasks, 12), 6, 12, 20, np.random.default_rng(0))
    return learner, batch


def gradients(learner, batch):
    from metalearn.training import meta_gradient

    params = list(learner.encoder.parameters())
    loss = meta_gradient(learner, batch, len(batch), params)
    return loss, [p.grad.detach().clone() for p in params]


def run(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        learner, batch = make_learner_and_batch()
        loss, grads = gradients(learner, batch)
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def run_meta_fit(rank: int, world: int, init_file: str, out: str, batch_size: int) -> None:
    """``meta_fit`` of a small ADKF-IFT on every rank; writes the error message (or "") per
    rank to ``out.<rank>``."""
    from metalearn import ADKFIFT
    from probrec.data import latent_feature_tasks

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tasks = latent_feature_tasks(12, 64, dim=10, seed=0)
        learner = ADKFIFT(
            hidden=(8,), support_size=12, query_size=20, batch_size=batch_size, n_steps=1, seed=0
        )
        try:
            learner.meta_fit(tasks, progress=False)
            msg = ""
        except ValueError as err:
            msg = str(err)
        with open(f"{out}.{rank}", "w") as f:
            f.write(msg)
    finally:
        dist.destroy_process_group()
