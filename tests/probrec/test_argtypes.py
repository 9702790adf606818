"""Command-line argument types: parsed values, and errors argparse reports by option name."""

from __future__ import annotations

import argparse

import pytest

from probrec import argtypes as at


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--n", type=at.whole(1))
    p.add_argument("--lr", type=at.number(0.0))
    p.add_argument("--sizes", type=at.int_list(1))
    p.add_argument("--seeds", type=at.seed_list)
    p.add_argument("--budgets", type=at.float_list(0.0))
    p.add_argument("--models", type=at.choice_list(["a", "b"]))
    p.add_argument("--settings", type=at.json_object)
    p.add_argument("--data", type=at.existing_path("dir"))
    p.add_argument("--dropout", type=at.fraction)
    p.add_argument("--device", type=at.torch_device)
    p.add_argument("--root", type=at.path_or_word("dir"))
    return p


def test_good_values_parse(tmp_path):
    a = _parser().parse_args(
        ["--n", "3", "--lr", "1e-3", "--sizes", "16, 32", "--seeds", "0,1", "--budgets",
         "100,300.5", "--models", "b,a", "--settings", '{"k": 1}', "--data", str(tmp_path)]
    )  # fmt: skip
    assert (a.n, a.lr, a.sizes, a.seeds, a.budgets) == (3, 1e-3, [16, 32], [0, 1], [100, 300.5])
    assert a.models == ["b", "a"] and a.settings == {"k": 1} and a.data == tmp_path
    p = _parser()
    assert p.parse_args(["--root", "AUTO"]).root == "auto"
    assert p.parse_args(["--root", str(tmp_path)]).root == tmp_path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n", "0"], "argument --n: must be >= 1, got 0"),
        (["--n", "2.5"], "argument --n: expected an integer, got '2.5'"),
        (["--lr", "nan"], "argument --lr: must be finite"),
        (["--lr", "0"], "argument --lr: must be > 0, got 0"),
        (["--sizes", "16,abc"], "argument --sizes: expected an integer, got 'abc'"),
        (["--sizes", "16,,32"], "without empty entries"),
        (["--seeds", "0,0"], "argument --seeds: repeats 0 in '0,0'"),
        (["--seeds", "-1"], "argument --seeds: must be >= 0, got -1"),
        (["--budgets", "0"], "argument --budgets: must be > 0"),
        (["--models", "a,c"], "argument --models: unknown c; choose from a, b"),
        (["--settings", "{bad"], "argument --settings: not valid JSON"),
        (["--settings", "[1]"], "expected a JSON object"),
        (["--data", "/no/such/folder"], "folder '/no/such/folder' does not exist"),
        (["--dropout", "1"], "argument --dropout: must be in [0, 1), got 1"),
        (["--device", "gpu7"], "argument --device: not a torch device: 'gpu7'"),
        (["--root", "/no/such"], "argument --root: folder '/no/such' does not exist"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("meta", "the meta device holds no data"),
        ("mps", "'mps': MPS is not available here"),
        ("xpu:0", "'xpu:0': XPU is not available here"),
    ],
)
def test_torch_device_refuses_accelerators_absent_here(text, message, monkeypatch):
    """'mps', 'xpu' and 'meta' were accepted on a machine without them (the script then
    failed at its first .to(device), after loading its data)."""
    import torch

    for mod in (torch.mps, torch.xpu):
        monkeypatch.setattr(mod, "is_available", lambda: False)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        at.torch_device(text)


def test_torch_device_checks_the_index_of_any_accelerator(monkeypatch):
    import torch

    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    monkeypatch.setattr(torch.xpu, "device_count", lambda: 2)
    assert at.torch_device("xpu:1") == "xpu:1" and at.torch_device("cpu:0") == "cpu:0"
    with pytest.raises(argparse.ArgumentTypeError, match="there are 2 XPU device"):
        at.torch_device("xpu:2")
