"""Episode sampling against independent references: scikit-learn's stratified splitter (the one
FS-Mol's ``StratifiedTaskSampler`` calls) and the exact inclusion probabilities of a uniform
draw within each class."""

import numpy as np
import pytest
from scipy import stats
from sklearn.model_selection import StratifiedShuffleSplit

from probrec.data import Task, sample_episode
from probrec.data.tasks import stratified_counts


def _task(n_pos: int, n_neg: int) -> Task:
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    return Task(np.arange(len(y), dtype=np.float64)[:, None], y, "classification", "t")


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_support_class_counts_equal_fsmol_stratified_splitter(size):
    # FS-Mol: StratifiedShuffleSplit(train_size=size); the counts agree wherever its
    # allocation is not a tie (broken at random there) and has a member of each class
    checked = 0
    for n in (150, 257, 600):
        for n_pos in range(1, n, 7):
            exact = size * n_pos / n
            if size >= n - 1 or abs(exact - np.floor(exact) - 0.5) < 1e-9 or exact < 1:
                continue
            y = np.r_[np.zeros(n - n_pos), np.ones(n_pos)]
            split = StratifiedShuffleSplit(1, train_size=size, test_size=n - size, random_state=0)
            train, _ = next(split.split(y, y))
            if not 0 < y[train].sum() < size:
                continue
            k_pos, k_neg = stratified_counts(n_pos, n - n_pos, size)
            ep = sample_episode(_task(n_pos, n - n_pos), size, seed=3)
            assert (k_pos, k_neg) == (int(y[train].sum()), size - int(y[train].sum()))
            assert ep.support_y.sum() == k_pos and len(ep.support_y) == size
            checked += 1
    assert checked > 50


def test_query_is_the_rest_and_both_classes_are_always_in_the_support():
    for n_pos, n_neg, size in [(1, 99, 16), (2, 300, 64), (99, 1, 16), (40, 60, 2)]:
        ep = sample_episode(_task(n_pos, n_neg), size, seed=0)
        both = np.sort(np.r_[ep.support_index, ep.query_index])
        np.testing.assert_array_equal(both, np.arange(n_pos + n_neg))
        assert 0 < ep.support_y.sum() < size


def test_support_rows_are_uniform_within_each_class():
    # 12 positives, 36 negatives, size 8: 2 positives and 6 negatives per draw, so each
    # positive is in the support with probability 2/12 and each negative with 6/36
    n_pos, n_neg, size, draws = 12, 36, 8, 3000
    task = _task(n_pos, n_neg)
    hits = np.zeros(n_pos + n_neg)
    for seed in range(draws):
        hits[sample_episode(task, size, seed=seed).support_index] += 1
    for rows, k, n in ((slice(0, n_pos), 2, n_pos), (slice(n_pos, None), 6, n_neg)):
        expected = np.full(n, draws * k / n)
        # within a class the draw is multinomial-like with fixed total; chi-square on n - 1 dof
        chi2 = (((hits[rows] - expected) ** 2) / expected).sum() * (1 - k / n) ** -1
        assert hits[rows].sum() == draws * k
        assert stats.chi2.sf(chi2, n - 1) > 1e-3


def test_episodes_depend_on_the_seed_only():
    task = _task(30, 70)
    a = sample_episode(task, 16, seed=5)
    np.random.seed(123)  # the global NumPy state plays no part
    _ = np.random.random(10)
    b = sample_episode(task, 16, seed=5)
    np.testing.assert_array_equal(a.support_index, b.support_index)
    supports = {tuple(sample_episode(task, 16, seed=s).support_index) for s in range(20)}
    assert len(supports) == 20  # repeats with different seeds differ
