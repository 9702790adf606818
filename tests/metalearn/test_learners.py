"""Meta-learners: the shared interface, checkpoints, resume, distributed gradients."""

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from metalearn import ADKF, ADKFIFT, DKT, MetaLearner
from metalearn.dkl import DKL
from metalearn.metrics import delta_auprc, r2_os
from metalearn.protonet import ProtoNet
from metalearn.single_task import GPST, KNN, LogisticRegression, RandomForest
from probrec.data import latent_feature_tasks, sample_episode, split_tasks

SMALL = dict(
    n_steps=12, batch_size=4, support_size=16, query_size=32, lr=1e-3, hidden=(24,), eval_every=6
)


@pytest.fixture(scope="module")
def tasks():
    return split_tasks(latent_feature_tasks(40, 96, dim=12, seed=0), (30, 5, 5), seed=0)


@pytest.fixture(scope="module")
def reg_tasks():
    return split_tasks(
        latent_feature_tasks(30, 80, dim=12, kind="regression", seed=1), (22, 4, 4), seed=0
    )


def _learners(kind):
    out = [
        ADKFIFT(kind, **SMALL),
        ADKF(kind, **SMALL),
        DKT(kind, **SMALL),
        DKL(kind, steps=15),
        GPST(kind, mean="constant" if kind == "regression" else "zero"),
        RandomForest(kind, n_estimators=20),
        KNN(kind),
    ]
    if kind == "classification":
        out += [ProtoNet(kind, **SMALL), LogisticRegression(kind)]
    return out


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_every_learner_follows_the_interface_and_reloads_identically(
    kind, tasks, reg_tasks, tmp_path
):
    tr, va, te = tasks if kind == "classification" else reg_tasks
    for learner in _learners(kind):
        learner.meta_fit(tr, va, progress=False)
        task = te[0]
        if isinstance(learner, GPST):  # Tanimoto needs non-negative inputs
            task = task.with_inputs(np.abs(task.inputs))
        ep = sample_episode(task, 16, seed=0)
        pred = learner.adapt(ep.support_x, ep.support_y)
        mean, var = pred.predict(ep.query_x)
        assert mean.shape == var.shape == (len(ep.query_index),)
        assert bool(torch.isfinite(mean).all()) and bool((var >= 0).all())
        if kind == "classification":
            p = pred.predict_proba(ep.query_x)
            assert bool(((p >= 0) & (p <= 1)).all())
        path = learner.save(tmp_path / f"{learner.name}-{kind}.pt")
        again = MetaLearner.load(path)
        mean2, var2 = again.adapt(ep.support_x, ep.support_y).predict(ep.query_x)
        torch.testing.assert_close(mean2, mean, rtol=0, atol=0)
        torch.testing.assert_close(var2, var, rtol=0, atol=0)


def test_support_errors_name_the_problem(tasks):
    tr, va, _ = tasks
    m = ADKFIFT(**SMALL)
    m.meta_fit(tr, va, progress=False)
    x = np.random.default_rng(0).normal(size=(10, 12))
    with pytest.raises(ValueError, match="single-class"):
        m.adapt(x, np.ones(10))
    with pytest.raises(ValueError, match="empty"):
        m.adapt(x[:0], np.ones(0))
    with pytest.raises(ValueError, match="mismatched lengths"):
        m.adapt(x, np.ones(9))
    y = np.r_[np.ones(5), np.zeros(5)]
    y[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        m.adapt(x, y)
    with pytest.raises(ValueError, match="unknown option"):
        ADKFIFT(n_step=3)
    with pytest.raises(ValueError, match="unknown kind"):
        ProtoNet("regression")
    with pytest.raises(RuntimeError, match="not meta-trained"):
        DKT().adapt(x, np.r_[np.ones(5), np.zeros(5)])


def test_meta_training_beats_the_untrained_encoder():
    tr, va, te = split_tasks(latent_feature_tasks(120, 128, dim=32, seed=2), (100, 10, 10), seed=0)
    trained = ADKFIFT(
        n_steps=60,
        batch_size=8,
        support_size=16,
        query_size=64,
        lr=3e-3,
        hidden=(64,),
        eval_every=30,
        seed=0,
    )
    untrained = ADKFIFT(n_steps=0, hidden=(64,), seed=0)
    trained.meta_fit(tr, va, progress=False)
    untrained.build(32)

    def score(m):
        s = []
        for t in te:
            for seed in range(3):
                ep = sample_episode(t, 16, seed=seed)
                s.append(
                    delta_auprc(
                        ep.query_y, m.adapt(ep.support_x, ep.support_y).predict_proba(ep.query_x)
                    )
                )
        return np.mean(s)

    assert score(trained) > score(untrained) + 0.03


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_resume_continues_to_the_same_parameters(tasks, tmp_path, dropout):
    tr, va, _ = tasks
    cfg = {**SMALL, "eval_every": 4, "dropout": dropout}
    full = ADKFIFT(**{**cfg, "n_steps": 12})
    full.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / "a")
    part = ADKFIFT(**{**cfg, "n_steps": 8})
    part.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / "b")
    torch.rand(3)  # the global stream moves on between the runs, as in a new process
    resumed = ADKFIFT(**{**cfg, "n_steps": 12})
    resumed.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / "b")
    # with dropout the masks came from the global stream: steps 8-11 differed after a resume
    assert resumed.history["loss"] == pytest.approx(full.history["loss"], rel=1e-9)
    for a, b in zip(full.encoder.parameters(), resumed.encoder.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    # another learner does not continue an ADKF-IFT run (ProtoNet did, silently)
    with pytest.raises(ValueError, match="holds a classification ADKF-IFT run, not a"):
        ProtoNet(**SMALL).meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path / "b")


def test_training_with_dropout_is_reproducible_from_the_seed(tasks):
    tr, va, _ = tasks
    runs = [ADKFIFT(**{**SMALL, "dropout": 0.3, "seed": s}) for s in (0, 0, 1)]
    for r in runs:
        torch.rand(5)  # whatever the global stream holds
        r.meta_fit(tr, va, progress=False)
    assert runs[0].history["loss"] == runs[1].history["loss"]  # masks differed run to run
    assert runs[0].history["loss"] != runs[2].history["loss"]


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tasks, tmp_path):
    tr, va, _ = tasks
    cfg = {**SMALL, "n_steps": 8, "eval_every": 4}
    ADKFIFT(**cfg).meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    for change in ({"lr": 0.1}, {"activation": "tanh"}, {"seed": 1}, {"batch_size": 2}):
        # each resumed silently (the optimizer state even restored the old learning rate)
        with pytest.raises(ValueError, match=f"other options \\({next(iter(change))}: "):
            ADKFIFT(**{**cfg, **change}).meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="at step 8, past n_steps=4"):  # returned 8 steps
        ADKFIFT(**{**cfg, "n_steps": 4}).meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    longer = ADKFIFT(**{**cfg, "n_steps": 12})
    longer.meta_fit(tr, va, progress=False, checkpoint_dir=tmp_path)
    assert longer.history["step"] == list(range(12))


def test_refused_calls_leave_a_learner_as_it_was(tasks, tmp_path):
    tr, va, te = tasks
    m = ADKFIFT(**SMALL)
    m.meta_fit(tr, va, progress=False)
    path = m.save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="holds a ADKF-IFT, not a DKT"):
        DKT.load(path)  # returned the ADKF-IFT
    wide = [t.with_inputs(np.pad(t.inputs, ((0, 0), (0, 3)))) for t in va]
    before = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    with pytest.raises(ValueError, match="valid_tasks .* do not have 12 input features"):
        m.meta_fit(tr, wide, progress=False)  # failed after the first steps
    assert all(torch.equal(before[k], v) for k, v in m.encoder.state_dict().items())
    fresh = DKT(**SMALL)
    with pytest.raises(ValueError, match="valid_tasks"):
        fresh.meta_fit(tr, wide, progress=False)
    assert not fresh.trainable_modules()  # not built: adapt still says "not meta-trained"


def test_queries_are_checked_by_every_predictor(tasks):
    tr, va, te = tasks
    ep = sample_episode(te[0], 16, seed=0)
    bad = ep.query_x.copy()
    bad[0, 0] = np.nan
    for learner in (ProtoNet(**SMALL), ADKFIFT(**SMALL), RandomForest(n_estimators=5)):
        learner.meta_fit(tr, va, progress=False)
        pred = learner.adapt(ep.support_x, ep.support_y)
        # NaN gave NaN probabilities (ProtoNet) or finite ones (a forest), silently
        with pytest.raises(ValueError, match="x contains 1 non-finite"):
            pred.predict_proba(bad)
        with pytest.raises(ValueError, match="features per row|X has 13 features"):
            pred.predict_proba(np.pad(ep.query_x, ((0, 0), (0, 1))))


def test_two_gloo_processes_give_the_single_process_gradient(tmp_path):
    from tests.metalearn import _ddp_worker as w

    mp.start_processes(
        w.run,
        args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt")),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    dist_res = torch.load(tmp_path / "out.pt")
    learner, batch = w.make_learner_and_batch()
    loss, grads = w.gradients(learner, batch)
    assert dist_res["loss"] == pytest.approx(loss, rel=1e-6)
    for a, b in zip(dist_res["grads"], grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_metrics_known_values():
    assert delta_auprc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.5)
    assert r2_os([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 2.0) == pytest.approx(1.0)
    assert r2_os([1.0, 3.0], [2.0, 2.0], 2.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="positive"):
        delta_auprc([0, 0], [0.1, 0.2])
    # -1 / +1 labels: the AUPRC sees +1 as positive but the baseline would be the mean 1/3
    with pytest.raises(ValueError, match=r"y_true must hold 0 / 1 labels, got values \[-1.0\]"):
        delta_auprc([-1, 1, 1], [0.1, 0.2, 0.3])
    for args, name in (
        (([1.0, np.nan, 3.0], [1.0, 2.0, 2.5], 0.0), "y_true"),
        (([1.0, 2.0], [1.0, np.inf], 0.0), "y_pred"),
        (([1.0, 2.0], [1.0, 2.0], np.nan), "train_mean"),
    ):
        with pytest.raises(ValueError, match=f"{name} contains NaN/inf"):
            r2_os(*args)


def test_learner_options_and_seeds_are_checked():
    # a misspelt option used to be ignored (the forest kept its 200 trees)
    for make, bad in (
        (lambda: RandomForest(n_estimatorz=5), "n_estimatorz"),
        (lambda: GPST(kernal="rbf"), "kernal"),
        (lambda: KNN(k=3), "k"),
        (lambda: DKL(hiden=(8,)), "hiden"),
        (lambda: ADKFIFT(n_step=3), "n_step"),
    ):
        with pytest.raises(ValueError, match=f"unknown option.*'{bad}'"):
            make()
    assert RandomForest(n_estimators=5, grid=True, columns=[0, 4], cv=3).config["columns"] == (0, 4)
    with pytest.raises(ValueError, match="cv must be"):
        KNN(cv=1)
    with pytest.raises(TypeError, match="cv must be an int"):
        KNN(cv="3")
    for seed in (1.7, "5", None):
        with pytest.raises(TypeError, match="seed must be an int"):
            ADKFIFT(seed=seed)
    with pytest.raises(ValueError, match="gp_dtype"):
        ADKFIFT(gp_dtype="float16")


def test_evaluate_refuses_learners_that_share_a_name(tasks):
    from metalearn import evaluate

    _, _, te = tasks
    with pytest.raises(ValueError, match=r"share the name\(s\) \['RF'\]"):
        evaluate([RandomForest(n_estimators=5), RandomForest(seed=1)], te, (16,), 1)
    from probrec.data import Task

    twin = Task(te[1].inputs, te[1].labels, te[1].kind, te[0].name)
    with pytest.raises(ValueError, match="tasks must have distinct names"):  # merged, mixed up
        evaluate([RandomForest(n_estimators=5)], [te[0], twin], (16,), 1)


def test_evaluate_skips_a_regression_task_of_equal_labels():
    from metalearn import evaluate
    from probrec.data import Task

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    good = Task(x, x @ [1.0, -1.0, 0.5], "regression", "good")
    flat = Task(x, np.full(40, 2.5), "regression", "flat")  # stopped the whole run
    res = evaluate([RandomForest("regression", n_estimators=5)], [good, flat], (16,), 2)
    assert res.skipped[16] == ["flat"]
    assert np.isfinite(res.summary()["RF"][16]["mean"])


def test_encoded_adaptation_equals_plain_and_evaluate_matches_a_manual_loop(tasks):
    from metalearn import evaluate
    from probrec.data import RowView, Task

    tr, va, te = tasks
    m = ADKFIFT(**SMALL)
    m.meta_fit(tr, va, progress=False)
    ep = sample_episode(te[1], 16, seed=0)
    plain = m.adapt(ep.support_x, ep.support_y).predict_proba(ep.query_x)
    enc = m.adapt(m.encode(ep.support_x), ep.support_y, encoded=True).predict_proba(
        m.encode(ep.query_x)
    )
    torch.testing.assert_close(enc, plain, rtol=1e-6, atol=1e-6)
    # tasks sharing a matrix through RowView are evaluated as the manual loop would
    shared = np.concatenate([np.asarray(t.inputs) for t in te])
    starts = np.cumsum([0] + [len(t) for t in te])
    views = [
        Task(RowView(shared, np.arange(a, b)), t.labels, t.kind, t.name)
        for t, a, b in zip(te, starts, starts[1:])
    ]
    res = evaluate({"m": m}, views, (16,), 2, progress=False)
    for row in res.rows:
        t = next(v for v in te if v.name == row["task"])
        e = sample_episode(t, 16, seed=row["seed"])
        p = m.adapt(e.support_x, e.support_y).predict_proba(e.query_x).numpy()
        assert row["score"] == pytest.approx(delta_auprc(e.query_y, p), abs=1e-6)
    assert res.summary()["m"][16]["n_tasks"] == len(te)


def test_evaluate_in_worker_processes_gives_the_same_scores(tasks):
    """Episodes scored in forked workers (n_jobs=2) equal the in-process loop, in order."""
    from metalearn import evaluate

    _, _, te = tasks
    learners = {"kNN": KNN(seed=0), "LogReg": LogisticRegression(seed=0)}
    one = evaluate(learners, te, (16,), 2, progress=False)
    two = evaluate(learners, te, (16,), 2, progress=False, n_jobs=2)
    assert len(one.rows) == len(two.rows) > 0
    for a, b in zip(one.rows, two.rows, strict=True):
        assert {k: a[k] for k in ("learner", "task", "size", "seed")} == {
            k: b[k] for k in ("learner", "task", "size", "seed")
        }
        assert a["score"] == pytest.approx(b["score"], abs=1e-12)
    with pytest.raises(ValueError, match="n_jobs"):
        evaluate(learners, te, (16,), 2, progress=False, n_jobs=0)
    # these returned an empty, malformed table
    with pytest.raises(ValueError, match="n_seeds must be >= 1"):
        evaluate(learners, te, (16,), 0, progress=False)
    with pytest.raises(ValueError, match="support_sizes must be >= 1"):
        evaluate(learners, te, (0,), 2, progress=False)
    with pytest.raises(ValueError, match="support_sizes is empty"):
        evaluate(learners, te, (), 2, progress=False)
