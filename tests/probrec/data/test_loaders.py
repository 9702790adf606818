import gzip

import numpy as np
import pytest

from probrec.data import (
    descriptor_tasks,
    latent_feature_tasks,
    load_moleculenet,
    load_rdkit_chembl_assay,
    load_regression_csv,
    load_regression_set,
    sample_episode,
    sinusoid_tasks,
)


def test_wide_csv_tasks_nan_unlabelled_and_invalid_smiles(tmp_path):
    p = tmp_path / "wide.csv.gz"
    rows = [
        "smiles,A,B",
        "CCO,1,",
        "c1ccccc1,0,1",
        "not_a_smiles,1,0",
        "CC(=O)O,,0",
        "CCN,0,1",
    ]
    with gzip.open(p, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    ts = load_moleculenet(p)
    assert ts.names == ["A", "B"]
    assert ts.skipped == ["not_a_smiles"]
    a, b = ts.get("A"), ts.get("B")
    assert list(a.inputs) == ["CCO", "c1ccccc1", "CCN"]
    np.testing.assert_array_equal(a.labels, [1, 0, 0])
    assert list(b.inputs) == ["c1ccccc1", "CC(=O)O", "CCN"]
    with pytest.raises(ValueError, match="unknown task name"):
        load_moleculenet(p, tasks=["C"])
    with pytest.raises(FileNotFoundError):
        load_moleculenet(tmp_path / "missing.csv")


def test_regression_csv(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("smiles,y\nCCO,1.5\nCCC,\nCCN,-2\n")
    t = load_regression_csv(p, "y", transform=lambda v: 2 * v)[0]
    assert t.kind == "regression"
    np.testing.assert_allclose(t.labels, [3.0, -4.0])
    assert t.metadata["dropped_labels"] == 0
    t = load_regression_csv(p, "y", transform=np.log10)[0]  # log10(-2): NaN, dropped and counted
    np.testing.assert_allclose(t.labels, [np.log10(1.5)])
    assert t.metadata["dropped_labels"] == 1
    with pytest.raises(ValueError, match="label_column 'z'"):
        load_regression_csv(p, "z")
    for bad in (lambda v: float(np.mean(v)), lambda v: v[:1]):  # a 1-row task of 3 inputs
        with pytest.raises(ValueError, match="transform must map the labels"):
            load_regression_csv(p, "y", transform=bad)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "is empty"),  # was a bare StopIteration
        ("smiles,a\n", "no data rows"),  # a NumPy TypeError
        ("smiles,a\nCCO,yes\nCCN,0\nCCC,1\n", "row 1, column 1: non-numeric label 'yes'"),
        ("a,smiles\n1\n", "row 1 has no SMILES cell"),  # an IndexError
        ("smiles,a\nCCO,1\nCCN,inf\nCCC,2\n", "row 2, column 1: infinite label 'inf'"),  # dropped
    ],
)
def test_csv_loaders_name_what_is_wrong(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_moleculenet(p)


def test_csv_loaders_missing_markers_and_arguments(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("smiles,a,b\nCCO,NA,\nCCN,0,null\nCCC,1,N/A\n")
    ts = load_moleculenet(p, min_size=1)
    assert ts.names == ["a"] and len(ts.get("a")) == 2  # missing markers are missing labels
    assert list(ts.excluded) == ["b"] and "0 labelled" in ts.excluded["b"]  # said, not silent
    assert ts.select(["a"]).excluded == ts.excluded
    ts = load_moleculenet(p, min_size=3)
    assert ts.names == [] and "2 labelled molecule(s)" in ts.excluded["a"]
    with pytest.raises(ValueError, match="min_size"):
        load_moleculenet(p, min_size=0)
    with pytest.raises(ValueError, match="no molecule has a label in 'b'"):
        load_regression_csv(p, "b")  # an IndexError


def test_task_columns_given_as_one_string_repeated_or_none_are_refused(tmp_path):
    # tasks="a" was read per character ("unknown task name(s) ['C', 'T', '_', ...]" for
    # "CT_TOX"), tasks=["a", "a"] gave two tasks named "a" and tasks=[] an empty TaskSet
    p = tmp_path / "m.csv"
    p.write_text("smiles,a,b\nCCO,0,1\nCCN,1,0\nCCC,1,1\n")
    with pytest.raises(TypeError, match="got the string 'a'"):
        load_moleculenet(p, tasks="a")
    with pytest.raises(ValueError, match=r"repeats the column name\(s\) \['a'\]"):
        load_moleculenet(p, tasks=["a", "b", "a"])
    with pytest.raises(ValueError, match="tasks is empty"):
        load_moleculenet(p, tasks=[])
    ts = load_moleculenet(p, tasks=("b", "a"))  # any sequence, in its order
    assert ts.names == ["b", "a"]
    np.testing.assert_array_equal(ts.get("a").labels, [0, 1, 1])
    with pytest.raises(TypeError, match="got the string 'a'"):
        ts.select("a")  # passed only as a one-letter name ("CT_TOX": "unknown task name 'C'")
    assert ts.select(["a"]).names == ["a"]


def test_embedded_chembl_assay():
    reg = load_rdkit_chembl_assay()
    assert len(reg) == 1017 and reg.kind == "regression"
    cls = load_rdkit_chembl_assay("classification")
    assert 0.4 < cls.positive_fraction < 0.6
    ep = sample_episode(cls, 16, seed=0)
    assert ep.support_y.sum() == 8
    with pytest.raises(ValueError, match="threshold must be finite"):  # every label was 0
        load_rdkit_chembl_assay("classification", threshold=float("nan"))
    from probrec.data import load_nci_smiles

    assert len(load_nci_smiles(3)) == 3
    for bad in (-1, 0):  # -1 dropped the last molecule, 0 gave none
        with pytest.raises(ValueError, match="n must be"):
            load_nci_smiles(bad)


def test_synthetic_families_are_seeded():
    a = latent_feature_tasks(5, 64, dim=8, seed=3)
    b = latent_feature_tasks(5, 64, dim=8, seed=3)
    assert all(np.array_equal(x.inputs, y.inputs) for x, y in zip(a, b))
    assert all(0.1 < t.positive_fraction < 0.6 for t in a)
    for kw, name in (
        ({"n_latent": 0}, "n_latent"),
        ({"noise": float("nan")}, "noise"),
        ({"dim": 0}, "dim"),
    ):  # one-class tasks or a NumPy error
        with pytest.raises(ValueError, match=name):
            latent_feature_tasks(2, 16, **kw)
    with pytest.raises(TypeError, match="seed must be an int"):
        latent_feature_tasks(2, 16, seed=1.5)
    s = sinusoid_tasks(3, 10, seed=0)
    assert s[0].inputs.shape == (10, 1)
    assert np.abs(s[0].labels).max() <= 5.0


SMALL_MOLECULES = [
    "CCO", "c1ccccc1", "CC(=O)O", "CCN", "CCCCCCCC", "c1ccncc1", "OCC(O)CO", "CC(C)Cc1ccccc1",
    "O=C(O)c1ccccc1O", "CN1CCC[C@H]1c1cccnc1", "ClC(Cl)Cl", "NCCc1ccc(O)c(O)c1",
]  # fmt: skip


def test_descriptor_tasks_are_seeded_two_class_and_refuse_bad_sizes():
    a = descriptor_tasks(SMALL_MOLECULES, 3, 8, n_terms=2, seed=4)
    b = descriptor_tasks(SMALL_MOLECULES, 3, 8, n_terms=2, seed=4)
    for ta, tb in zip(a, b):
        assert list(ta.inputs) == list(tb.inputs) and np.array_equal(ta.labels, tb.labels)
        assert set(np.unique(ta.labels)) == {0.0, 1.0} and len(ta.inputs) == 8
        assert set(ta.inputs) <= set(SMALL_MOLECULES) and len(ta.metadata["descriptors"]) == 2
    # each used to fail inside NumPy (or build one-point, one-class tasks)
    for kw, name in (
        ({"n_points": 1}, "n_points"),
        ({"n_points": 13}, "n_points"),
        ({"n_terms": 0}, "n_terms"),
        ({"n_terms": 10_000}, "n_terms"),
        ({"noise": float("nan")}, "noise"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(ValueError, match=name):
            descriptor_tasks(SMALL_MOLECULES, 2, **{"n_points": 6, **kw})


@pytest.mark.data
def test_toxcast_500_tasks(shared_data):
    ts = load_moleculenet(shared_data / "molecules/moleculenet/toxcast_500.csv.gz")
    assert len(ts) == 500
    assert len({s for t in ts for s in t.inputs}) == 8576 - len(ts.skipped)
    assert all(t.kind == "classification" for t in ts)


@pytest.mark.data
@pytest.mark.parametrize(
    "name,n",
    [
        ("esol", 1128),
        ("freesolv", 642),
        ("lipophilicity", 4200),
        ("covid_moonshot", 1926),
        ("dockstring_esr2", 2312),
        ("cep_pce", 2012),
    ],
)
def test_regression_sets(shared_data, name, n):
    t = load_regression_set(name, shared_data)
    assert len(t) == n and np.isfinite(t.labels).all()
