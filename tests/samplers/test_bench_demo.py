"""The benchmark runner and the demo section, end to end on tiny settings."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from samplers import bench, demo


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["--out", str(tmp_path), "--no-progress"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def test_bench_writes_json_csv_and_figures(tmp_path):
    args = _args(
        tmp_path,
        targets="mog40,mw32",
        samplers="digs,pt_hmc,mala",
        budgets="20,60",
        seeds="0,1",
        n_samples=120,
    )
    assert bench.run(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    rows = res["rows"]
    # pt_hmc needs 25 (mw32) or 50 (mog40) evaluations per transition: budget 20 is reported
    # as skipped, not run
    skipped = [r for r in rows if "skipped" in r]
    assert {(r["sampler"], r["budget"]) for r in skipped} == {("pt_hmc", 20.0)}
    assert len(skipped) == 2 * 2
    done = [r for r in rows if "skipped" not in r]
    assert len(done) == 2 * 2 * 3 * 2 - 2 * 2
    mog = [r for r in done if r["target"] == "mog40"]
    for r in mog:
        assert r["mmd2"] >= 0 and r["mmd2_floor"] > 0 and 0 <= r["modes_covered"] <= 40
        assert r["evals_per_sample"] <= r["budget"]
    mw = [r for r in done if r["target"] == "mw32"]
    assert all(r["energy_w1"] >= 0 for r in mw)
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    for name in res["figures"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert "mog40_independent_samples.png" in res["figures"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("targets", "gauss", "argument --targets: unknown gauss"),
        ("samplers", "nuts", "argument --samplers: unknown nuts"),
        ("budgets", "a,b", "argument --budgets: expected a number, got 'a'"),
        ("budgets", "0", "argument --budgets: must be > 0"),
        ("seeds", "0,0", "argument --seeds: repeats 0"),  # counted as two seeds (s.e. 0)
        ("settings", "{bad", "argument --settings: not valid JSON"),  # a JSONDecodeError
        ("settings", "[1]", "argument --settings: expected a JSON object"),  # AttributeError
        ("settings", '{"mala": {"bogus": 1}}', "unknown option(s) ['bogus'] of mala"),  # TypeError
        ("settings", '{"nuts": {}}', "argument --settings: unknown sampler 'nuts'"),
        ("threads", "0", "argument --threads: must be >= 1"),  # 0 was ignored, -1 a torch error
        ("data", "/no/such/folder", "argument --data: folder '/no/such/folder' does not exist"),
    ],
)
def test_bench_options_are_checked_when_parsed(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exc:
        _args(tmp_path, **{option: value})
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bench_refuses_settings_it_cannot_honour(tmp_path):
    with pytest.raises(ValueError, match="must not exceed --n-samples"):  # budget overspent
        bench.run(_args(tmp_path, samplers="mala", chains=50, n_samples=20))
    with pytest.raises(ValueError, match="--targets dw4 are scored against reference samples"):
        bench.run(_args(tmp_path, targets="dw4", samplers="mala"))  # rows had no W1 metric
    ns = _args(tmp_path, samplers="mala")
    ns.targets = "mog40,gauss"  # as code calling run() directly may pass it
    with pytest.raises(ValueError, match="--targets: unknown gauss"):
        bench.run(ns)


def test_bench_is_registered_with_the_probrec_cli(capsys):
    from probrec.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "samplers", "--help"])
    assert exc.value.code == 0
    assert "--budgets" in capsys.readouterr().out


def test_demo_section_runs_quick_and_reports(tmp_path):
    ctx = SimpleNamespace(out_dir=tmp_path, seed=0, progress=False, quick=True)
    res = demo.run_section(ctx)
    json.dumps(res)
    assert (tmp_path / res["figure"]).stat().st_size > 1000
    assert "DiGS" in res["headline"] and "PT" in res["headline"]
    digs, pt = res["samplers"]["DiGS"], res["samplers"]["PT"]
    assert digs["evals_per_sample"] <= res["evals_per_sample"]
    assert pt["evals_per_sample"] <= res["evals_per_sample"]
    # at equal (small) budget from the origin DiGS is closer to the target than PT
    assert digs["modes_covered"] >= 35
    assert digs["mmd2"] < pt["mmd2"] and digs["mode_weight_tv"] < pt["mode_weight_tv"]
