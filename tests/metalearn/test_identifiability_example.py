"""examples/identifiability.py: options checked before any work, one-seed tables."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _example():
    spec = importlib.util.spec_from_file_location(
        "identifiability_example", REPO / "examples" / "identifiability.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["identifiability_example"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "argument --seeds: must be >= 1"),  # exited 0 with a nan table
        (["--seeds", "-1"], "argument --seeds: must be >= 1"),
        (["--held-out", "0"], "argument --held-out: must be >= 1"),  # deep tracebacks below
        (["--held-out", "60"], "--held-out 60 leaves no training target of the 58"),
        (["--sizes", "0"], "argument --sizes: must be >= 2"),
        (["--sizes", "8,x"], "argument --sizes: expected an integer, got 'x'"),
        (["--repeats", "0"], "argument --repeats: must be >= 1"),
        (["--rows", "0"], "argument --rows: must be >= 2"),
        (["--hidden", "64,x"], "argument --hidden: expected an integer, got 'x'"),
        (["--threads", "0"], "argument --threads: must be >= 1"),
        (["--latent-dim", "0"], "argument --latent-dim: must be >= 1"),
        (["--latent-dim", "11"], "--obs-dim 10 must be >= --latent-dim 11"),
        (["--tasks", "0"], "argument --tasks: must be >= 1"),
        (["--epochs", "0"], "argument --epochs: must be >= 1"),
        (["--lr", "-1"], "argument --lr: must be > 0"),
        (["--weight-decay", "-1"], "argument --weight-decay: must be >= 0"),
        (["--stage2-steps", "0"], "argument --stage2-steps: must be >= 1"),
        (["--restarts", "0"], "argument --restarts: must be >= 1"),
        (["--rep-dim", "0"], "argument --rep-dim: must be >= 1"),
        (["--dock-epochs", "0"], "argument --dock-epochs: must be >= 1"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--train-molecules", "0"], "argument --train-molecules: must be >= 1"),
        (["--ard-repeats", "-1"], "argument --ard-repeats: must be >= 0"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),
        (["--data", "/no/such.csv.gz"], "argument --data: file '/no/such.csv.gz' does not exist"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys, tmp_path):
    data = tmp_path / "dockstring.csv"
    data.write_text("")
    base = [] if "--data" in argv else ["--data", str(data)]
    with pytest.raises(SystemExit) as exc:
        _example().parse_args([*base, *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_synthetic_part_needs_no_dockstring_table():
    args = _example().parse_args(["--part", "synthetic", "--data", "/no/such.csv.gz"])
    assert args.hidden == [64] and args.sizes == [32, 64]


def test_molecule_counts_are_checked_before_any_work(tmp_path):
    from probrec.data.dockstring import DOCKSTRING_TARGETS

    data = tmp_path / "dockstring.csv"
    rows = [",".join(["smiles", *DOCKSTRING_TARGETS])]
    rows += [",".join(["C" * (i + 1), *["-7.0"] * len(DOCKSTRING_TARGETS)]) for i in range(6)]
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--train-molecules", "4", "--sizes", "2"]
    with pytest.raises(SystemExit, match="has 6 molecules: --train-molecules 4 leaves 2"):
        _example().main([*argv, "--part", "all"])  # before the synthetic part
    assert not out.exists()


def test_one_seed_table_has_no_nan(tmp_path, capsys):
    """One seed: the mean alone ("+- nan" before), null s.e. in the JSON."""
    out = tmp_path / "out"
    argv = ["--part", "synthetic", "--seeds", "1", "--tasks", "4", "--rows", "10"]
    argv += ["--epochs", "1", "--stage2-steps", "3", "--restarts", "1", "--latent-dim", "2"]
    argv += ["--obs-dim", "3", "--hidden", "8,8", "--out", str(out)]
    _example().main(argv)
    printed = capsys.readouterr().out
    assert "weak MCC, stage 1" in printed and "+- nan" not in printed
    res = json.loads((out / "results.json").read_text())
    assert res["synthetic"]["summary"]["weak_mcc_stage1"]["linear"][1] is None
    assert (out / "identifiability_synthetic_mcc.png").is_file()
