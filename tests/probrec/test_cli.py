import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from probrec.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert main(["nope"]) == 2


def test_cli_does_not_import_siblings():
    code = (
        "import sys, probrec.cli, probrec.data; "
        "print('metalearn' in sys.modules, 'samplers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert "torch==2.13.0" in test_cmd
    assert test_cmd.strip() in (REPO / ".ci" / "run").read_text()


def test_demo_data_section(tmp_path):
    assert (
        main(["demo", "--out", str(tmp_path), "--quick", "--sections", "data", "--no-progress"])
        == 0
    )
    rep = json.loads((tmp_path / "report.json").read_text())
    d = rep["sections"]["data"]
    assert d["n_molecules"] == 1017
    assert (tmp_path / d["figure"]).stat().st_size > 1000
    # random forest on Morgan counts beats chance on this assay
    assert d["delta_auprc"]["64"]["random_forest"]["mean"] > 0.1


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sections", ","],
            "argument --sections: expected a comma-separated list",
        ),  # ran nothing
        (["--sections", "bogus"], "argument --sections: unknown bogus"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),  # was a NumPy traceback mid-run
        (["--threads", "0"], "argument --threads: must be >= 1"),
    ],
)
def test_demo_refuses_bad_arguments_before_any_work(tmp_path, args, message, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:  # a usage error, not a traceback
        main(["demo", "--out", str(out), "--quick", "--no-progress", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def _bench_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "samplers", *argv])
    assert exc.value.code == 2  # a usage error, not a traceback (exit status 1)
    err = capsys.readouterr().err
    assert err.startswith("usage: probrec bench samplers")
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n-samples", "10", "--chains", "20"], "--chains (20) must not exceed --n-samples"),
        (["--targets", "dw4"], "--targets dw4 are scored against reference samples: pass --data"),
        (["--device", "foo"], "argument --device: not a torch device"),
        (["--device", "cuda:99"], "argument --device: 'cuda:99' was asked for but torch sees"),
    ],
)
def test_bench_samplers_option_conflicts_are_usage_errors(tmp_path, argv, message, capsys):
    err = _bench_usage_error([*argv, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert message in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_bench_samplers_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _bench_usage_error(["--device", "cuda", "--out", str(tmp_path)], capsys)
    assert "argument --device: 'cuda' was asked for but torch sees no CUDA device" in err


def test_bench_run_still_raises_value_errors_for_code(tmp_path):
    import argparse

    from samplers import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--no-progress"])
    args.device = "foo"  # as code calling run() directly may pass it
    with pytest.raises(ValueError, match="--device: not a torch device"):
        bench.run(args)
    args.device, args.chains, args.n_samples = "cpu", 5, 2
    with pytest.raises(ValueError, match="must not exceed --n-samples"):
        bench.run(args)
