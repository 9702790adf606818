"""The chronological experiment end to end on small data, the example scripts and the
throughput benchmark (smallest sizes; numbers are checked for consistency, not quality)."""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probrec.recsys import (
    UNTRAINED,
    VARIANTS,
    LoopFMConfig,
    TrainSpec,
    run_loopfm,
    summarize_runs,
    summary_markdown,
    transfer_ratio,
)
from probrec.reporting import json_safe
from tests.probrec.recsys.conftest import synthetic_log

REPO = Path(__file__).resolve().parents[3]


def _tiny_config(**kw) -> LoopFMConfig:
    return LoopFMConfig(
        user_history=6,
        item_history=4,
        fm_emb=8,
        fm_hidden=(16, 8),
        vm_emb=4,
        vm_hidden=(8,),
        fm_train=TrainSpec(epochs=1, batch_size=512),
        vm_train=TrainSpec(epochs=1, batch_size=256),
        **kw,
    )


def test_run_loopfm_and_summary(tmp_path):
    log = synthetic_log(2500, seed=5)
    cfg = _tiny_config(variants=(*VARIANTS, UNTRAINED))
    runs = [run_loopfm(log, tmp_path, seed=0, config=cfg, verbose=False)[0]]
    with torch.no_grad():  # the caller's grad mode is left as it was (it was switched on)
        runs.append(run_loopfm(log, tmp_path, seed=1, config=cfg, verbose=False)[0])
        assert not torch.is_grad_enabled()
    r = runs[0]
    assert set(r.metrics) == {"FM", *VARIANTS, UNTRAINED}
    assert sum(r.sizes[k] for k in ("fm_train", "fm_valid", "vm_train", "vm_valid", "test")) == len(
        log
    )
    for v, ratio in r.ratios.items():
        m = r.metrics
        assert ratio == pytest.approx(transfer_ratio(m[v]["auc"], m["VM"]["auc"], m["FM"]["auc"]))
    s = summarize_runs(runs)
    aucs = [x.metrics["VM+KD"]["auc"] for x in runs]
    assert s["metrics"]["VM+KD"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert s["metrics"]["VM+KD"]["auc"]["se"] == pytest.approx(np.std(aucs, ddof=1) / 2**0.5)
    g = s["gains"]
    total = g["LoopFM"]["mean"]
    parts = g["  history structure (untrained-FM store)"]["mean"]
    parts += g["  FM knowledge (trained - untrained store)"]["mean"]
    assert parts == pytest.approx(total)
    assert "| VM+LoopFM |" in summary_markdown(s)
    # one seed: the standard errors are undefined -- null in JSON, left out of the table
    one = summarize_runs(runs[:1])
    assert math.isnan(one["metrics"]["VM"]["auc"]["se"])
    assert "null" in json.dumps(json_safe(one), allow_nan=False)
    table = summary_markdown(one)
    assert "nan" not in table and f"| {runs[0].metrics['VM']['auc']:.4f} |" in table
    with pytest.raises(ValueError, match="unknown variants"):
        run_loopfm(log, tmp_path, config=_tiny_config(variants=("VM", "nope")))
    fewer = dataclasses.replace(runs[1], metrics={k: runs[1].metrics[k] for k in ("FM", "VM")})
    with pytest.raises(ValueError, match="must have trained the same models"):  # dropped
        summarize_runs([runs[0], fewer])
    with pytest.raises(ValueError, match="3 values"):  # "not enough values to unpack"
        _tiny_config(fractions=(0.5, 0.5))
    for bad in (0.0, 1.0):  # the error blamed fractions
        with pytest.raises(ValueError, match="valid_fraction must be in"):
            _tiny_config(valid_fraction=bad)


def _write_toy_movielens(folder: Path, seed: int = 0) -> None:
    log = synthetic_log(2500, seed=seed)
    folder.mkdir(parents=True)
    with gzip.open(folder / "toy.inter.gz", "wt") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u, i, y, t in zip(log.user, log.item, log.label, log.time):
            fh.write(f"{u}\t{i}\t{5 if y else 2}\t{t}\n")
    items = "".join(f"{i}\tT\t19{50 + i % 40}\tDrama\n" for i in np.unique(log.item))
    (folder / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + items
    )
    users = "".join(f"{u}\t{20 + u % 40}\tM\tother\t1{u:04d}\n" for u in np.unique(log.user))
    (folder / "toy.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" + users
    )


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    return importlib.import_module


def test_loopfm_example(examples, tmp_path, capsys):
    _write_toy_movielens(tmp_path / "toy")
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "toy"), "--seeds", "0", "--out", str(out)]
    assert (
        examples("recsys_loopfm").main(
            [*args, "--fm-epochs", "1", "--vm-epochs", "1", "--no-progress"]
        )
        == 0
    )
    report = json.loads((out / "loopfm.json").read_text())
    assert set(report["summary"]["metrics"]) == {"FM", *VARIANTS, UNTRAINED}
    assert "transfer ratio" in capsys.readouterr().out


def test_fewshot_example(examples, tmp_path):
    _write_toy_movielens(tmp_path / "toy", seed=2)
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "toy"), "--out", str(out), "--no-progress"]
    args += ["--n-train", "3", "--n-valid", "1", "--min-events", "8", "--sizes", "2"]
    args += [
        "--eval-seeds",
        "1",
        "--steps",
        "2",
        "--learners",
        "ADKF-IFT,LoopVM-finetune,Popularity",
    ]
    assert examples("recsys_fewshot").main(args) == 0
    report = json.loads((out / "fewshot.json").read_text())
    summ = report["result"]["summary"]
    assert set(summ) == {"ADKF-IFT", "LoopVM-finetune", "Popularity"}
    assert all(math.isfinite(v["2"]["mean"]) for v in summ.values())


@pytest.mark.parametrize(
    ("script", "argv", "option"),
    [
        ("recsys_loopfm", ["--fm-epochs", "-2"], "--fm-epochs"),  # trained nothing
        ("recsys_loopfm", ["--vm-epochs", "0"], "--vm-epochs"),  # 0 meant the default
        ("recsys_loopfm", ["--seeds", "0,0"], "--seeds"),  # one seed counted twice
        ("recsys_loopfm", ["--seeds", "0,x"], "--seeds"),
        ("recsys_loopfm", ["--seeds", "-1"], "--seeds"),
        ("recsys_loopfm", ["--threads", "0"], "--threads"),
        ("recsys_loopfm", ["--device", "gpu"], "--device"),
        ("recsys_loopfm", ["--data", "/no/such/ml-100k"], "--data"),
        ("recsys_fewshot", ["--learners", "Popularity,Bogus"], "--learners"),  # after training
        ("recsys_fewshot", ["--sizes", "4,x"], "--sizes"),
        ("recsys_fewshot", ["--sizes", "0"], "--sizes"),
        ("recsys_fewshot", ["--eval-seeds", "0"], "--eval-seeds"),
        ("recsys_fewshot", ["--n-train", "0"], "--n-train"),
        ("recsys_fewshot", ["--n-valid", "0"], "--n-valid"),
        ("recsys_fewshot", ["--min-events", "0"], "--min-events"),
        ("recsys_fewshot", ["--steps", "-1"], "--steps"),
        ("recsys_fewshot", ["--seed", "x"], "--seed"),
        ("recsys_fewshot", ["--threads", "0"], "--threads"),
    ],
)
def test_examples_refuse_bad_options_at_parse_time(examples, script, argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        examples(script).parse_args(argv)
    assert exc.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["recsys_loopfm", "recsys_fewshot"])
def test_examples_taobao_needs_its_csv(examples, script, capsys, tmp_path):
    """--format taobao without --data read the MovieLens folder as a CSV."""
    with pytest.raises(SystemExit) as exc:
        examples(script).parse_args(["--format", "taobao"])
    assert exc.value.code == 2 and "--format taobao needs --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        examples(script).parse_args(["--format", "taobao", "--download", str(tmp_path)])
    csv = tmp_path / "taobao.csv"
    csv.write_text("")
    args = examples(script).parse_args(["--format", "taobao", "--data", str(csv)])
    assert args.data == str(csv)
    default = examples(script).parse_args([])
    assert default.data == str(examples(script).DEFAULT_DATA)


def test_loopfm_example_parses_its_lists(examples):
    args = examples("recsys_loopfm").parse_args(["--seeds", "2,0", "--fm-epochs", "1"])
    assert args.seeds == [2, 0] and args.fm_epochs == 1 and args.vm_epochs is None


def test_throughput_benchmark(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("recsys_throughput")
    out = tmp_path / "t.json"
    args = ["--data", "none", "--batch", "16", "--batches", "1", "--repeats", "1"]
    assert bench.main([*args, "--warmup", "0", "--device", "cpu", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {
        "stored",
        "stored, pre-resolved rows",
        "FM per request",
        "FM alone",
    }
    assert saved["ratio_stored_over_fm_per_request"]["ratio_of_medians"] > 0
    sys.modules.pop("recsys_throughput", None)
