"""MovieLens loader (RecBole atomic format) and the InteractionLog type."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from probrec.data.movielens import InteractionLog, factorize, load_movielens


def _write_atomic(folder, inter_rows, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        "\t".join(map(str, r)) + "\n" for r in inter_rows
    )
    if gz:
        with gzip.open(folder / "toy.inter.gz", "wt") as fh:
            fh.write(text)
    else:
        (folder / "toy.inter").write_text(text)
    (folder / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tA\t1995\tAction Comedy\n20\tB\t1977\tDrama\n30\tC\t\tunknown\n"
    )
    (folder / "toy.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n"
    )


def test_load_toy_movielens(tmp_path):
    rows = [(2, 20, 5, 300), (1, 10, 3, 100), (1, 30, 4, 200), (2, 10, 1, 86400 * 3 + 3600)]
    _write_atomic(tmp_path / "toy", rows)
    log = load_movielens(tmp_path / "toy")
    assert isinstance(log, InteractionLog) and len(log) == 4
    assert log.time.tolist() == [100, 200, 300, 86400 * 3 + 3600]  # sorted by time
    assert log.user.tolist() == [1, 1, 2, 2] and log.item.tolist() == [10, 30, 20, 10]
    assert log.label.tolist() == [0.0, 1.0, 1.0, 0.0]  # rating >= 4
    assert log.rating.tolist() == [3, 4, 5, 1]
    genres = log.metadata["genres"]
    on = [sorted(genres[j] for j in np.flatnonzero(r)) for r in log.multi_hot]
    assert on == [["Action", "Comedy"], ["unknown"], ["Drama"], ["Action", "Comedy"]]
    # user 2's zip starts with a letter: missing (code 0); item 30 has no year: missing
    assert log.fields["zip1"][2] == 0 and log.fields["zip1"][0] > 0
    assert log.fields["decade"][1] == 0 and log.fields["decade"][0] != log.fields["decade"][2]
    assert log.fields["age"][0] != log.fields["age"][2]  # 24 and 53 fall in different groups
    # 1970-01-04 (Sunday) 01:00 UTC: weekday code = (3 + 3) % 7 + 1, hour code = 1 + 1
    assert log.fields["weekday"][3] == 7 and log.fields["hour"][3] == 2
    assert load_movielens(tmp_path / "toy", threshold=5).label.sum() == 1


def test_plain_inter_file_and_errors(tmp_path):
    _write_atomic(tmp_path / "p", [(1, 10, 4, 5)], gz=False)
    assert len(load_movielens(tmp_path / "p")) == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_movielens(tmp_path / "absent")
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\.inter"):
        load_movielens(tmp_path / "e")


def test_factorize_and_log_validation():
    codes, k = factorize(np.array(["b", None, "a", "b", ""], dtype=object))
    assert codes.tolist() == [2, 0, 1, 2, 0] and k == 3
    good = dict(fields={"f": np.array([1, 2])}, cardinality={"f": 3})
    with pytest.raises(ValueError, match="sorted by time"):
        InteractionLog(
            np.array([1, 2]), np.array([1, 1]), np.array([5, 1]), np.array([0, 1]), **good
        )
    with pytest.raises(ValueError, match="only 0 and 1"):
        InteractionLog(
            np.array([1, 2]), np.array([1, 1]), np.array([1, 5]), np.array([0, 2]), **good
        )
    with pytest.raises(ValueError, match="outside"):
        InteractionLog(
            np.array([1, 2]),
            np.array([1, 1]),
            np.array([1, 5]),
            np.array([0, 1]),
            {"f": np.array([1, 3])},
            {"f": 3},
        )
    ids = dict(user=np.array([1, 2]), item=np.array([1, 1]), time=np.array([1, 5]))
    lab = np.array([0, 1])
    for kw, err, match in (  # each was accepted (floats truncated, a short rating kept)
        ({"fields": {"f": np.array([0.7, 1.9])}, "cardinality": {"f": 3}}, TypeError, "integer"),
        ({"fields": {"f": np.array([[1, 2]])}, "cardinality": {"f": 3}}, ValueError, r"\[2\]"),
        ({**good, "rating": np.array([4.0])}, ValueError, r"rating must have shape \[2\]"),
        ({**good, "multi_hot": np.array([[1.0], [np.nan]])}, ValueError, "multi_hot contains"),
    ):
        with pytest.raises(err, match=match):
            InteractionLog(**ids, label=lab, **kw)
    codes, k = factorize(np.array([1, "1", 2, 1], dtype=object))  # 1 and "1" shared a code
    assert codes.tolist() == [1, 2, 3, 1] and k == 4


def test_real_movielens_100k(shared_data):
    folder = shared_data / "recsys" / "ml-100k"
    if not folder.is_dir():
        pytest.skip("ml-100k is absent")
    log = load_movielens(folder)
    with gzip.open(folder / "ml-100k.inter.gz", "rt") as fh:
        raw = np.array([ln.split("\t") for ln in fh.read().splitlines()[1:]], dtype=float)
    assert len(log) == len(raw) == 100_000
    assert len(np.unique(log.user)) == 943 and len(np.unique(log.item)) == 1682
    assert log.label.mean() == pytest.approx((raw[:, 2] >= 4).mean())
    assert (np.diff(log.time) >= 0).all()
    assert log.multi_hot.shape == (100_000, 19) and (log.multi_hot.sum(1) >= 1).all()
    # (user, item, time) identifies an event, as the FM store needs
    assert len(np.unique(np.stack([log.user, log.item, log.time], 1), axis=0)) == len(log)
