"""FS-Mol task files, the FS-Mol split and FS-Mol's cleaning of raw ChEMBL assay tables.

The independent checks are FS-Mol's own outputs: ``processed_CHEMBL1002396.csv`` (FS-Mol's test
fixture, in ``../shared/data``) and the cleaned CHEMBL1001235 table that FS-Mol's pipeline test
writes (microsoft/FS-Mol, ``fs_mol/preprocessing/test/datasets/cleaned/``), whose threshold,
kept values and activity classes are transcribed below.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from probrec.data import (
    ExcludedTaskError,
    Task,
    clean_chembl_assay_table,
    load_chembl_assay_table,
    load_fsmol_dir,
    load_fsmol_split,
    load_fsmol_task,
    sample_episode,
)

FIXTURES = Path("molecules/fsmol/fixtures")

# FS-Mol's cleaned output for CHEMBL1001235 (its pipeline test): 21 rows, 10 positives.
CHEMBL1001235_THRESHOLD = 4.609064892896621
CHEMBL1001235_VALUES = [
    100000,
    17600,
    100000,
    100000,
    11700,
    100000,
    23500,
    8220,
    11000,
    100000,
    100000,
    15200,
    9390,
    25500,
    17400,
    24600,
    18700,
    28300,
    26200,
    24100,
    25700,
]
_A, _WA, _WI, _I = "active", "weak active", "weak inactive", "inactive"
CHEMBL1001235_CLASSES = [
    _I,
    _A,
    _I,
    _I,
    _A,
    _I,
    _WA,
    _A,
    _A,
    _I,
    _I,
    _A,
    _A,
    _WI,
    _A,
    _WI,
    _A,
    _I,
    _WI,
    _WA,
    _WI,
]


# ---------------------------------------------------------------------------------------------
# helpers: FS-Mol task files written by the test


def _record(smiles: str, prop: float, value: float | str, relation: str = "=") -> dict:
    """One datapoint with every field of the FS-Mol README (features are dummies)."""
    # FS-Mol leaves the log value empty for missing values and values below 1e-13 nM
    missing = value in ("", None) or float(value) < 1e-13
    log = "" if missing else repr(-math.log10(float(value) * 1e-9))
    return {
        "SMILES": smiles,
        "Property": f"{float(prop)}",
        "Assay_ID": "CHEMBL42",
        "RegressionProperty": "" if value in ("", None) else repr(float(value)),
        "LogRegressionProperty": log,
        "Relation": relation,
        "AssayType": "B",
        "fingerprints": [0, 1, 0, 2],
        "descriptors": [1.5, -0.25],
        "graph": {
            "adjacency_lists": [[[0, 1]], [], []],
            "node_types": [6, 8],
            "node_features": [[1.0, 0.0], [0.0, 1.0]],
        },
    }


def _write_task(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccccc1", "not_a_smiles", "CCN(CC)CC", "OC(=O)CCC"]
PROPS = [1, 0, 1, 1, 0, 0]
VALUES = [12.5, 3400.0, 250.0, 80.0, 125000.0, 9.0e4]


def _synthetic_task(tmp_path: Path, name: str = "CHEMBL42") -> Path:
    recs = [_record(s, p, v) for s, p, v in zip(SMILES, PROPS, VALUES)]
    return _write_task(tmp_path / f"{name}.jsonl.gz", recs)


# ---------------------------------------------------------------------------------------------
# FS-Mol task files


def test_fsmol_task_classification_skips_invalid_smiles(tmp_path):
    task = load_fsmol_task(_synthetic_task(tmp_path))
    keep = [i for i, s in enumerate(SMILES) if s != "not_a_smiles"]
    assert isinstance(task, Task) and task.name == "CHEMBL42" and task.kind == "classification"
    assert list(task.inputs) == [SMILES[i] for i in keep]
    np.testing.assert_array_equal(task.labels, [PROPS[i] for i in keep])
    assert task.metadata["n_skipped"] == 1
    assert task.metadata["skipped_smiles"] == ["not_a_smiles"]
    assert task.metadata["assay_type"] == "B"
    ep = sample_episode(task, 2, seed=0)  # usable downstream
    assert sorted(ep.support_y) == [0.0, 1.0]


def test_fsmol_task_regression_targets(tmp_path):
    path = _synthetic_task(tmp_path)
    keep = [i for i, s in enumerate(SMILES) if s != "not_a_smiles"]
    v = np.array([VALUES[i] for i in keep])
    ln = load_fsmol_task(path, "regression")  # ADKF-IFT: ln(RegressionProperty)
    assert ln.kind == "regression" and ln.metadata["regression_target"] == "ln_nM"
    np.testing.assert_allclose(ln.labels, [math.log(x) for x in v], rtol=1e-14)
    plog = load_fsmol_task(path, "regression", regression_target="neg_log10_M")
    np.testing.assert_allclose(plog.labels, 9.0 - np.log10(v), rtol=1e-12)
    raw = load_fsmol_task(path, "regression", regression_target="raw")
    np.testing.assert_array_equal(raw.labels, v)

    # the documented identity: standardised ln(value) == -standardised pXC50
    def z(a):
        return (a - a.mean()) / a.std()

    np.testing.assert_allclose(z(ln.labels), -z(plog.labels), atol=1e-12)


def test_fsmol_regression_follows_adkf_ift_task_filter(tmp_path):
    pct = [_record(s, 0, v) for s, v in zip(["CCO", "CCN", "CCC"], [12.0, 55.0, 99.5])]
    with pytest.raises(ExcludedTaskError, match=r"\[0, 100\]"):
        load_fsmol_task(_write_task(tmp_path / "P.jsonl.gz", pct), "regression")
    zero = [_record("CCO", 0, 0.0), _record("CCN", 1, 500.0)]
    with pytest.raises(ExcludedTaskError, match="non-positive"):
        load_fsmol_task(_write_task(tmp_path / "Z.jsonl.gz", zero), "regression")
    gap = [_record("CCO", 0, ""), _record("CCN", 1, 500.0), _record("CCC", 1, 700.0)]
    gap_path = _write_task(tmp_path / "G.jsonl.gz", gap)
    with pytest.raises(ValueError, match="non-finite"):  # ExcludedTaskError is a ValueError
        load_fsmol_task(gap_path, "regression")
    # the other targets drop the unlabelled row instead of the task
    raw = load_fsmol_task(gap_path, "regression", regression_target="raw")
    assert list(raw.inputs) == ["CCN", "CCC"] and raw.metadata["n_unlabelled"] == 1
    # the percentage task is fine as classification
    assert len(load_fsmol_task(tmp_path / "P.jsonl.gz")) == 3


def test_fsmol_task_bad_input(tmp_path):
    good = _record("CCO", 1, 10.0)
    no_smiles = {k: v for k, v in good.items() if k != "SMILES"}
    with pytest.raises(ValueError, match="'SMILES' is missing"):
        load_fsmol_task(_write_task(tmp_path / "a.jsonl.gz", [good, no_smiles]))
    no_prop = {k: v for k, v in good.items() if k != "Property"}
    with pytest.raises(ValueError, match="'Property' is missing"):
        load_fsmol_task(_write_task(tmp_path / "b.jsonl.gz", [no_prop]))
    no_reg = {k: v for k, v in good.items() if k != "RegressionProperty"}
    with pytest.raises(ValueError, match="'RegressionProperty' is missing"):
        load_fsmol_task(_write_task(tmp_path / "c.jsonl.gz", [no_reg]), "regression")
    with pytest.raises(ValueError, match="'Property' of record 2 is '0.5'"):
        load_fsmol_task(_write_task(tmp_path / "d.jsonl.gz", [good, {**good, "Property": "0.5"}]))
    with pytest.raises(ValueError, match="'Property' of record 1 is 'yes'"):
        load_fsmol_task(_write_task(tmp_path / "e.jsonl.gz", [{**good, "Property": "yes"}]))
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_fsmol_task(_write_task(tmp_path / "f.jsonl.gz", [good, "{oops"]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_fsmol_task(_write_task(tmp_path / "g.jsonl.gz", ["[1, 2]"]))
    with pytest.raises(ValueError, match="no records"):
        load_fsmol_task(_write_task(tmp_path / "h.jsonl.gz", []))
    with pytest.raises(ValueError, match="no molecule"):
        load_fsmol_task(_write_task(tmp_path / "i.jsonl.gz", [{**good, "SMILES": "xx("}]))
    plain = tmp_path / "j.jsonl.gz"
    plain.write_text(json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="gzip"):
        load_fsmol_task(plain)
    with pytest.raises(ValueError, match="unknown kind"):
        load_fsmol_task(_synthetic_task(tmp_path), "ranking")
    with pytest.raises(ValueError, match="unknown regression_target"):
        load_fsmol_task(_synthetic_task(tmp_path), "regression", regression_target="pIC50")
    with pytest.raises(FileNotFoundError):
        load_fsmol_task(tmp_path / "missing.jsonl.gz")


def test_fsmol_dir_and_split_layout(tmp_path):
    root = tmp_path / "fsmol"
    for name in ("CHEMBL3", "CHEMBL1", "CHEMBL2"):
        _synthetic_task(root / "test", name)
    pct = [_record(s, p, v) for s, p, v in zip(["CCO", "CCN"], [0, 1], [20.0, 70.0])]
    _write_task(root / "test" / "CHEMBL9.jsonl.gz", pct)
    _synthetic_task(root / "train", "CHEMBL7")

    ts = load_fsmol_dir(root, "test", progress=False)
    assert ts.names == ["CHEMBL1", "CHEMBL2", "CHEMBL3", "CHEMBL9"]
    assert ts.skipped == ["not_a_smiles"] * 3 and ts.excluded == {}
    picked = load_fsmol_dir(root / "test", task_names=["CHEMBL3", "CHEMBL1"], progress=False)
    assert picked.names == ["CHEMBL3", "CHEMBL1"]
    reg = load_fsmol_dir(root, "test", kind="regression", progress=False)
    assert reg.names == ["CHEMBL1", "CHEMBL2", "CHEMBL3"]
    assert list(reg.excluded) == ["CHEMBL9"] and "[0, 100]" in reg.excluded["CHEMBL9"]
    assert load_fsmol_dir(root, "train", progress=False).names == ["CHEMBL7"]

    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_fsmol_dir(root, "validation")
    with pytest.raises(ValueError, match=r"unknown task name\(s\) \['CHEMBL5'\]"):
        load_fsmol_dir(root, "test", ["CHEMBL1", "CHEMBL5"], progress=False)
    with pytest.raises(ValueError, match="pass split="):
        load_fsmol_dir(root)
    with pytest.raises(FileNotFoundError):
        load_fsmol_dir(root, "valid")
    with pytest.raises(TypeError, match="task_names"):
        load_fsmol_dir(root, "test", "CHEMBL1")


# ---------------------------------------------------------------------------------------------
# FS-Mol split file


@pytest.mark.data
def test_fsmol_split_file(shared_data):
    split = load_fsmol_split(shared_data / "molecules/fsmol/fsmol-0.1.json")
    assert {k: len(v) for k, v in split.items()} == {"train": 4938, "valid": 40, "test": 157}
    names = [n for v in split.values() for n in v]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"CHEMBL\d+", n) for n in names)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected an object"),
        ("{not json", "not valid JSON"),
        ('{"train": [], "valid": [], "test": [], "dev": []}', r"unknown fold name\(s\) \['dev'\]"),
        ('{"train": ["A"], "test": ["B"]}', r"lacks the fold\(s\) \['valid'\]"),
        ('{"train": "A", "valid": [], "test": []}', "'train' .* is a str, expected a list"),
        ('{"train": ["A", 3], "valid": [], "test": []}', "entry 1 is 3"),
        ('{"train": ["A", "A"], "valid": [], "test": []}', r"repeats task name\(s\) \['A'\]"),
        ('{"train": ["A"], "valid": ["B"], "test": ["A"]}', "'A' is in both fold 'train'"),
    ],
)
def test_fsmol_split_file_bad(tmp_path, content, message):
    p = tmp_path / "split.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_fsmol_split(p)


def test_fsmol_split_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_fsmol_split(tmp_path / "none.json")


# ---------------------------------------------------------------------------------------------
# raw ChEMBL tables: FS-Mol's own outputs as the reference


def _read_processed(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.data
def test_chembl_table_reproduces_fsmol_processed_fixture(shared_data):
    ref = _read_processed(shared_data / FIXTURES / "processed_CHEMBL1002396.csv")
    assay = clean_chembl_assay_table(shared_data / FIXTURES / "raw_CHEMBL1002396.csv")
    assert assay.name == "CHEMBL1002396" and len(assay) == len(ref) == 33
    assert list(assay.smiles) == [r["smiles"] for r in ref]
    assert list(assay.canonical_smiles) == [r["canonical_smiles"] for r in ref]
    np.testing.assert_allclose(
        assay.log_standard_value, [float(r["log_standard_value"]) for r in ref], rtol=1e-13
    )
    np.testing.assert_allclose(assay.standard_value, [float(r["standard_value"]) for r in ref])
    assert list(assay.standard_relation) == [r["standard_relation"] for r in ref]
    assert assay.threshold == pytest.approx(float(ref[0]["threshold"]), rel=1e-13)
    np.testing.assert_array_equal(assay.activity, [float(r["activity"]) for r in ref])
    np.testing.assert_allclose(assay.molecular_weight, [float(r["molecular_weight"]) for r in ref])
    np.testing.assert_array_equal(assay.num_atoms, [int(r["num_atoms"]) for r in ref])
    assert assay.max_num_atoms == int(ref[0]["max_num_atoms"])
    assert assay.max_molecular_weight == pytest.approx(float(ref[0]["max_molecular_weight"]))
    # 48 raw rows: 8 exact repeats, then 7 rows of 3 molecules with conflicting measurements
    assert assay.counts["raw"] == 48
    assert assay.counts["exact_duplicates"] == 40
    assert assay.counts["conflicting_duplicates"] == 33

    task = load_chembl_assay_table(shared_data / FIXTURES / "raw_CHEMBL1002396.csv")
    assert task.kind == "classification" and task.name == "CHEMBL1002396"
    assert list(task.inputs) == [r["smiles"] for r in ref]
    np.testing.assert_array_equal(task.labels, [float(r["activity"]) for r in ref])
    assert task.metadata["threshold"] == pytest.approx(4.23, abs=1e-6)
    reg = load_chembl_assay_table(
        shared_data / FIXTURES / "raw_CHEMBL1002396.csv",
        "regression",
        regression_target="neg_log10_M",
    )
    np.testing.assert_allclose(reg.labels, [float(r["log_standard_value"]) for r in ref])


@pytest.mark.data
def test_chembl_table_activity_classes_and_buffer(shared_data):
    """The fixture's four-class strings come from an FS-Mol revision whose weak-class buffer was
    one standard deviation; FS-Mol's current rule (a tenth, our default) moves rows between the
    weak and hard classes but never across the threshold."""
    ref = _read_processed(shared_data / FIXTURES / "processed_CHEMBL1002396.csv")
    raw = shared_data / FIXTURES / "raw_CHEMBL1002396.csv"
    one_sd = clean_chembl_assay_table(raw, buffer_fraction=1.0)
    assert list(one_sd.activity_string) == [r["activity_string"] for r in ref]
    tenth = clean_chembl_assay_table(raw)
    assert list(tenth.activity_string) != list(one_sd.activity_string)
    np.testing.assert_array_equal(tenth.activity, one_sd.activity)
    logs = np.array([float(r["log_standard_value"]) for r in ref])
    np.testing.assert_allclose(one_sd.buffer, np.std(logs, ddof=1), rtol=1e-12)
    hard = clean_chembl_assay_table(raw, buffer_fraction=1.0, hard_only=True)
    assert set(hard.activity_string) <= {"active", "inactive"}
    assert len(hard) == sum(r["activity_string"] in ("active", "inactive") for r in ref)


@pytest.mark.data
def test_chembl_table_matches_fsmol_pipeline_output_for_chembl1001235(shared_data):
    path = shared_data / FIXTURES / "raw_CHEMBL1001235.csv"
    assay = clean_chembl_assay_table(path)
    assert assay.threshold == pytest.approx(CHEMBL1001235_THRESHOLD, rel=1e-13)
    np.testing.assert_array_equal(assay.standard_value, CHEMBL1001235_VALUES)
    assert list(assay.activity_string) == CHEMBL1001235_CLASSES
    assert assay.counts["raw"] == 51
    task = load_chembl_assay_table(path)
    assert len(task) == 21 and task.labels.sum() == 10
    reg = load_chembl_assay_table(path, "regression")
    np.testing.assert_allclose(reg.labels, np.log(CHEMBL1001235_VALUES))


@pytest.mark.data
def test_chembl_table_mass_units(shared_data):
    """FS-Mol keeps nM, uM and % only, so CHEMBL1000114 (ug.mL-1) is dropped by FS-Mol."""
    path = shared_data / FIXTURES / "raw_CHEMBL1000114.csv"
    with pytest.raises(ValueError, match=r"unit selection .*'ug.mL-1': 28.*FS-Mol"):
        load_chembl_assay_table(path)
    task = load_chembl_assay_table(path, "regression", convert_mass_units=True)
    assay = clean_chembl_assay_table(path, convert_mass_units=True)
    assert assay.counts["max_mol_weight"] < assay.counts["units"]  # > 900 Da molecules dropped
    assert len(task) == len(assay) > 0
    # pentamidine, C19H24N4O2 (340.42 g/mol): 2.1 ug/mL -> 2.1e6 / 340.42 nM
    mw = 19 * 12.011 + 24 * 1.008 + 4 * 14.007 + 2 * 15.999
    i = list(assay.smiles).index("N=C(N)c1ccc(OCCCCCOc2ccc(C(=N)N)cc2)cc1")
    assert assay.standard_value[i] == pytest.approx(2.1e6 / mw, rel=1e-4)


@pytest.mark.data
def test_chembl_table_round_trips_through_fsmol_task_file(shared_data, tmp_path):
    """The FS-Mol task file FS-Mol would write for the assay loads into the same tasks."""
    path = shared_data / FIXTURES / "raw_CHEMBL1002396.csv"
    assay = clean_chembl_assay_table(path)
    recs = [
        {
            "SMILES": s,
            "Property": f"{a}",
            "Assay_ID": assay.name,
            "RegressionProperty": f"{v}",
            "LogRegressionProperty": f"{lv}",
            "Relation": r,
            "AssayType": assay.assay_type,
        }
        for s, a, v, lv, r in zip(
            assay.smiles,
            assay.activity,
            assay.standard_value,
            assay.log_standard_value,
            assay.standard_relation,
        )
    ]
    f = _write_task(tmp_path / f"{assay.name}.jsonl.gz", recs)
    for kind, target in [
        ("classification", "ln_nM"),
        ("regression", "ln_nM"),
        ("regression", "neg_log10_M"),
    ]:
        a = load_chembl_assay_table(path, kind, regression_target=target)
        b = load_fsmol_task(f, kind, regression_target=target)
        assert a.name == b.name and list(a.inputs) == list(b.inputs)
        np.testing.assert_allclose(a.labels, b.labels, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# raw ChEMBL tables: each cleaning rule on small synthetic tables

HEADER = "smiles,pchembl,standard_value,standard_units,standard_relation,activity_comment,chembl_id"
MOLS = ["CCO", "CCN", "CCC", "CCCl", "c1ccccc1", "CC(=O)O", "CCOC", "CCCN", "CCCO", "CCS"]


def _nm(p: float) -> str:
    """A concentration in nM whose -log10 molar is ``p``."""
    return repr(10 ** (9 - p))


def _table(tmp_path: Path, rows: list[tuple], name: str = "t.csv") -> Path:
    p = tmp_path / name
    lines = [HEADER] + [f"{s},,{v},{u},{r},,CHEMBL7" for s, v, u, r in rows]
    p.write_text("\n".join(lines) + "\n")
    return p


def test_chembl_activity_classes_fixed_threshold(tmp_path):
    # threshold 5, buffer 0.5: the FS-Mol class of each (pX, relation)
    cases = [
        (5.6, "=", "active"),
        (5.2, "<", "active"),
        (5.2, "=", "weak active"),
        (5.2, ">", "weak active"),
        (4.8, "=", "weak inactive"),
        (4.8, "<", "weak inactive"),
        (4.8, ">", "inactive"),
        (4.4, "<", "inactive"),
        (5.2, "", None),
    ]
    rows = [(m, _nm(p), "nM", r) for m, (p, r, _) in zip(MOLS, cases)]
    assay = clean_chembl_assay_table(_table(tmp_path, rows), threshold="fixed")
    assert assay.threshold == 5.0 and assay.buffer == 0.5
    expected = [c for _, _, c in cases if c is not None]
    assert list(assay.activity_string) == expected
    np.testing.assert_array_equal(assay.activity, [c in (_A, _WA) for c in expected])
    custom = clean_chembl_assay_table(_table(tmp_path, rows), threshold=4.6)
    # 5.2 with no relation is now beyond threshold + buffer (5.1), so it gets a class
    np.testing.assert_array_equal(custom.activity, [p > 4.6 for p, _, _ in cases])


def test_chembl_cleaning_rules(tmp_path):
    rows = [
        ("CCO", "2", "uM", "="),  # 2 uM = 2000 nM
        ("OCC", "2000", "nM", "="),  # same molecule and value after conversion: both kept
        ("CCN", _nm(4.0), "nM", "="),  # CCN: 4.0 and 4.05 agree, but both lie more than
        ("CCN", _nm(5.1), "nM", "="),  # one log unit from 5.1: all three dropped
        ("CCN", _nm(4.05), "nM", "="),
        ("CCC", _nm(4.0), "nM", "="),  # CCC: 4.0 and 5.6 conflict, 4.8 stays
        ("CCC", _nm(4.8), "nM", "="),
        ("CCC", _nm(5.6), "nM", "="),
        ("c1ccccc1", "500", "nM", "="),  # exact repeat -> one kept
        ("c1ccccc1", "500", "nM", "="),
        ("C" * 70, "10", "nM", "="),  # 982 Da > 900 Da
        ("xx(", "10", "nM", "="),  # invalid SMILES: skipped, counted
        ("CCCl", "", "", ""),  # no measurement
        ("CCCl", "5", "ug.mL-1", "="),  # unit FS-Mol drops
        ("CC(=O)O", "", "nM", "="),  # no value
    ]
    assay = clean_chembl_assay_table(_table(tmp_path, rows))
    assert list(assay.smiles) == ["CCO", "OCC", "CCC", "c1ccccc1"]
    np.testing.assert_allclose(assay.standard_value, [2000.0, 2000.0, 10 ** (9 - 4.8), 500.0])
    p2000 = 9 - math.log10(2000)
    np.testing.assert_allclose(
        assay.log_standard_value, [p2000, p2000, 4.8, 9 - math.log10(500)], rtol=1e-12
    )
    assert assay.canonical_smiles[0] == assay.canonical_smiles[1] == "CCO"
    assert assay.skipped_smiles == ["xx("]
    assert assay.counts == {
        "raw": 15,
        "units": 13,
        "valid_smiles": 12,
        "with_value": 11,
        "max_mol_weight": 10,
        "exact_duplicates": 9,
        "conflicting_duplicates": 4,
        "thresholded": 4,
    }
    # the median pX (5.70, 5.70, 4.8, 6.30) lies in [4, 6]: it is the threshold
    assert assay.threshold == pytest.approx(p2000)
    assert list(assay.activity_string) == ["weak inactive", "weak inactive", "inactive", "active"]
    task = load_chembl_assay_table(_table(tmp_path, rows))
    assert task.metadata["n_skipped"] == 1 and task.metadata["units"] == "nM"


def test_chembl_standardisation_merges_salts_and_tautomers(tmp_path):
    rows = [
        ("Oc1ccccn1", _nm(5.0), "nM", "="),  # 2-hydroxypyridine ...
        ("O=c1cccc[nH]1", _nm(6.5), "nM", "="),  # ... and 2-pyridone: one molecule, conflict
        ("CC(=O)[O-].[Na+]", _nm(5.5), "nM", "="),  # acetate salt == acetic acid
        ("CC(=O)O", _nm(5.6), "nM", "="),  # close: both kept
        ("CCO", _nm(5.0), "nM", "="),
    ]
    assay = clean_chembl_assay_table(_table(tmp_path, rows))
    assert list(assay.smiles) == ["CC(=O)[O-].[Na+]", "CC(=O)O", "CCO"]
    assert list(assay.canonical_smiles) == ["CC(=O)O", "CC(=O)O", "CCO"]


def test_chembl_thresholds(tmp_path):
    # median pX 6.5 is outside [4, 6] -> 5.0; inside the enzyme range [5, 7] -> the median
    rows = [(m, _nm(p), "nM", "=") for m, p in zip(MOLS, [6.0, 6.5, 8.0])]
    assert clean_chembl_assay_table(_table(tmp_path, rows)).threshold == 5.0
    enz = clean_chembl_assay_table(_table(tmp_path, rows), enzyme=True)
    assert enz.threshold == pytest.approx(6.5)
    with_desc = tmp_path / "enzyme.csv"
    with_desc.write_text(
        HEADER
        + ",protein_class_desc\n"
        + "".join(
            f"{m},,{_nm(p)},nM,=,,CHEMBL7,enzyme  kinase\n" for m, p in zip(MOLS, [6.0, 6.5, 8.0])
        )
    )
    assert clean_chembl_assay_table(with_desc).threshold == pytest.approx(6.5)
    # identical values: zero buffer and every row at the threshold, which FS-Mol calls active
    same = [(m, _nm(5.5), "nM", "=") for m in MOLS[:3]]
    flat = clean_chembl_assay_table(_table(tmp_path, same))
    assert flat.buffer == 0.0 and list(flat.activity_string) == ["active"] * 3
    # inhibition percentages: median 30 < 50 -> 50; median 65 -> 65
    pct = [(m, v, "%", "=") for m, v in zip(MOLS, [10, 20, 30, 40, 80])]
    a = clean_chembl_assay_table(_table(tmp_path, pct))
    assert a.threshold == 50.0 and a.standard_units == "%"
    assert a.buffer == pytest.approx(np.std([10, 20, 30, 40, 80], ddof=1) / 10)
    np.testing.assert_array_equal(a.activity, [0, 0, 0, 0, 1])
    pct2 = [(m, v, "%", "=") for m, v in zip(MOLS, [40, 60, 70, 90])]
    assert clean_chembl_assay_table(_table(tmp_path, pct2)).threshold == 65.0
    with pytest.raises(ValueError, match="use 'raw'"):
        load_chembl_assay_table(
            _table(tmp_path, pct), "regression", regression_target="neg_log10_M"
        )
    reg = load_chembl_assay_table(_table(tmp_path, pct), "regression", regression_target="raw")
    np.testing.assert_array_equal(reg.labels, [10, 20, 30, 40, 80])


def test_chembl_table_bad_input(tmp_path):
    mixed = [("CCO", "10", "nM", "="), ("CCN", "20", "%", "=")]
    with pytest.raises(ValueError, match="mixes percentages and concentrations"):
        clean_chembl_assay_table(_table(tmp_path, mixed))
    words = [("CCO", "ten", "nM", "=")]
    with pytest.raises(ValueError, match="standard_value 'ten' is not a number"):
        clean_chembl_assay_table(_table(tmp_path, words))
    p = tmp_path / "cols.csv"
    p.write_text("smiles,standard_value\nCCO,1\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['standard_units'"):
        clean_chembl_assay_table(p)
    p.write_text(HEADER + "\n")
    with pytest.raises(ValueError, match="has no rows"):
        clean_chembl_assay_table(p)
    one = [("CCO", "10", "nM", "=")]  # a single row has no standard deviation -> no buffer
    with pytest.raises(ValueError, match="after thresholding"):
        clean_chembl_assay_table(_table(tmp_path, one))
    two = [("CCO", "10", "nM", "="), ("CCN", "100", "nM", "=")]
    with pytest.raises(ValueError, match="min_size=5"):
        load_chembl_assay_table(_table(tmp_path, two), min_size=5)
    with pytest.raises(ValueError, match="unknown threshold 'median'"):
        clean_chembl_assay_table(_table(tmp_path, two), threshold="median")
    with pytest.raises(ValueError, match="buffer_fraction"):
        clean_chembl_assay_table(_table(tmp_path, two), buffer_fraction=-1)
    with pytest.raises(ValueError, match="max_mol_weight"):
        clean_chembl_assay_table(_table(tmp_path, two), max_mol_weight=0)
    with pytest.raises(FileNotFoundError):
        clean_chembl_assay_table(tmp_path / "none.csv")
