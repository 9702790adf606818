"""TaobaoAd CSV loader."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from probrec.data.taobao import load_taobao_ad

HEADER = "clk,time_stamp,userid,adgroup_id,pid,cate_id,brand,price,click_sequence\n"


def test_toy_taobao(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        HEADER
        + "0,2017-05-06 00:00:05,7,100,a,1,,3.9,11^12\n"
        + "1,2017-05-06 00:00:01,8,200,b,2,5,189.0,\n"
        + "0,2017-05-06 00:00:01,8,200,b,2,5,189.0,\n"  # repeat of the row above
        + "1,1494028810,7,300,a,1,6,,13\n"
    )
    log = load_taobao_ad(p)
    assert len(log) == 3 and log.metadata["merged_rows"] == 1
    assert log.time.tolist() == [1494028801, 1494028805, 1494028810]
    assert log.user.tolist() == [8, 7, 7] and log.item.tolist() == [200, 100, 300]
    assert log.label.tolist() == [1.0, 0.0, 1.0]  # the merged pair was clicked once
    assert log.fields["brand"][1] == 0 and log.fields["price"][2] == 0  # missing
    assert log.fields["price"][0] != log.fields["price"][1]  # log2 buckets 7 and 2
    assert log.metadata["click_sequence"] == [[], [11, 12], [13]]
    assert set(log.fields) == {"pid", "cate_id", "brand", "price"}


def test_taobao_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_taobao_ad(tmp_path / "nope.csv")
    p = tmp_path / "bad.csv"
    p.write_text("clk,userid\n1,2\n")
    with pytest.raises(ValueError, match="time_stamp"):
        load_taobao_ad(p)
    p.write_text(HEADER + "2,2017-05-06 00:00:05,7,100,a,1,,3.9,\n")
    with pytest.raises(ValueError, match="0/1"):
        load_taobao_ad(p)
    good = "0,2017-05-06 00:00:05,7,100,a,1,,3.9,\n"
    for row, where in (  # "could not convert string to float: 'abc'" before
        ("0,2017-05-06 00:00:05,abc,100,a,1,,3.9,\n", "'userid' of data row 2 holds 'abc'"),
        ("0,yesterday,7,100,a,1,,3.9,\n", "'time_stamp' of data row 2 holds 'yesterday'"),
        ("0,2017-05-06 00:00:05,7,100,a,1,,cheap,\n", "'price' of data row 2 holds 'cheap'"),
        ("0,2017-05-06 00:00:05,7,100,a,1,,-3,\n", "'price' of data row 2 holds '-3'"),
    ):
        p.write_text(HEADER + good + row)
        with pytest.raises(ValueError, match=where):
            load_taobao_ad(p)


def test_real_taobao_sample(shared_data):
    path = shared_data / "recsys" / "ctr_samples" / "taobaoad_tiny_train.csv"
    if not path.is_file():
        pytest.skip("TaobaoAd sample is absent")
    log = load_taobao_ad(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    triples = {(r["userid"], r["adgroup_id"], r["time_stamp"]) for r in rows}
    assert len(log) == len(triples)
    assert log.label.sum() == len(
        {(r["userid"], r["adgroup_id"], r["time_stamp"]) for r in rows if r["clk"] == "1"}
    )
    assert len(np.unique(log.user)) == len({r["userid"] for r in rows})
