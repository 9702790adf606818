import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator

from probrec.data import MoleculeFeaturizer, Task, featurize_tasks
from probrec.data.featurize import _descriptor_values

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1", "O=C(O)c1ccccc1OC(C)=O"]


def test_descriptors_equal_rdkit_functions():
    for s in SMILES:
        ours = np.array(_descriptor_values(Chem.MolFromSmiles(s), Descriptors._descList))
        ref = np.array([f(Chem.MolFromSmiles(s)) for _, f in Descriptors._descList], float)
        np.testing.assert_allclose(ours, ref, rtol=1e-10, equal_nan=True)


def test_fingerprint_counts_and_standardisation(tmp_path):
    f = MoleculeFeaturizer(cache_dir=tmp_path, n_jobs=1, progress=False)
    x = f.fit_transform(SMILES)
    assert x.shape == (5, 2048 + len(Descriptors._descList)) and x.dtype == np.float32
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    np.testing.assert_array_equal(
        x[1, :2048], gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(SMILES[1]))
    )
    desc = x[:, 2048:]
    assert np.isfinite(desc).all()
    varying = desc.std(0) > 0
    np.testing.assert_allclose(desc[:, varying].mean(0), 0, atol=1e-5)


def test_statistics_come_from_training_molecules_only(tmp_path):
    f = MoleculeFeaturizer(cache_dir=tmp_path, n_jobs=1, progress=False, fingerprint=False)
    f.fit(SMILES[:3])
    x_test = f.transform(SMILES[3:])
    f_all = MoleculeFeaturizer(cache_dir=tmp_path, n_jobs=1, progress=False, fingerprint=False)
    x_all = f_all.fit_transform(SMILES)[3:]
    assert not np.allclose(x_test, x_all)
    raw = f.raw_features(SMILES[3:])
    st = f.stats_
    manual = np.clip((np.where(np.isnan(raw), st["median"], raw) - st["mean"]) / st["std"], -10, 10)
    np.testing.assert_allclose(x_test, manual, rtol=1e-5, atol=1e-5)


def test_cache_hit_returns_same_features(tmp_path):
    f = MoleculeFeaturizer(cache_dir=tmp_path, n_jobs=2, batch_size=2, progress=False)
    a = f.raw_features(SMILES)
    files = list((tmp_path / "features").glob("*.npz"))
    assert len(files) == 1
    b = MoleculeFeaturizer(cache_dir=tmp_path, progress=False).raw_features(SMILES)
    np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("damage", ["truncated", "empty", "rows"])
def test_a_damaged_cache_file_is_named_and_recomputed(tmp_path, damage):
    f = MoleculeFeaturizer(cache_dir=tmp_path, fingerprint=True, descriptors=False, progress=False)
    a = f.raw_features(SMILES)
    (path,) = (tmp_path / "features").glob("*.npz")
    if damage == "truncated":  # a BadZipFile on every later call
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # another entry's rows: returned as they were
        np.savez(path, fp=np.zeros((3, f.n_bits), np.uint16), desc=np.zeros((3, 0)))
    with pytest.warns(RuntimeWarning, match=f"damaged cache file .*{path.name}"):
        np.testing.assert_array_equal(f.raw_features(SMILES), a)
    np.testing.assert_array_equal(f.raw_features(SMILES), a)  # rewritten: no warning now


def test_bad_featurizer_arguments_are_named():
    for kw, name in (
        ({"n_bits": 0}, "n_bits"),
        ({"radius": -1}, "radius"),
        ({"clip": -1.0}, "clip"),
        ({"clip": float("nan")}, "clip"),
        ({"batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(ValueError, match=name):
            MoleculeFeaturizer(cache_dir=False, **kw)
    f = MoleculeFeaturizer(cache_dir=False, progress=False)
    with pytest.raises(TypeError, match="single str"):
        f.raw_features("CCO")  # was 3 molecules, one per character
    with pytest.raises(ValueError, match="at least one molecule"):
        f.fit_raw(np.zeros((0, f.dim)))  # every statistic was NaN


def test_invalid_smiles_named(tmp_path):
    f = MoleculeFeaturizer(cache_dir=False, progress=False)
    with pytest.raises(ValueError, match="index 1"):
        f.raw_features(["CCO", "xx(", "CCC"])
    with pytest.raises(ValueError, match="not fitted"):
        f.transform(["CCO"])


def test_featurize_tasks_names_the_task_and_row_of_an_invalid_smiles():
    # the message gave the position in featurize_tasks' sorted list of unique molecules
    # ("first at index 6" for row 2 of a 4-row task), naming no task
    f = MoleculeFeaturizer(cache_dir=False, n_jobs=1, progress=False)
    a = Task(SMILES[:4], [0, 1, 0, 1], "classification", "assayA")
    b = Task(["CCCC", "C1CC1", "Xx(C)", "OCC"], [0, 1, 0, 1], "classification", "assayB")
    assert Chem.MolFromSmiles("Xx(C)") is None
    with pytest.raises(ValueError, match=r"row 2 of task 'assayB' \(tasks\): 'Xx\(C\)'"):
        featurize_tasks([a, b], f, fit_on=[a])
    with pytest.raises(ValueError, match=r"row 2 of task 'assayB' \(fit_on\)"):
        featurize_tasks([a], f, fit_on=[b])


def test_featurize_tasks_shares_rows(tmp_path):
    f = MoleculeFeaturizer(cache_dir=tmp_path, n_jobs=1, progress=False)
    t1 = Task(np.array(SMILES[:3], dtype=object), [0, 1, 0], "classification", "a")
    t2 = Task(np.array(SMILES[2:], dtype=object), [1, 0, 1], "classification", "b")
    out = featurize_tasks([t1, t2], f, fit_on=[t1])
    np.testing.assert_array_equal(out[0].inputs[2], out[1].inputs[0])
    assert out[1].inputs.shape == (3, f.dim)
    # a fitted featurizer keeps its statistics (fit_on replaced them, silently)
    restored = MoleculeFeaturizer.from_state_dict(f.state_dict())
    with pytest.raises(ValueError, match="already fitted on other molecules"):
        featurize_tasks([t2], restored, fit_on=[t2])
    again = featurize_tasks([t2], restored)
    np.testing.assert_array_equal(again[0].inputs[:], out[1].inputs[:])
    same = featurize_tasks([t2], restored, fit_on=[t1])  # the README's idiom: same statistics
    np.testing.assert_array_equal(same[0].inputs[:], out[1].inputs[:])


@pytest.mark.data
@pytest.mark.slow
def test_toxcast_featurises(shared_data):
    from probrec.data import load_moleculenet

    ts = load_moleculenet(shared_data / "molecules/moleculenet/toxcast_500.csv.gz")
    out = featurize_tasks(ts, MoleculeFeaturizer(progress=False), fit_on=ts)
    assert out[0].inputs.matrix.shape == (8576, 2048 + len(Descriptors._descList))


def test_featurize_command_records_the_csv_rows_it_kept(tmp_path, monkeypatch):
    import argparse
    import json

    from probrec.data import featurize_cli

    csv = tmp_path / "m.csv"
    csv.write_text("smiles,y\nCCO,1\nnot_a_smiles,2\nc1ccccc1,3\nCC(=O)O,4\n")
    parser = argparse.ArgumentParser()
    featurize_cli.add_arguments(parser)
    monkeypatch.chdir(tmp_path)
    assert featurize_cli.run(parser.parse_args([str(csv), "--out", "f.npy", "--no-progress"])) == 0
    x, rows = np.load(tmp_path / "f.npy"), np.load(tmp_path / "f.rows.npy")
    # the invalid row was dropped and nothing said which: row 1 of x was the CSV's third row
    assert rows.tolist() == [0, 2, 3] and x.shape[0] == 3
    assert featurize_cli.run(parser.parse_args([str(csv), "--out", "new/g", "--no-progress"])) == 0
    assert (tmp_path / "new" / "g.npy").is_file() and (tmp_path / "new" / "g.rows.npy").is_file()
    state = json.loads((tmp_path / "f.featurizer.json").read_text())
    again = MoleculeFeaturizer.from_state_dict(state).transform(["c1ccccc1"])
    np.testing.assert_allclose(again[0], x[1], rtol=0, atol=1e-6)


def test_featurize_tasks_names_tasks_that_are_not_smiles(tmp_path):
    f = MoleculeFeaturizer(cache_dir=tmp_path, n_jobs=1, progress=False)
    t = Task(np.array(SMILES, dtype=object), [0, 1, 0, 1, 0], "classification", "a")
    (done,) = featurize_tasks([t], f, fit_on=[t])
    # featurising twice failed with "unhashable type: 'numpy.ndarray'"
    with pytest.raises(TypeError, match="tasks: task 'a' .* not SMILES"):
        featurize_tasks([done], f)
    with pytest.raises(TypeError, match="fit_on: task 'a'"):
        featurize_tasks([t], MoleculeFeaturizer(cache_dir=tmp_path, progress=False), fit_on=[done])


def test_raw_features_of_another_width_and_statistics_of_another_rdkit_are_refused(tmp_path):
    f = MoleculeFeaturizer(cache_dir=tmp_path, n_jobs=1, progress=False)
    raw = f.raw_features(SMILES)
    f.fit_raw(raw)
    small = MoleculeFeaturizer(n_bits=1024, cache_dir=tmp_path, n_jobs=1, progress=False)
    # another featurizer's raw features were split at the wrong column and standardised
    with pytest.raises(ValueError, match=r"raw must be .* \[n, 2265\]"):
        f.transform_raw(small.raw_features(SMILES))
    with pytest.raises(ValueError, match="raw must be"):
        f.fit_raw(raw[:, :-3])
    # a state saved by an RDKit with 3 fewer descriptors: a numpy broadcasting error at the
    # first transform
    state = f.state_dict()
    state["stats"] = {k: v[:-3] for k, v in state["stats"].items()}
    with pytest.raises(ValueError, match=f"computes {f.n_desc} descriptors"):
        MoleculeFeaturizer.from_state_dict(state)
    again = MoleculeFeaturizer.from_state_dict(f.state_dict(), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.transform(SMILES), f.transform_raw(raw))
