"""Command-line checks of the benchmark scripts: bad values are usage errors naming the option
(exit status 2, before any data is loaded or anything is timed), ``--clock`` reaches the timer,
and summaries describe the run that wrote them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.conftest import TINY

BAD = [
    ("inner_loop", ["--tasks", "0"], "--tasks"),
    ("inner_loop", ["--seed", "-1"], "--seed"),
    ("inner_loop", ["--dim", "0"], "--dim"),
    ("inner_loop", ["--tol", "abc"], "--tol"),
    ("inner_loop", ["--tol", "0"], "--tol"),
    ("inner_loop", ["--threads", "0"], "--threads"),
    ("inner_loop", ["--repeats", "0"], "--repeats"),
    ("inner_loop", ["--warmup", "-1"], "--warmup"),
    ("inner_loop", ["--max-iter", "0"], "--max-iter"),
    ("inner_loop", ["--data", "/nonexistent/toxcast.csv"], "--data"),
    ("adapt_latency", ["--tasks", "0"], "--tasks"),
    ("adapt_latency", ["--support", "16", "1"], "--support"),
    ("adapt_latency", ["--support", "16", "16"], "--support"),
    ("adapt_latency", ["--hidden", "0"], "--hidden"),
    ("adkf_ift_step", ["--unroll-steps", "0"], "--unroll-steps"),
    ("adkf_ift_step", ["--unroll-lr", "-1"], "--unroll-lr"),
    ("adkf_ift_step", ["--unroll-lr", "fast"], "--unroll-lr"),
    ("adkf_ift_step", ["--check-steps", "-5"], "--check-steps"),
    ("adkf_ift_step", ["--query", "0"], "--query"),
    ("bo_iteration", ["--observed", "0"], "--observed"),
    ("bo_iteration", ["--pool", "0"], "--pool"),
    ("bo_iteration", ["--data", "none", "--observed", "50", "--pool", "40"], "--observed"),
    ("bo_iteration", ["--data", "/nonexistent.csv"], "--data"),
    ("bo_iteration", ["--dataset", "esol"], "--dataset"),
    ("recsys_throughput", ["--batches", "0"], "--batches"),
    ("recsys_throughput", ["--batch", "0"], "--batch"),
    ("recsys_throughput", ["--data", "/nonexistent/ml-100k"], "--data"),
    ("recsys_throughput", ["--data", "none", "--batch", "1000000"], "--batch"),
    ("annotator_flows", ["--models", "bogus"], "--models"),
    ("annotator_flows", ["--items", "1"], "--items"),
    ("annotator_flows", ["--threads", "0"], "--threads"),
    ("featurize_toxcast", ["--baseline-molecules", "0"], "--baseline-molecules"),
    ("featurize_toxcast", ["--data", "/nonexistent.csv"], "--data"),
    ("featurize_toxcast", ["--jobs", "0"], "--jobs"),
    ("mala_vs_blackjax", ["--threads", "0"], "--threads"),
    ("mala_vs_blackjax", ["--steps", "0"], "--steps"),
    ("mala_vs_blackjax", ["--step-size", "0"], "--step-size"),
    ("hmc_vs_pyro", ["--chains", "0"], "--chains"),
    ("hmc_vs_pyro", ["--transitions", "0"], "--transitions"),
    ("hmc_vs_pyro", ["--n-leapfrog", "1.5"], "--n-leapfrog"),
    ("samplers_mog40", ["--regimes", "c"], "--regimes"),
    ("samplers_mog40", ["--regimes", "a,a"], "--regimes"),
    ("samplers_mog40", ["--seeds", "0,0"], "--seeds"),
    ("samplers_mog40", ["--samplers", "foo"], "--samplers"),
    ("samplers_mog40", ["--n-samples", "0"], "--n-samples"),
    ("samplers_mog40", ["--budgets-b", "100,abc"], "--budgets-b"),
    ("samplers_mog40", ["--settings", '{"foo": {}}'], "--settings"),
    ("samplers_targets", ["--targets", "dw4,foo"], "--targets"),
    ("samplers_targets", ["--targets", "mog40"], "--targets"),
    ("samplers_targets", ["--budget", "0"], "--budget"),
    ("samplers_targets", ["--data", "/nonexistent/data"], "--data"),
    ("samplers_targets", ["--settings", "[1]"], "--settings"),
    ("neural_samplers", ["--parts", "foo"], "--parts"),
    ("neural_samplers", ["--samplers", "foo"], "--samplers"),
    ("neural_samplers", ["--budgets", '{"mog4": {"pt": [30]}}'], "--budgets"),
    ("neural_samplers", ["--budgets", '{"mog40": {"pt": []}}'], "--budgets"),
    ("neural_samplers", ["--budgets", '{"mog40": {"n_samples": 0}}'], "--budgets"),
    ("neural_samplers", ["--seeds", "1,x"], "--seeds"),
    ("neural_samplers", ["--from-json", "/nonexistent/results.json"], "--from-json"),
]


@pytest.mark.parametrize(
    ("name", "argv", "option"), BAD, ids=[f"{n} {' '.join(a)}" for n, a, _ in BAD]
)
def test_bad_values_are_usage_errors(
    bench, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, argv: list[str], option: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        bench(name).main([*argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "usage:" in err
    assert not out.exists()  # nothing was run or written


def test_samplers_targets_need_their_reference_files(
    bench, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # a data root without samplers/*.npy: DW-4 / LJ-13 rows would hold no W1 metric
    with pytest.raises(SystemExit) as exc:
        bench("samplers_targets").main(
            ["--targets", "mw32,dw4", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--data" in err and "dw4_reference" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("inner_loop", ["--tasks", "2", "--support", "10"]),
        (
            "adapt_latency",
            ["--tasks", "2", "--support", "8", "--query", "12", "--hidden", "16"]
            + ["--learners", "RF", "DKT"],
        ),
    ],
)
def test_clock_cpu_reaches_the_timer(
    bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, extra: list[str]
) -> None:
    common = bench("_common")
    seen: list[str] = []
    real = common.timed

    def spy(fn, device, clock="wall"):
        seen.append(clock)
        return real(fn, device, clock)

    monkeypatch.setattr(common, "timed", spy)  # what time_interleaved times every call with
    out = tmp_path / "t.json"
    bench(name).main(TINY + extra + ["--clock", "cpu", "--out", str(out)])
    assert seen and set(seen) == {"cpu"}  # the wall clock timed them before
    assert json.loads(out.read_text())["config"]["clock"] == "cpu"


MOG = ["--samplers", "mala", "--no-progress", "--compile", "off"]


def test_samplers_mog40_summary_is_this_runs(bench, tmp_path: Path) -> None:
    mog = bench("samplers_mog40")
    out = ["--out", str(tmp_path / "mog")]
    first = ["--n-samples", "20", "--budgets-a", "20", "--budgets-b", "20", "--seeds", "0,1"]
    assert mog.main(MOG + out + first) == 0
    summary = json.loads((tmp_path / "mog" / "summary.json").read_text())
    assert {"regime_a", "regime_b"} <= set(summary)

    # a second run of regime (b) alone, other seeds and size, into the same folder
    second = ["--regimes", "b", "--n-samples", "30", "--budgets-b", "20", "--seeds", "3"]
    assert mog.main(MOG + out + second) == 0
    text = (tmp_path / "mog" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=_no_constant)
    assert summary["seeds"] == [3] and summary["n_samples"] == 30
    assert "regime_a" not in summary  # the first run's rows were summarised under this header
    assert [e["seeds"] for e in summary["regime_b"]] == [1]
    assert all(k.startswith("b:") for k in summary["checks"])
    assert summary["regimes"] == ["b"]
    # the earlier regime's own results stay in its folder, with their own header
    saved_a = json.loads((tmp_path / "mog" / "regime_a" / "results.json").read_text())
    assert saved_a["seeds"] == [0, 1]


def test_samplers_mog40_titles_give_this_runs_sizes(
    bench, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--n-samples", "20", "--budgets-a", "20", "--budgets-b", "20", "--seeds", "0"]
    assert bench("samplers_mog40").main(MOG + argv + ["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # not the defaults' "1,000 samples each" / "10,000 independent chains"
    assert "regime (a): 10 chains from the origin, 2 samples each (20 in all)" in printed
    assert "regime (b): 20 independent chains from the origin" in printed


def _no_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


def _rows(seeds: list[int], n: int) -> list[dict]:
    rows = []
    for s, budgets in (("pt", [30.0, 100.0]), ("ptsd", [40.0])):
        for b in budgets:
            for seed in seeds:
                q = 1.0 / b
                rows.append(
                    {
                        "target": "mog40",
                        "sampler": s,
                        "budget": b,
                        "seed": seed,
                        "n_samples": n,
                        "evals_per_sample": b - 4.0,
                        "mmd2": q,
                        "mmd2_floor": 1e-3,
                        "mode_weight_tv": q,
                        "mode_weight_tv_floor": 1e-2,
                        "energy_w1": q,
                        "energy_w1_floor": 1e-3,
                    }
                )
    return rows


def test_neural_samplers_from_json_header_describes_the_merged_rows(bench, tmp_path: Path) -> None:
    files = []
    for i, seeds in enumerate(([1, 2], [3])):
        f = tmp_path / f"run{i}" / "results.json"
        f.parent.mkdir()
        header = {"settings": {}, "seeds": seeds, "threads": 1, "torch": "x", "python": "y"}
        f.write_text(json.dumps({**header, "rows": _rows(seeds, 500)}))
        files.append(str(f))
    out = tmp_path / "merged"
    assert bench("neural_samplers").main(["--from-json", *files, "--out", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    # not the defaults (seeds 1,2; 10,000 samples; PT budgets 30..1000, PTSD 40..160)
    assert saved["seeds"] == [1, 2, 3]
    assert saved["settings"] == {"mog40": {"n_samples": 500, "pt": [30.0, 100.0], "ptsd": [40.0]}}
    assert [s["seeds"] for s in saved["merged_from"]] == [[1, 2], [3]]
    assert len(saved["rows"]) == 9


def test_neural_samplers_help_is_whole(bench, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        bench("neural_samplers").main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "and DiKL on MoG-40 against DiGS." in out
    assert "(default: 1,2)" in out or "(default: [1, 2])" in out


@pytest.mark.parametrize(
    "name",
    [
        "samplers_mog40",
        "samplers_targets",
        "neural_samplers",
        "mala_vs_blackjax",
        "hmc_vs_pyro",
        "featurize_toxcast",
    ],
)
def test_every_option_has_help(bench, name: str) -> None:
    mod = bench(name)
    parser = mod.build_parser() if hasattr(mod, "build_parser") else None
    assert isinstance(parser, argparse.ArgumentParser)
    for action in parser._actions:
        assert action.help, f"{name}: {action.option_strings} has no help"


def _fake_pool(bo, monkeypatch: pytest.MonkeyPatch, labels: np.ndarray) -> None:
    from probrec.data import Task

    smiles = np.array([f"C{i}" for i in range(len(labels))], dtype=object)
    task = Task(smiles, labels, "regression", "pool")

    class Featurizer:
        def __init__(self, **kw) -> None:
            pass

        def transform(self, smiles: list[str]) -> np.ndarray:
            return np.ones((len(smiles), 4))

    monkeypatch.setattr(bo, "load_regression_set", lambda name, root: task)
    monkeypatch.setattr(bo, "MoleculeFeaturizer", Featurizer)


@pytest.mark.parametrize(("dataset", "sign"), [("cep_pce", 1.0), ("covid_moonshot", -1.0)])
def test_bo_iteration_objective_follows_the_dataset(
    bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dataset: str, sign: float
) -> None:
    bo = bench("bo_iteration")
    labels = np.arange(10, dtype=np.float64)
    _fake_pool(bo, monkeypatch, labels)
    rel = bo.REGRESSION_SETS[dataset][0]
    (tmp_path / "molecules" / rel).parent.mkdir(parents=True)
    (tmp_path / "molecules" / rel).write_text("")
    parser = bo.build_parser()
    args = parser.parse_args(["--data", str(tmp_path), "--dataset", dataset, "--observed", "4"])
    _, y, source = bo.pool(args, parser)
    assert source == dataset
    # PCE is maximised (it was negated, so BO went towards the lowest PCE); pIC50 = -label
    np.testing.assert_array_equal(y.numpy(), sign * labels)


def test_bo_iteration_data_root_must_hold_the_pool(
    bench, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench("bo_iteration").main(["--data", str(tmp_path), "--out", str(tmp_path / "o.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--data" in err and "covid_moonshot" in err
    assert not (tmp_path / "o.json").exists()
