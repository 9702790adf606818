"""Clear, early errors for the tasks given to meta_fit and evaluate (audit of the few-shot GP
code): tasks that are not featurised, tasks of the other kind than the learner, no tasks, and
evaluations where every task is skipped."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from metalearn import ADKF, ADKFIFT, DKT, evaluate
from metalearn.evaluation import EvalResult
from metalearn.protonet import ProtoNet
from metalearn.single_task import KNN, RandomForest
from probrec.data import Task, latent_feature_tasks
from tests.metalearn.conftest import TINY_META

KW = TINY_META


@pytest.fixture(scope="module")
def reg_tasks():
    return latent_feature_tasks(4, 64, dim=8, kind="regression", seed=1)


# ---------------------------------------------------------------- F2: featurised tasks
def _smiles_task(name: str = "s") -> Task:
    return Task(
        np.array(["CCO"] * 40, dtype=object), np.array([0, 1] * 20, float), "classification", name
    )


def test_meta_fit_on_smiles_tasks_points_to_featurize_tasks(cls_tasks):
    """An IndexError (tuple index out of range) before."""
    with pytest.raises(ValueError, match=r"train_tasks \['s'\].*featurize_tasks"):
        ADKFIFT(**KW).meta_fit([_smiles_task()], None, progress=False)
    with pytest.raises(ValueError, match=r"valid_tasks \['v'\].*featurize_tasks"):
        ADKFIFT(**KW).meta_fit(cls_tasks, [_smiles_task("v")], progress=False)


def test_evaluate_on_smiles_tasks_points_to_featurize_tasks():
    with pytest.raises(ValueError, match=r"tasks \['s'\].*featurize_tasks"):
        evaluate({"kNN": KNN()}, [_smiles_task()], (8,), 1)


# ---------------------------------------------------------------- F3: task kinds
@pytest.mark.parametrize("cls", [ADKFIFT, ADKF, DKT, ProtoNet])
def test_meta_fit_refuses_train_tasks_of_the_other_kind(cls, reg_tasks):
    """'classification labels must be 0 or 1' before, naming neither the tasks nor the kind."""
    with pytest.raises(ValueError, match=r"train_tasks .* regression tasks.*'classification'"):
        cls(**KW).meta_fit(reg_tasks, None, progress=False)


def test_meta_fit_refuses_valid_tasks_of_the_other_kind_before_training(cls_tasks, reg_tasks):
    """Wrong-kind validation tasks failed only at the first validation, eval_every steps in."""
    learner = ADKFIFT(**KW)
    with pytest.raises(ValueError, match=r"valid_tasks .* regression tasks.*'classification'"):
        learner.meta_fit(cls_tasks, reg_tasks, progress=False)
    assert learner.encoder is None  # nothing was built or stepped
    with pytest.raises(ValueError, match=r"train_tasks .* classification tasks.*'regression'"):
        ADKFIFT("regression", **KW).meta_fit(cls_tasks, reg_tasks, progress=False)


def test_evaluate_refuses_a_learner_of_the_other_kind(cls_tasks, monkeypatch):
    """'predict_proba is only defined for classification' before, after the first adapt."""
    adapted = []
    knn = KNN(kind="regression")
    monkeypatch.setattr(knn, "adapt", lambda *a, **k: adapted.append(1))
    with pytest.raises(ValueError, match=r"classification tasks.*'kNN'.*'regression'"):
        evaluate({"kNN": knn, "RF": RandomForest(n_estimators=5)}, cls_tasks, (8,), 1)
    assert not adapted


def test_evaluate_with_no_tasks_says_tasks_is_empty():
    """'tasks must all have one kind, got []' before."""
    with pytest.raises(ValueError, match="tasks is empty"):
        evaluate({"kNN": KNN()}, [], (8,), 1)


# ---------------------------------------------------------------- F7: everything skipped
def test_evaluate_warns_when_every_task_is_skipped(cls_tasks):
    with pytest.warns(UserWarning, match=r"every task was skipped .*\[200, 300\].*8 task"):
        res = evaluate({"kNN": KNN()}, cls_tasks, (200, 300), 1)
    md = res.to_markdown()
    assert "no results" in md and "|" not in md
    assert "8 at size 200" in md


def test_evaluate_does_not_warn_when_some_size_has_scores(cls_tasks):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = evaluate({"kNN": KNN()}, cls_tasks[:2], (16, 200), 1)
    assert "| kNN |" in res.to_markdown()


def test_empty_result_markdown_says_no_results():
    assert EvalResult("r2_os").to_markdown().endswith("no results")
