"""Loaders against the raw files read independently (pandas / json / csv), and the errors and
reports of malformed inputs a user meets (nothing dropped or blanked without being said)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from probrec.data.annotations import load_lewidi, load_popquorn, split_items
from probrec.data.featurize import MoleculeFeaturizer

POPQUORN = "annotators/popquorn_offensiveness_1200.csv"
LEWIDI = "annotators/lewidi"
DEMOGRAPHICS = ("gender", "race", "age", "occupation", "education")


# ------------------------------------------------------------------------------- POPQUORN
def test_popquorn_equals_the_csv_read_with_pandas(shared_data):
    path = shared_data / POPQUORN
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    rated = raw[raw["offensiveness"] != ""]
    data = load_popquorn(path)
    assert len(data) == raw["instance_id"].nunique() == 1200
    assert data.n_annotations == len(rated)
    assert len(data.annotators) == raw["user_id"].nunique() == 262
    expected: dict[str, list[tuple[str, int]]] = {}
    for r in rated.itertuples():
        expected.setdefault(r.instance_id, []).append((r.user_id, int(float(r.offensiveness))))
    text = dict(zip(raw["instance_id"], raw["text"]))
    for i, iid in enumerate(data.item_ids):
        got = zip(data.annotator_ids[i][data.mask[i]], data.labels[i][data.mask[i]].tolist())
        assert sorted(got) == sorted(expected[iid]), iid
        assert data.texts[i] == text[iid]
    users = raw.drop_duplicates("user_id").set_index("user_id")
    for uid, demo in data.annotators.items():
        assert demo == {c: users.loc[uid, c] for c in DEMOGRAPHICS}
    assert data.metadata["n_unrated_rows"] == 0 and data.metadata["unrated_items"] == []


def _popquorn(tmp_path, body: str, header: str = "instance_id,user_id,text,offensiveness,gender"):
    p = tmp_path / "popquorn.csv"
    p.write_text(header + "\n" + body)
    return p


def test_popquorn_reports_the_rows_and_items_it_leaves_out(tmp_path):
    # item 2's only rating is missing: it was dropped without a word
    data = load_popquorn(_popquorn(tmp_path, "1,a,t1,2,M\n1,b,t1,,F\n2,a,t2,,M\n"))
    assert data.item_ids.tolist() == ["1"]
    assert data.metadata["n_unrated_rows"] == 2
    assert data.metadata["unrated_items"] == ["2"]


@pytest.mark.parametrize(
    "body, match",
    [
        (",a,t1,2,M\n2,b,t2,3,F\n", "no instance_id"),  # was dropped by groupby, silently
        ("1,,t1,2,M\n2,b,t2,3,F\n", "no user_id"),  # became an annotator called 'nan'
        ("1,a,t1,2,M\n1,b,t2,3,F\n", "instance_id 1 has 2 different texts"),
        ("1,a,t1,2,M\n2,a,t2,3,F\n", "user_id a has 2 different 'gender'"),
    ],
)
def test_popquorn_refuses_rows_it_would_misread(tmp_path, body, match):
    with pytest.raises(ValueError, match=match):
        load_popquorn(_popquorn(tmp_path, body))


def test_popquorn_unreadable_files_name_the_path(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        load_popquorn(empty)
    fake = tmp_path / "fake.csv.gz"
    fake.write_text("instance_id,user_id,text,offensiveness\n")
    with pytest.raises(ValueError, match="fake.csv.gz"):
        load_popquorn(fake)


# ------------------------------------------------------------------------------- LeWiDi
@pytest.mark.parametrize(
    "name, n_annotators", [("HS-Brexit", 6), ("ArMIS", 3), ("MD-Agreement", 682), ("ConvAbuse", 8)]
)
def test_lewidi_equals_the_json_files(shared_data, name, n_annotators):
    data = load_lewidi(shared_data / LEWIDI, name)
    position = {iid: i for i, iid in enumerate(data.item_ids)}
    n_items = n_annotations = 0
    for split in ("train", "dev"):
        items = json.loads((shared_data / LEWIDI / f"lewidi2023_{name}_{split}.json").read_text())
        for key, item in items.items():
            i = position[f"{split}/{key}"]
            labels = [int(v) for v in item["annotations"].split(",")]
            people = item["annotators"].split(",")
            assert data.labels[i][data.mask[i]].tolist() == labels
            assert data.annotator_ids[i][data.mask[i]].tolist() == people
            assert data.source_split[i] == split
            if name != "ConvAbuse":  # ConvAbuse's dialogue JSON becomes one string
                assert data.texts[i] == item["text"]
            n_items += 1
            n_annotations += len(labels)
    assert len(data) == n_items and data.n_annotations == n_annotations
    assert len(data.annotators) == n_annotators
    assert set(np.unique(data.labels[data.mask])) <= set(data.label_values)


def _lewidi(tmp_path, items):
    (tmp_path / "lewidi2023_ArMIS_train.json").write_text(json.dumps(items))
    return tmp_path


@pytest.mark.parametrize(
    "item, match",
    [
        # the count mismatch blanked every annotator id of the item
        ({"text": "a", "annotations": "0,1,1", "annotators": "A,B"}, "one annotator per"),
        # the empty slot was dropped, then the ids blanked (3 annotators, 2 labels)
        ({"text": "a", "annotations": "0,,1", "annotators": "A,B,C"}, "empty entry"),
        ({"text": "a", "annotations": "0,1", "annotators": "A,A"}, r"\['A'\] annotate"),
    ],
)
def test_lewidi_refuses_annotations_it_would_misread(tmp_path, item, match):
    with pytest.raises(ValueError, match=match):
        load_lewidi(_lewidi(tmp_path, {"1": item}), "ArMIS", splits="train")


def test_lewidi_without_annotator_ids_keeps_anonymous_annotations(tmp_path):
    data = load_lewidi(
        _lewidi(tmp_path, {"1": {"text": "a", "annotations": "0,1"}}), "ArMIS", splits="train"
    )
    assert data.annotation_lists() == [[0, 1]] and data.annotators == {}


def test_lewidi_invalid_json_names_the_file(tmp_path):
    (tmp_path / "lewidi2023_ArMIS_train.json").write_text("")
    with pytest.raises(ValueError, match="lewidi2023_ArMIS_train.json is not valid JSON"):
        load_lewidi(tmp_path, "ArMIS", splits="train")


def test_split_items_partitions_real_items_and_keeps_them_whole(shared_data):
    data = load_lewidi(shared_data / LEWIDI, "ConvAbuse")
    parts = split_items(data, (0.6, 0.2, 0.2), seed=3)
    ids = [p.item_ids.tolist() for p in parts]
    flat = [i for part in ids for i in part]
    assert len(flat) == len(set(flat)) == len(data)  # disjoint and covering
    assert [p.item_ids.tolist() for p in split_items(data, (0.6, 0.2, 0.2), seed=3)] == ids
    assert [p.item_ids.tolist() for p in split_items(data, (0.6, 0.2, 0.2), seed=4)] != ids
    position = {iid: i for i, iid in enumerate(data.item_ids)}
    for part in parts:
        for j, iid in enumerate(part.item_ids):
            i = position[iid]
            assert part.labels[j][part.mask[j]].tolist() == data.labels[i][data.mask[i]].tolist()
            assert (
                part.annotator_ids[j][part.mask[j]] == data.annotator_ids[i][data.mask[i]]
            ).all()
            assert part.texts[j] == data.texts[i]


# ------------------------------------------------------------------------------- featurizer
MOLECULES = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O", "[Na+].[Cl-]", "C1CCC2(CC1)OCCO2"]


@pytest.mark.parametrize("radius, n_bits", [(2, 2048), (3, 1024)])
def test_raw_features_equal_rdkit_called_directly(tmp_path, radius, n_bits):
    from rdkit import Chem
    from rdkit.Chem import AllChem, Descriptors

    f = MoleculeFeaturizer(radius=radius, n_bits=n_bits, cache_dir=tmp_path, n_jobs=1)
    for raw in (f.raw_features(MOLECULES), f.raw_features(MOLECULES)):  # computed, then cached
        for row, smiles in zip(raw, MOLECULES):
            mol = Chem.MolFromSmiles(smiles)
            counts = np.zeros(n_bits)
            legacy = AllChem.GetHashedMorganFingerprint(mol, radius, nBits=n_bits)
            for bit, c in legacy.GetNonzeroElements().items():
                counts[bit] = c
            np.testing.assert_array_equal(row[:n_bits], counts)
            ref = Descriptors.CalcMolDescriptors(mol)
            desc = np.array([ref[name] for name, _ in Descriptors._descList], dtype=float)
            desc[~np.isfinite(desc)] = np.nan
            np.testing.assert_allclose(row[n_bits:], desc, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_cache_keys_of_different_smiles_lists_differ(tmp_path):
    from rdkit import Chem

    # RDKit reads text after whitespace as the molecule's name: both lists are valid, and the
    # newline-joined key made them share one cache entry (the second got the first's rows)
    first, second = ["C\nC", "O"], ["C", "C\nO"]
    assert all(Chem.MolFromSmiles(s) is not None for s in first + second)
    f = MoleculeFeaturizer(fingerprint=True, descriptors=False, cache_dir=tmp_path, n_jobs=1)
    assert f.cache_key(first) != f.cache_key(second)
    f.raw_features(first)
    fresh = MoleculeFeaturizer(fingerprint=True, descriptors=False, cache_dir=False, n_jobs=1)
    np.testing.assert_array_equal(f.raw_features(second), fresh.raw_features(second))


# ------------------------------------------------------------------------------- MovieLens
def test_movielens_equals_the_atomic_files_read_with_pandas(shared_data):
    from probrec.data.movielens import GENRES, load_movielens

    folder = shared_data / "recsys" / "ml-100k"
    inter = pd.read_csv(folder / "ml-100k.inter.gz", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", encoding="latin-1", dtype=str)
    items.columns = [c.split(":")[0] for c in items.columns]
    log = load_movielens(folder)
    order = inter.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    assert len(log) == len(inter) == 100_000
    np.testing.assert_array_equal(log.user, order["user_id"])
    np.testing.assert_array_equal(log.item, order["item_id"])
    np.testing.assert_array_equal(log.time, order["timestamp"])
    np.testing.assert_array_equal(log.rating, order["rating"])
    np.testing.assert_array_equal(log.label, (order["rating"] >= 4).to_numpy())
    genres = items.set_index("item_id")["class"].fillna("").to_dict()
    expected = [[g in genres[str(i)].split() for g in GENRES] for i in order["item_id"]]
    np.testing.assert_array_equal(log.multi_hot.astype(bool), np.array(expected))


@pytest.mark.parametrize(
    "line, match",
    [
        ("1\t2\tnan\t5", "rating of data line 1 is 'nan'"),  # was label 0, silently
        ("1\t2\t\t5", "rating of data line 1 is ''"),
        ("1\t2\tgood\t5", "rating of data line 1 is 'good'"),
        ("1\t2\t3", "timestamp of data line 1 is missing"),  # an IndexError before
    ],
)
def test_movielens_refuses_ratings_it_cannot_read(tmp_path, line, match):
    from probrec.data.movielens import load_movielens

    (tmp_path / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + line + "\n"
    )
    (tmp_path / "x.item").write_text("item_id:token\n2\n")
    (tmp_path / "x.user").write_text("user_id:token\n1\n")
    with pytest.raises(ValueError, match=match):
        load_movielens(tmp_path)
    (tmp_path / "x.inter").write_text("")
    with pytest.raises(ValueError, match="x.inter is empty"):
        load_movielens(tmp_path)


# ------------------------------------------------------------------------------- molecule CSVs
def test_wide_moleculenet_table_equals_pandas_and_rdkit(shared_data):
    from rdkit import Chem, RDLogger

    from probrec.data.moleculenet import load_moleculenet

    RDLogger.DisableLog("rdApp.*")
    path = shared_data / "molecules" / "moleculenet" / "tox21.csv.gz"
    raw = pd.read_csv(path)
    valid = np.array([Chem.MolFromSmiles(s) is not None for s in raw["smiles"]])
    tasks = load_moleculenet(path)
    assert tasks.skipped == raw["smiles"][~valid].tolist() and (~valid).sum() == 8
    assert tasks.names == [c for c in raw.columns if c != "smiles"] and tasks.excluded == {}
    for t in tasks:
        labelled = valid & raw[t.name].notna().to_numpy()
        assert t.inputs.tolist() == raw["smiles"][labelled].tolist()
        np.testing.assert_array_equal(t.labels, raw[t.name][labelled])


@pytest.mark.parametrize(
    "name, n_rows, n_labelled", [("covid_moonshot", 2062, 1926), ("esol", 1128, 1128)]
)
def test_regression_sets_count_the_rows_without_a_label(shared_data, name, n_rows, n_labelled):
    from probrec.data.moleculenet import REGRESSION_SETS, load_regression_set

    rel, column, _ = REGRESSION_SETS[name]
    raw = pd.read_csv(shared_data / "molecules" / rel)
    task = load_regression_set(name, shared_data)
    assert len(raw) == n_rows and raw[column].notna().sum() == n_labelled == len(task)
    assert task.metadata["n_unlabelled"] == n_rows - n_labelled
    expected = raw[column].dropna().to_numpy(dtype=float)
    if name == "covid_moonshot":  # negated pIC50 from the IC50 in uM
        expected = -(6 - np.log10(expected))
    np.testing.assert_allclose(task.labels, expected)


def test_dockstring_equals_pandas(shared_data):
    from probrec.data.dockstring import DOCKSTRING_TARGETS, load_dockstring_targets

    path = shared_data / "molecules" / "ood" / "dockstring-dataset-subsampled.csv.gz"
    raw = pd.read_csv(path)
    smiles, names, scores = load_dockstring_targets(path)
    assert smiles == raw["smiles"].tolist() and names == list(DOCKSTRING_TARGETS)
    np.testing.assert_array_equal(scores, raw[list(DOCKSTRING_TARGETS)].to_numpy(float))


def test_taobao_equals_pandas_with_repeats_merged(shared_data):
    from probrec.data.taobao import load_taobao_ad

    path = shared_data / "recsys" / "ctr_samples" / "taobaoad_tiny_train.csv"
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw["t"] = (pd.to_datetime(raw["time_stamp"]) - pd.Timestamp("1970-01-01")).dt.total_seconds()
    raw["clk"] = raw["clk"].astype(int)
    for c in ("userid", "adgroup_id", "t"):
        raw[c] = raw[c].astype(np.int64)
    merged = raw.groupby(["userid", "adgroup_id", "t"], as_index=False)["clk"].max()
    merged = merged.sort_values(["t", "userid", "adgroup_id"])
    log = load_taobao_ad(path)
    assert log.metadata["merged_rows"] == len(raw) - len(merged) == 1
    np.testing.assert_array_equal(log.user, merged["userid"])
    np.testing.assert_array_equal(log.item, merged["adgroup_id"])
    np.testing.assert_array_equal(log.time, merged["t"])
    np.testing.assert_array_equal(log.label, merged["clk"])


def test_csv_loaders_name_a_file_that_is_not_gzip(tmp_path):
    from probrec.data.dockstring import load_dockstring_targets
    from probrec.data.fsmol import clean_chembl_assay_table
    from probrec.data.moleculenet import load_moleculenet
    from probrec.data.taobao import load_taobao_ad

    fake = tmp_path / "table.csv.gz"  # plain text under a .gz name
    fake.write_text("smiles,y\nCC,1\n")
    for load in (load_moleculenet, load_dockstring_targets, load_taobao_ad):
        with pytest.raises(ValueError, match="table.csv.gz' is not a readable CSV"):
            load(fake)
    with pytest.raises(ValueError, match="table.csv.gz' is not a readable CSV"):
        clean_chembl_assay_table(fake)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_moleculenet(tmp_path)  # a folder: IsADirectoryError before
