"""The demo section and the example script end to end (small settings)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from probrec.demo import DemoContext
from probrec.flows.experiment import (
    compare_models,
    comparison_table,
    format_table,
    paired_difference,
    summarise,
)

REPO = Path(__file__).resolve().parents[3]


def test_demo_section_quick(tmp_path):
    from probrec.flows.demo import run_section

    res = run_section(DemoContext(tmp_path, 0, False, True))
    assert (tmp_path / res["figure"]).stat().st_size > 5000
    assert "integer flow" in res["headline"]
    models = res["models"]
    assert set(models) == {"integer_flow", "integer_flow_panel", "gaussian", "softmax"}
    for m in models.values():  # no model beats the true distribution by more than noise
        assert m["nll"] > res["oracle_nll"] - 0.05 and m["kl_true"] > 0
    json.dumps(res)


def test_compare_models_and_summaries(population):
    train, valid, test = population
    runs = [
        compare_models(
            train,
            valid,
            test,
            models=["integer_flow", "softmax"],
            seed=s,
            common_kwargs={"hidden": (8,)},
            fit_kwargs={"epochs": 3},
            progress=False,
        )
        for s in (0, 1)
    ]
    summ = summarise(runs)
    assert summ["softmax"]["nll"]["n"] == 2
    vals = [r["softmax"]["nll"] for r in runs]
    assert summ["softmax"]["nll"]["mean"] == pytest.approx(np.mean(vals))
    assert summ["softmax"]["nll"]["se"] == pytest.approx(np.std(vals, ddof=1) / np.sqrt(2))
    d = paired_difference(runs, "integer_flow", "softmax", "nll")
    assert d["mean"] == pytest.approx(
        np.mean([r["integer_flow"]["nll"] - r["softmax"]["nll"] for r in runs])
    )
    assert "| integer_flow |" in format_table(summ)
    s = summ["softmax"]["nll"]
    assert f"| softmax | {s['mean']:.3f} ± {s['se']:.3f} |" in format_table(summ, metrics=["nll"])
    # one seed: the mean alone (the table showed "± nan")
    one = format_table(summarise(runs[:1]), metrics=["nll"])
    assert f"| softmax | {runs[0]['softmax']['nll']:.3f} |" in one and "nan" not in one
    assert "nan" not in comparison_table(runs[:1], [("integer_flow", "softmax")])
    # fitting only: the same fitted model (same predictions), no metrics
    fitted = compare_models(
        train,
        valid,
        test,
        models=["softmax"],
        seed=0,
        common_kwargs={"hidden": (8,)},
        fit_kwargs={"epochs": 3},
        progress=False,
        keep_models=True,
        score=False,
    )["softmax"]
    assert set(fitted) == {"fit_seconds", "epochs", "model"}
    from probrec.flows.metrics import evaluate

    scored = evaluate(fitted["model"], test.features, test.labels, test.mask, seed=0)
    assert scored["nll"] == pytest.approx(runs[0]["softmax"]["nll"], rel=1e-6)
    with pytest.raises(ValueError, match="unknown models"):
        compare_models(train, valid, test, models=["nope"])


def _example(name: str = "annotators"):
    spec = importlib.util.spec_from_file_location(
        f"{name}_example", REPO / "examples" / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"{name}_example"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_overdispersion_example_runs_and_reports_paired_kl(tmp_path):
    out = tmp_path / "od"
    args = ["--seeds", "2", "--train", "60", "--test", "50", "--epochs", "2", "--out", str(out)]
    assert _example("annotators_overdispersion").main(args) == 0
    res = json.loads((out / "results.json").read_text())
    for design in res["designs"].values():
        runs = design["runs"]
        assert len(runs) == 2
        kl = [[r[m]["kl_true"] for r in runs] for m in ("softmax_flow_panel", "softmax")]
        assert all(np.isfinite(v) and v >= 0 for v in kl[0] + kl[1])
        diff = design["paired"]["softmax_flow_panel - softmax"]
        assert diff["mean"] == pytest.approx(np.mean(np.subtract(*kl)))
    assert "flow (item) - head" in (out / "results.md").read_text()


def test_example_help(capsys):
    with pytest.raises(SystemExit) as exc:
        _example().main(["--help"])
    assert exc.value.code == 0
    assert "POPQUORN" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-items", "-5"], "--max-items: must be 0"),  # was a numpy traceback
        (["--max-items", "2"], "--max-items: must be 0"),  # failed after embedding the texts
        (["--datasets", ","], "--datasets: expected a comma-separated list"),  # ran nothing
        (["--datasets", "POPQUORN,Nope"], "--datasets: unknown Nope"),
        (["--models", "softmax,softmax"], "--models: repeats softmax"),
        (["--models", "nope"], "--models: unknown nope"),
        (["--data", "/no/such/folder"], "--data: folder '/no/such/folder' does not exist"),
        (["--seeds", "0"], "--seeds: must be >= 1"),
        (["--hidden", "0"], "--hidden: must be >= 1"),
        (["--dropout", "1"], "--dropout: must be in [0, 1)"),
        (["--input-dropout", "-0.1"], "--input-dropout: must be >= 0"),
        (["--lr", "0"], "--lr: must be > 0"),
        (["--weight-decay", "nan"], "--weight-decay: must be finite"),
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--patience", "0"], "--patience: must be >= 1"),
        (["--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--threads", "0"], "--threads: must be >= 1"),
        (["--device", "gpu"], "--device: not a torch device"),
    ],
)
def test_example_refuses_bad_arguments_before_any_work(tmp_path, args, message, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        _example().main([*args, "--out", str(out)])
    assert exc.value.code == 2
    assert f"argument {message}" in capsys.readouterr().err
    assert not out.exists()


def test_example_parses_its_lists():
    args = _example().parse_args(["--datasets", "MD-Agreement, POPQUORN", "--max-items", "0"])
    assert args.datasets == ["MD-Agreement", "POPQUORN"] and args.max_items == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train", "0"], "--train: must be >= 2"),  # "fractions must be positive"
        (["--train", "1"], "--train: must be >= 2"),  # no validation item (30%, rounded)
        (["--test", "0"], "--test: must be >= 1"),  # "fractions must be positive"
        (["--seeds", "1"], "--seeds: must be >= 2"),
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--concentration", "0"], "--concentration: must be > 0"),
        (["--threads", "-1"], "--threads: must be >= 1"),
    ],
)
def test_overdispersion_example_refuses_bad_arguments(tmp_path, args, message, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        _example("annotators_overdispersion").main([*args, "--out", str(out)])
    assert exc.value.code == 2
    assert f"argument {message}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.data
def test_example_runs_on_real_data(shared_data, tmp_path):
    out = tmp_path / "run"
    assert (
        _example().main(
            [
                "--data",
                str(shared_data / "annotators"),
                "--out",
                str(out),
                "--datasets",
                "MD-Agreement",
                "--max-items",
                "200",
                "--seeds",
                "2",
                "--models",
                "integer_flow,softmax_flow,softmax",
                "--epochs",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["datasets"]["MD-Agreement"]["summary"]["softmax"]["nll"]["n"] == 2
    assert (out / "histograms_MD-Agreement.png").stat().st_size > 5000


@pytest.mark.data
def test_example_single_seed_report_is_strict_json(shared_data, tmp_path):
    """One seed has no standard error: the report holds null there, never NaN."""
    out = tmp_path / "run"
    args = ["--data", str(shared_data / "annotators"), "--out", str(out)]
    args += ["--datasets", "MD-Agreement", "--max-items", "60", "--seeds", "1"]
    args += ["--models", "softmax,softmax_flow_panel", "--epochs", "2", "--no-progress"]
    assert _example().main(args) == 0

    def reject(name):
        raise AssertionError(f"results.json holds {name}")

    res = json.loads((out / "results.json").read_text(), parse_constant=reject)
    assert res["datasets"]["MD-Agreement"]["summary"]["softmax"]["nll"]["se"] is None


def test_example_settings_all_items_on_top_of_the_subsample_ones():
    """All items of MD-Agreement take TUNED_ALL_ITEMS over TUNED; the command line wins."""
    ex = _example()
    models = ["softmax", "softmax_flow_panel", "ensemble", "ensemble_x5"]
    args = ex.parse_args(["--datasets", "MD-Agreement"])
    _, common, sub, sub_fit, _ = ex.settings_for("MD-Agreement", models, args, all_items=False)
    _, _, full, full_fit, fit = ex.settings_for("MD-Agreement", models, args, all_items=True)
    assert common == {"hidden": (64,), "dropout": 0.5} and fit["input_dropout"] == 0.0
    assert "input_dropout" not in sub_fit["softmax"]
    assert full_fit["softmax"] == {"input_dropout": 0.2}
    assert sub["softmax_flow_panel"]["dropout"] == 0.7
    assert full["softmax_flow_panel"]["dropout"] == 0.5
    assert full["softmax_flow_panel"]["n_train_samples"] == 32  # kept from TUNED
    assert sub["ensemble"] == {"dropout": 0.3}
    assert full["ensemble"] == full["ensemble_x5"] == {"dropout": 0.7, "hidden": (256,)}
    assert full_fit["ensemble"] == {"input_dropout": 0.2}
    args = ex.parse_args(["--datasets", "MD-Agreement", "--dropout", "0.1"])
    _, common, full, _, _ = ex.settings_for("MD-Agreement", models, args, all_items=True)
    assert common["dropout"] == 0.1 and "dropout" not in full["softmax_flow_panel"]
    _, _, pop, _, _ = ex.settings_for("POPQUORN", ["softmax"], args, all_items=True)
    assert pop["softmax"] == {}  # no all-items changes for POPQUORN
    # a per-model fit option (the early-stopping score), unless given on the command line
    flows = ["integer_flow_panel", "integer_flow_panel_x5", "gaussian"]
    _, _, _, pop_fit, fit = ex.settings_for("POPQUORN", flows, args, all_items=False)
    assert fit["valid_metric"] == "panel" and pop_fit["gaussian"] == {}
    assert pop_fit["integer_flow_panel"] == pop_fit["integer_flow_panel_x5"]
    assert pop_fit["integer_flow_panel"]["valid_metric"] == "annotation"
    args = ex.parse_args(["--datasets", "POPQUORN", "--valid-metric", "panel"])
    _, _, _, pop_fit, fit = ex.settings_for("POPQUORN", flows, args, all_items=False)
    assert fit["valid_metric"] == "panel" and "valid_metric" not in pop_fit["integer_flow_panel"]
