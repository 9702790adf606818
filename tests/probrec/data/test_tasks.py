import numpy as np
import pytest
import torch

from probrec.data import Episode, RowView, Task, TaskSet, sample_episode, split_tasks
from probrec.data.tasks import stratified_counts


def _cls_task(n_pos=30, n_neg=70, name="t"):
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    x = np.random.default_rng(0).normal(size=(len(y), 3))
    return Task(x, y, "classification", name)


def test_task_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        Task(np.zeros((3, 2)), [0, np.nan, 1], "classification", "a")
    with pytest.raises(ValueError, match="mismatched lengths.*inputs has 3.*labels has 2"):
        Task(np.zeros((3, 2)), [0, 1], "regression", "a")
    with pytest.raises(ValueError, match="empty"):
        Task(np.zeros((0, 2)), [], "regression", "a")
    with pytest.raises(ValueError, match="unknown kind"):
        Task(np.zeros((2, 2)), [0, 1], "ranking", "a")
    with pytest.raises(ValueError, match="must be 0 or 1"):
        Task(np.zeros((2, 2)), [0, 2], "classification", "a")


def test_task_labels_are_one_per_row():
    # a [3, 2] label matrix was flattened into 6 labels and paired with 6 rows
    with pytest.raises(ValueError, match=r"shape \[n\].*\(3, 2\)"):
        Task(np.zeros((6, 2)), np.arange(6.0).reshape(3, 2), "regression", "a")
    for shape in [(6,), (6, 1), (1, 6)]:
        t = Task(np.zeros((6, 2)), np.arange(6.0).reshape(shape), "regression", "a")
        np.testing.assert_array_equal(t.labels, np.arange(6.0))


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
        ),
    ],
)
def test_label_tensors_are_taken_from_any_device_like_the_inputs(device):
    # inputs were detached and copied to the host, but labels with gradients raised NumPy's
    # RuntimeError and labels on a GPU "labels of task 't' must be numeric"
    x = torch.randn(6, 3, device=device, requires_grad=True)
    y = torch.tensor([0.0, 1, 0, 1, 1, 0], device=device, requires_grad=True)
    for kind in ("classification", "regression"):
        t = Task(x, y * 1, kind, "t")
        assert t.labels.dtype == np.float64 and isinstance(t.inputs, np.ndarray)
        np.testing.assert_array_equal(t.labels, [0, 1, 0, 1, 1, 0])
        np.testing.assert_array_equal(t.inputs, x.detach().cpu().numpy())
    with pytest.raises(TypeError, match="labels of task 's' must be numeric"):
        Task(np.zeros((2, 1)), ["a", "b"], "regression", "s")


@pytest.mark.parametrize("size", [2, 16, 50])
def test_stratified_support_keeps_ratio_and_both_classes(size):
    task = _cls_task()
    for seed in range(5):
        ep = sample_episode(task, size, seed=seed)
        n_pos = int(ep.support_y.sum())
        assert 1 <= n_pos <= size - 1
        assert abs(n_pos - round(0.3 * size)) <= 1
        assert len(ep.support_index) == size
        assert len(ep.query_index) == len(task) - size
        assert not set(ep.support_index) & set(ep.query_index)


def test_stratified_counts_rare_positive():
    # 1 % positives: still one positive in a support set of 16
    assert stratified_counts(3, 297, 16) == (1, 15)
    assert stratified_counts(290, 10, 16) == (15, 1)


def test_episode_is_seeded():
    task = _cls_task()
    a, b = sample_episode(task, 16, seed=3), sample_episode(task, 16, seed=3)
    c = sample_episode(task, 16, seed=4)
    assert np.array_equal(a.support_index, b.support_index)
    assert not np.array_equal(a.support_index, c.support_index)


def test_single_class_or_empty_support_raise():
    task = _cls_task(0, 50)
    with pytest.raises(ValueError, match="0 positive"):
        sample_episode(task, 16, seed=0)
    ok = _cls_task()
    with pytest.raises(ValueError, match="single-class"):
        Episode(ok, np.arange(30, 40), np.arange(40, 50))
    with pytest.raises(ValueError, match="empty"):
        Episode(ok, np.array([], dtype=int), np.arange(40, 50))
    with pytest.raises(ValueError, match="overlap"):
        Episode(ok, np.array([0, 50]), np.array([0, 1]))


def test_query_size_stratified():
    task = _cls_task()
    ep = sample_episode(task, 16, query_size=40, seed=0)
    assert len(ep.query_index) == 40
    assert 8 <= ep.query_y.sum() <= 16


def test_regression_episode():
    rng = np.random.default_rng(0)
    task = Task(rng.normal(size=(20, 2)), rng.normal(size=20), "regression", "r")
    ep = sample_episode(task, 5, seed=1)
    assert ep.support_x.shape == (5, 2) and ep.query_x.shape == (15, 2)
    with pytest.raises(ValueError, match="leaves no query"):
        sample_episode(task, 20)


def test_split_tasks_by_task_seeded():
    tasks = [_cls_task(name=f"t{i}") for i in range(20)]
    tr, va, te = split_tasks(tasks, (0.6, 0.2, 0.2), seed=1)
    assert (len(tr), len(va), len(te)) == (12, 4, 4)
    names = tr.names + va.names + te.names
    assert sorted(names) == sorted(t.name for t in tasks)
    tr2, _, _ = split_tasks(tasks, (0.6, 0.2, 0.2), seed=1)
    assert tr.names == tr2.names
    tr3, va3, te3 = split_tasks(tasks, (10, 5, -1), seed=2)
    assert (len(tr3), len(va3), len(te3)) == (10, 5, 5)
    with pytest.raises(ValueError, match="sum to"):
        split_tasks(tasks, (10, 5, 4))
    # fractions whose rounded parts exceed the tasks: a partition still (t0 was in train and
    # test: the train count came out -1)
    for n, fractions in ((3, (0.0, 0.5, 0.5)), (7, (0.0, 0.5, 0.5)), (5, (0.1, 0.45, 0.45))):
        parts = split_tasks(tasks[:n], fractions, seed=0)
        names = [m for p in parts for m in p.names]
        assert sorted(names) == sorted(t.name for t in tasks[:n])
    with pytest.raises(ValueError, match="fractions summing to 1"):
        split_tasks(tasks, (float("nan"), 0.5, 0.5))


def test_taskset_unknown_name():
    ts = TaskSet([_cls_task(name="a")], source="x.csv")
    assert ts.get("a").name == "a"
    with pytest.raises(ValueError, match="unknown task name 'b'"):
        ts.get("b")


def test_rowview_indexes_shared_matrix():
    m = np.arange(20.0).reshape(10, 2)
    v = RowView(m, np.array([3, 1, 7]))
    assert v.shape == (3, 2)
    np.testing.assert_array_equal(v[[0, 2]], m[[3, 7]])
    np.testing.assert_array_equal(np.asarray(v), m[[3, 1, 7]])
    t = Task(v, [0, 1, 0], "classification", "v")
    assert t.is_featurized
    np.testing.assert_array_equal(np.asarray(t.subset([1]).inputs), m[[1]])
    for bad in ([-1], [10], [1.7], [[1, 2]]):  # -1 read the last row, 1.7 row 1
        with pytest.raises(ValueError, match="index must (be 1-D integer|index rows in)"):
            RowView(m, np.array(bad))


def test_a_string_matrix_is_not_taken_for_features():
    # NumPy's ufunc error before
    with pytest.raises(TypeError, match=r"numeric \[n, d\] feature matrix"):
        Task(np.array([["a", "b"]] * 4), [0, 1] * 2, "classification", "s")
    assert not Task(np.array(["CCO", "CC"] * 2), [0, 1] * 2, "classification", "s").is_featurized


def test_one_dimensional_numeric_items_refuse_nan():
    ids = Task(np.arange(4.0), [0, 1] * 2, "classification", "ids")  # item ids are items
    assert not ids.is_featurized
    with pytest.raises(ValueError, match="contain NaN/inf items"):  # was accepted
        Task(np.array([1.0, np.nan, 2.0, 3.0]), [0, 1] * 2, "classification", "ids")


def test_episodes_and_subsets_refuse_indices_numpy_would_reinterpret():
    t = Task(np.arange(20.0).reshape(10, 2), [0, 1] * 5, "classification", "t")
    for bad, match in (
        ([0, 1, 1, 3], "support_index repeats a row"),
        ([0.7, 1.9], "support_index must be 1-D integer"),  # truncated to [0, 1] before
        ([[0, 1], [2, 3]], "support_index must be 1-D integer"),  # flattened before
        ([-1, 0], r"support_index must index rows in \[0, 10\)"),
    ):
        with pytest.raises(ValueError, match=match):
            Episode(t, bad, [4, 5])
    for bad in ([-1, -2], [0.9, 1.9]):  # wrapped to the last rows / truncated before
        with pytest.raises(ValueError, match="index must"):
            t.subset(bad)
    assert len(t.subset(np.array([3, 3]))) == 2  # repeats stay allowed in a subset
    ep = Episode(t, np.array([0, 1]), [])
    assert ep.query_index.dtype == np.int64 and len(ep.query_index) == 0
    for seed in (1.5, None, "3"):  # None drew a new split on every call
        with pytest.raises(TypeError, match="seed must be an int"):
            sample_episode(t, 4, seed=seed)
    assert np.array_equal(
        sample_episode(t, 4, seed=np.int64(3)).support_index,
        sample_episode(t, 4, seed=3).support_index,
    )
