"""Individual-annotation containers, validation, loaders and the synthetic population."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from probrec.data import (
    AnnotationSet,
    annotation_counts,
    load_lewidi,
    load_popquorn,
    overdispersed_annotations,
    pad_annotations,
    split_items,
    synthetic_annotations,
)


def test_lists_and_padded_matrix_give_the_same_annotations():
    lists = [[1, 2, 2], [5], [3, 3, 4, 1]]
    labels, mask = pad_annotations(lists, label_values=range(1, 6))
    assert labels.shape == (3, 4) and mask.sum() == 8
    np.testing.assert_array_equal(mask.sum(1), [3, 1, 4])
    padded = np.array([[1, 2, 2, np.nan], [5, np.nan, np.nan, np.nan], [3, 3, 4, 1]])
    l2, m2 = pad_annotations(padded, label_values=range(1, 6))
    np.testing.assert_array_equal(l2[m2], labels[mask])
    explicit = np.where(np.isnan(padded), -99, padded)  # masked entries may hold anything
    l3, m3 = pad_annotations(explicit, ~np.isnan(padded), label_values=range(1, 6))
    np.testing.assert_array_equal(m3, m2)
    np.testing.assert_array_equal(l3[m3], labels[mask])
    counts = annotation_counts(labels, mask, range(1, 6))
    np.testing.assert_array_equal(counts, [[1, 2, 0, 0, 0], [0, 0, 0, 0, 1], [1, 0, 2, 1, 0]])


@pytest.mark.parametrize(
    ("annotations", "mask", "match"),
    [
        ([[1, 2], [7]], None, r"labels \[7\] outside the label set"),
        ([[1, 2], []], None, "item 1"),
        (np.array([[1.0, 2.0], [np.nan, np.nan]]), None, "no annotation"),
        ([[1.5, 2]], None, "integer labels"),
        (np.array([[1, 2]]), np.array([[True]]), "mask must have the shape"),
        (np.array([1, 2, 3]), None, "1-D array"),
        ([], None, "no items"),
        ([[1, 2], [3, None]], None, r"annotations\[1\] holds None / NaN"),  # was read as missing
        ([[1, float("nan")]], None, r"annotations\[0\] holds None / NaN"),
    ],
)
def test_bad_annotations_raise_naming_the_problem(annotations, mask, match):
    with pytest.raises(ValueError, match=match):
        pad_annotations(annotations, mask, label_values=range(1, 6))


def test_mask_with_lists_and_non_numeric_are_type_errors():
    with pytest.raises(TypeError, match="mask"):
        pad_annotations([[1, 2]], np.ones((1, 2), bool))
    with pytest.raises(TypeError):
        pad_annotations([["a", "b"]])


def _toy_set() -> AnnotationSet:
    lists = [[1, 2], [3], [4, 4, 5], [2, 2], [1, 5, 3, 3]]
    labels, mask = pad_annotations(lists, label_values=range(1, 6))
    return AnnotationSet(
        "toy",
        labels,
        mask,
        (1, 2, 3, 4, 5),
        "ordinal",
        np.array([f"i{i}" for i in range(5)]),
        texts=[f"text {i}" for i in range(5)],
        features=np.arange(10, dtype=np.float32).reshape(5, 2),
    )


def test_split_by_item_is_a_seeded_partition():
    data = synthetic_annotations(50, seed=3)
    parts = split_items(data, (0.6, 0.2, 0.2), seed=7)
    assert [len(p) for p in parts] == [30, 10, 10]
    ids = np.concatenate([p.item_ids for p in parts])
    assert sorted(ids) == sorted(data.item_ids)
    again = data.split_items((0.6, 0.2, 0.2), seed=7)
    for a, b in zip(parts, again):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
    other = split_items(data, (0.6, 0.2, 0.2), seed=8)
    assert not np.array_equal(parts[2].item_ids, other[2].item_ids)
    # every item keeps all of its annotations, features and true distribution
    pos = {k: i for i, k in enumerate(data.item_ids)}
    for p in parts:
        idx = [pos[k] for k in p.item_ids]
        np.testing.assert_array_equal(p.counts(), data.counts()[idx])
        np.testing.assert_array_equal(p.features, data.features[idx])
        np.testing.assert_array_equal(p.metadata["true_probs"], data.metadata["true_probs"][idx])
    with pytest.raises(ValueError, match="sum to 1"):
        split_items(data, (0.5, 0.2))
    with pytest.raises(ValueError, match="empty part"):
        split_items(_toy_set(), (0.9, 0.05, 0.05))
    # a scalar (was a TypeError from the message) and NaN (passed the check) are named
    for bad in (1.0, (np.nan,), (0.5, np.nan, 0.5)):
        with pytest.raises(ValueError, match="fractions must be positive and sum to 1"):
            split_items(data, bad)


def test_subset_lists_and_errors():
    toy = _toy_set()
    sub = toy.subset([4, 1])
    assert sub.annotation_lists() == [[1, 5, 3, 3], [3]]
    assert sub.texts == ["text 4", "text 1"]
    sub2 = toy.subset(np.array([False, True, False, False, False]))
    assert sub2.labels.shape == (1, 1)  # all-padding columns dropped
    with pytest.raises(ValueError, match="no items"):
        toy.subset([])
    with pytest.raises(ValueError, match="out of range"):
        toy.subset([9])
    with pytest.raises(TypeError, match="int positions"):
        toy.subset([1.7])  # was item 1, silently
    with pytest.raises(ValueError, match="1-D"):
        toy.subset(3)
    with pytest.raises(ValueError, match="repeats items"):
        toy.subset([1, 2, -4])  # -4 is item 1 again
    stray = np.where(toy.mask, "a", "")
    stray[~toy.mask] = "b"
    with pytest.raises(ValueError, match="where mask has no annotation"):
        replace(toy, annotator_ids=stray)
    # a list of split names works like an array
    listed = replace(toy, source_split=["train", "dev", "dev", "train", "dev"])
    assert listed.subset([1, 3]).source_split.tolist() == ["dev", "train"]
    with pytest.raises(ValueError, match="features"):
        toy.with_features(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="rows"):
        AnnotationSet("bad", toy.labels, toy.mask, toy.label_values, "ordinal", toy.item_ids[:3])


def test_synthetic_population_follows_its_true_distribution():
    from scipy.stats import chisquare

    data = synthetic_annotations(400, seed=0, per_item=(8, 12))
    p = data.metadata["true_probs"]
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    assert data.features.shape == (400, 8) and data.kind == "ordinal"
    counts = data.counts()
    # pooled over items, the observed counts follow the expected counts sum_i n_i p_i
    expected = (counts.sum(1, keepdims=True) * p).sum(0)
    assert chisquare(counts.sum(0), expected).pvalue > 1e-3
    # per-item disagreement varies (heteroscedastic) and some items are bimodal
    v = np.arange(1, 6)
    sd = np.sqrt(p @ v**2 - (p @ v) ** 2)
    assert sd.max() > 2 * sd.min()
    assert (np.diff(np.sign(np.diff(p, axis=1)), axis=1) > 0).any()  # a dip between two peaks
    assert (
        synthetic_annotations(20, seed=1).labels.tolist()
        == synthetic_annotations(20, seed=1).labels.tolist()
    )


def test_overdispersed_panels_agree_as_the_dirichlet_multinomial_says():
    # two annotations of one item agree with probability sum_k m_k (c m_k + 1) / (c + 1)
    # (Dirichlet-multinomial, c = concentration); independent annotators: sum_k m_k^2
    from scipy.stats import binomtest

    data = overdispersed_annotations(
        6000, 5, label_values=(0, 1, 2), concentration=2.0, panel_sizes=(2, 3), seed=4
    )
    m, y = data.metadata["true_probs"], data.labels
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    assert data.features.shape == (6000, 5) and data.kind == "categorical"
    np.testing.assert_array_equal(np.unique(data.mask.sum(1)), [2, 3])
    agree = int((y[:, 0] == y[:, 1]).sum())
    expected = float(np.mean((m * (2.0 * m + 1) / 3.0).sum(1)))
    assert binomtest(agree, len(y), expected).pvalue > 1e-3
    assert agree / len(y) > float(np.mean((m**2).sum(1))) + 0.1  # far from independence
    # marginally every annotation is a draw from m(x)
    from scipy.stats import chisquare

    counts = data.counts()
    assert chisquare(counts.sum(0), (counts.sum(1, keepdims=True) * m).sum(0)).pvalue > 1e-3
    skewed = overdispersed_annotations(
        4000, panel_sizes=(2, 17), panel_probs=(0.8, 0.2), seed=0
    ).mask.sum(1)
    assert abs((skewed == 17).mean() - 0.2) < 0.03
    again = overdispersed_annotations(30, seed=1).labels
    np.testing.assert_array_equal(again, overdispersed_annotations(30, seed=1).labels)


@pytest.mark.parametrize("per_item", [(3,), (2.7, 3), (4, 2), (0, 3), (True, 3)])
def test_synthetic_annotations_rejects_bad_panel_ranges(per_item):
    # (3,) was an IndexError and (2.7, 3) silently (2, 3)
    with pytest.raises(ValueError, match="per_item must be two integers"):
        synthetic_annotations(10, per_item=per_item)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"concentration": 0.0}, "concentration"),
        ({"concentration": float("nan")}, "concentration"),
        ({"panel_sizes": ()}, "panel_sizes"),
        ({"panel_sizes": (0, 3)}, "panel_sizes"),
        ({"panel_sizes": (True,)}, "panel_sizes"),  # was a NumPy TypeError
        ({"panel_sizes": (2, 3), "panel_probs": (1.0,)}, "panel_probs"),
        ({"panel_sizes": (2, 3), "panel_probs": (0.7, 0.7)}, "panel_probs"),
    ],
)
def test_overdispersed_annotations_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        overdispersed_annotations(10, **kwargs)
    with pytest.raises(TypeError, match="concentration"):
        overdispersed_annotations(10, concentration="2")


# ---------------------------------------------------------------------------- loaders
def test_counts_refuse_a_mask_that_is_not_the_labels_shape_or_boolean():
    labels, mask = pad_annotations([[1, 2], [3]], label_values=(1, 2, 3))
    want = [[1, 1, 0], [0, 0, 1]]
    # a 0/1 integer mask is a mask (it was used as row indices: [[1, 1, 0], [3, 0, 3]])
    np.testing.assert_array_equal(annotation_counts(labels, mask.astype(int), (1, 2, 3)), want)
    with pytest.raises(ValueError, match="mask must have the shape"):
        annotation_counts(labels, mask[:, :1], (1, 2, 3))  # was broadcast: padding counted
    with pytest.raises(ValueError, match="mask must be bool"):
        annotation_counts(labels, mask * 2, (1, 2, 3))


def test_popquorn_loader_on_a_small_file(tmp_path):
    f = tmp_path / "pq.csv"
    f.write_text(
        "instance_id,user_id,text,offensiveness,gender,race,age,occupation,education\n"
        '7,2,"b text",3.0,Woman,Asian,18-24,Student,College degree\n'
        '5,1,"a text",1.0,Man,White,35-39,Unemployed,High school\n'
        '5,2,"a text",4.0,Woman,Asian,18-24,Student,College degree\n'
    )
    d = load_popquorn(f)
    assert d.item_ids.tolist() == ["5", "7"] and d.texts == ["a text", "b text"]
    assert d.annotation_lists() == [[1, 4], [3]]
    assert d.annotator_ids[0].tolist() == ["1", "2"]
    assert d.annotators["2"]["gender"] == "Woman"
    bad = tmp_path / "bad.csv"
    bad.write_text("instance_id,user_id,text,offensiveness\n1,1,x,6\n")
    with pytest.raises(ValueError, match="outside the label set"):
        load_popquorn(bad)
    with pytest.raises(FileNotFoundError):
        load_popquorn(tmp_path / "missing.csv")
    verbatim = tmp_path / "na.csv"  # texts pandas would read as missing values
    verbatim.write_text("instance_id,user_id,text,offensiveness\n1,1,NA,2\n2,1,null,3\n3,1,,1\n")
    assert load_popquorn(verbatim).texts == ["NA", "null", ""]  # were "nan"
    twice = tmp_path / "twice.csv"
    twice.write_text("instance_id,user_id,text,offensiveness\n1,1,a,2\n1,1,a,3\n")
    with pytest.raises(ValueError, match=r"repeated \(instance_id, user_id\) rows, first \(1, 1\)"):
        load_popquorn(twice)


def test_lewidi_loader_on_small_files(tmp_path):
    item = {
        "text": json.dumps(
            {"prev_agent": "_", "prev_user": "hi", "agent": "Hello", "user": "you idiot"}
        ),
        "annotations": "-2,1,-3",
        "annotators": "Ann1,Ann2,Ann3",
        "other_info": {},
    }
    (tmp_path / "lewidi2023_ConvAbuse_train.json").write_text(json.dumps({"1": item}))
    (tmp_path / "lewidi2023_ConvAbuse_dev.json").write_text(
        json.dumps({"9": dict(item, annotations="1,1", annotators="Ann1,Ann4")})
    )
    d = load_lewidi(tmp_path, "ConvAbuse")
    assert d.label_values == (-3, -2, -1, 0, 1) and d.kind == "ordinal"
    assert d.annotation_lists() == [[-2, 1, -3], [1, 1]]
    assert d.source_split.tolist() == ["train", "dev"]
    assert d.texts[0].startswith("user: you idiot")
    assert d.item_ids.tolist() == ["train/1", "dev/9"]
    only = load_lewidi(tmp_path / "lewidi2023_ConvAbuse_dev.json", "ConvAbuse", splits="dev")
    assert len(only) == 1
    with pytest.raises(ValueError, match="unknown dataset"):
        load_lewidi(tmp_path, "Nope")
    with pytest.raises(FileNotFoundError):
        load_lewidi(tmp_path, "ArMIS")
    with pytest.raises(ValueError, match="repeats a split"):
        load_lewidi(tmp_path, "ConvAbuse", splits=("dev", "dev"))  # items were duplicated
    with pytest.raises(ValueError, match="not a file of ArMIS"):  # read ArMIS beside it
        load_lewidi(tmp_path / "lewidi2023_ConvAbuse_dev.json", "ArMIS")
    (tmp_path / "lewidi2023_ArMIS_train.json").write_text(json.dumps({"3": {"text": "x"}}))
    with pytest.raises(ValueError, match="item 3: needs 'text' and 'annotations'"):
        load_lewidi(tmp_path, "ArMIS", splits="train")  # was a KeyError
    (tmp_path / "lewidi2023_ArMIS_train.json").write_text(json.dumps([item]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_lewidi(tmp_path, "ArMIS", splits="train")


@pytest.mark.data
def test_popquorn_real_file(shared_data):
    d = load_popquorn(shared_data / "annotators" / "popquorn_offensiveness_1200.csv")
    assert len(d) == 1200 and d.n_annotations == 10397
    assert d.label_values == (1, 2, 3, 4, 5)
    assert d.mask.sum(1).min() >= 5 and len(d.annotators) == 262
    assert set(d.annotators["0"]) == {"gender", "race", "age", "occupation", "education"}


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "n_items", "per_item"),
    [
        ("HS-Brexit", 952, {6}),
        ("ArMIS", 798, {3}),
        ("MD-Agreement", 7696, {5}),
        ("ConvAbuse", 3210, {2, 3, 4, 5, 6, 7}),
    ],
)
def test_lewidi_real_files(shared_data, name, n_items, per_item):
    folder = shared_data / "annotators" / "lewidi"
    d = load_lewidi(folder, name)
    assert len(d) == n_items
    assert set(d.mask.sum(1).tolist()) == per_item
    # against the raw JSON: the first training item's annotations, in order
    raw = json.loads((folder / f"lewidi2023_{name}_train.json").read_text(encoding="utf-8"))
    first = next(iter(raw.values()))
    assert d.annotation_lists()[0] == [int(a) for a in first["annotations"].split(",")]
    assert (d.source_split == "train").sum() == len(raw)
