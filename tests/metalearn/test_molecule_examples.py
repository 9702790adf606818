"""Smoke runs of the two molecule examples on real data at their smallest sizes (numbers are
checked for consistency, not quality): every stage runs, writes its files and reports finite
figures for every learner."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TOXCAST = "molecules/moleculenet/toxcast_500.csv.gz"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(
        f"{name}_example", REPO / "examples" / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"{name}_example"] = mod
    spec.loader.exec_module(mod)
    return mod


def _subsample(src: Path, dst: Path, n: int) -> Path:
    """The header and ``n`` seeded random rows of a CSV (gzipped or not): featurising all
    8,576 ToxCast molecules would dominate the run."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt") as f:
        header, *rows = f.read().splitlines()
    keep = np.sort(np.random.default_rng(0).choice(len(rows), min(n, len(rows)), replace=False))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if dst.suffix == ".gz" else open)(dst, "wt") as f:
        f.write("\n".join([header, *(rows[i] for i in keep)]) + "\n")
    return dst


@pytest.fixture(scope="module")
def small_data(shared_data, tmp_path_factory):
    """ToxCast (1,500 molecules) and COVID Moonshot (400) subsamples in the data layout."""
    if not (shared_data / TOXCAST).is_file():
        pytest.skip("ToxCast is absent")
    root = tmp_path_factory.mktemp("data")
    _subsample(shared_data / TOXCAST, root / TOXCAST, 1500)
    moonshot = shared_data / "molecules" / "ood" / "covid-moonshot-dataset.csv"
    if moonshot.is_file():
        _subsample(moonshot, root / "molecules" / "ood" / moonshot.name, 400)
    return root


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


@pytest.mark.data
def test_fewshot_molecules_smallest_run(small_data, tmp_path):
    args = ["--data", str(small_data / TOXCAST), "--tox21", "", "--out", str(tmp_path)]
    args += ["--steps", "3", "--sizes", "16", "--eval-seeds", "1", "--n-valid", "5"]
    args += ["--n-test", "10", "--jobs", "1", "--learners", "ADKF-IFT,DKT,RF", "--threads", "1"]
    assert _example("fewshot_molecules").main([*args, "--no-progress"]) in (0, None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["splits"]["valid"] == 5 and report["splits"]["test"] == 10
    for learner in ("ADKF-IFT", "DKT", "RF"):
        cell = report["toxcast_test"][learner]["16"]
        # a subsampled assay may lack the molecules for a 16-shot episode
        assert 5 <= cell["n_tasks"] <= 10 and _finite(cell["mean"], cell["se"])
        assert -1.0 <= cell["mean"] <= 1.0  # delta AUPRC
    for f in ("toxcast_test.md", "toxcast_test.png"):
        assert (tmp_path / f).stat().st_size > 0


@pytest.mark.data
def test_molecular_bo_smallest_run(small_data, tmp_path):
    if not (small_data / "molecules" / "ood").is_dir():
        pytest.skip("COVID Moonshot is absent")
    args = ["--data", str(small_data / TOXCAST), "--root", str(small_data)]
    args += ["--out", str(tmp_path), "--steps", "3", "--sizes", "16", "--pred-repeats", "2"]
    args += ["--bo-repeats", "2", "--n-iter", "2", "--n-init", "8"]
    args += ["--datasets", "covid_moonshot", "--threads", "1", "--no-progress"]
    assert _example("molecular_bo").main(args) in (0, None)
    res = json.loads((tmp_path / "report.json").read_text())["datasets"]["covid_moonshot"]
    models = ("ADKF-IFT", "DKT", "GP-Tanimoto", "RF")
    for m in models:
        pred = res["prediction"][f"{m}@16"]
        assert len(pred["r2_per_repeat"]) == 2 and _finite(*pred["r2"], *pred["nll"])
    bo = res["bo"]
    for m in (*models, "random"):
        curves = bo[m]["curves"]
        assert len(curves) == 2 and all(len(c) == 3 for c in curves)
        # best-so-far curves never decrease and never pass the best molecule of the pool
        for c in curves:
            assert all(b >= a for a, b in zip(c, c[1:])) and c[-1] <= bo["pool_best"] + 1e-9
    # every surrogate starts from the same initial design
    assert len({bo[m]["curves"][0][0] for m in (*models, "random")}) == 1
    assert (tmp_path / "models").is_dir() and (tmp_path / "bo_covid_moonshot.png").is_file()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--learners", "RF,Bogus"], "--learners"),  # failed after 48 s of loading
        (["--learners", "RF,RF"], "--learners"),
        (["--sizes", "16,abc"], "--sizes"),  # failed after meta-training
        (["--sizes", "0"], "--sizes"),
        (["--steps", "0"], "--steps"),  # 0 meant the preset's 400
        (["--n-valid", "-1"], "--n-valid"),
        (["--n-test", "0"], "--n-test"),
        (["--eval-seeds", "0"], "--eval-seeds"),
        (["--seed", "-1"], "--seed"),
        (["--dkl-steps", "0"], "--dkl-steps"),
        (["--threads", "0"], "--threads"),
        (["--jobs", "0"], "--jobs"),
        (["--jobs", "-2"], "--jobs"),
        (["--device", "gpu"], "--device"),
        (["--data", "/no/such/toxcast.csv"], "--data"),
        (["--tox21", "/no/such/tox21.csv"], "--tox21"),
    ],
)
def test_fewshot_molecules_refuses_bad_options_at_parse_time(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        _example("fewshot_molecules").parse_args(argv)
    assert exc.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--pred-repeats", "0"], "--pred-repeats"),  # silently became 20
        (["--bo-repeats", "0"], "--bo-repeats"),  # silently became 4
        (["--bo-repeats", "-3"], "--bo-repeats"),
        (["--n-init", "0"], "--n-init"),
        (["--n-iter", "-1"], "--n-iter"),
        (["--sizes", "32,x"], "--sizes"),
        (["--sizes", "1"], "--sizes"),  # a GP needs two observations
        (["--datasets", "covid_moonshot,nope"], "--datasets"),
        (["--steps", "0"], "--steps"),
        (["--n-valid", "0"], "--n-valid"),
        (["--seed", "x"], "--seed"),
        (["--threads", "0"], "--threads"),
        (["--device", "gpu"], "--device"),
        (["--root", "/no/such/folder"], "--root"),
    ],
)
def test_molecular_bo_refuses_bad_options_at_parse_time(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        _example("molecular_bo").parse_args(argv)
    assert exc.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_molecular_bo_defaults_do_not_depend_on_the_working_directory(monkeypatch, tmp_path):
    ex = _example("molecular_bo")
    monkeypatch.chdir(tmp_path)
    assert ex.DEFAULT_ROOT == REPO.parent / "shared" / "data"
    one = ex.parse_args(["--data", __file__, "--root", str(tmp_path)])
    assert (one.pred_repeats, one.bo_repeats) == (20, 4)
    full = ex.parse_args(["--data", __file__, "--root", str(tmp_path), "--full"])
    assert (full.pred_repeats, full.bo_repeats) == (100, 20)


def _fake_data(tmp_path: Path, text: str = "not a ToxCast table\n") -> Path:
    """A stand-in --data file: the reuse checks run before anything is read from it."""
    path = tmp_path / "toxcast.csv"
    path.write_text(text)
    return path


def test_fewshot_molecules_refuses_checkpoints_of_another_split(tmp_path):
    """A re-run into the same --out resumed the old run's checkpoints whatever the split: it
    printed the old validation score and evaluated on assays that were training assays."""
    ex = _example("fewshot_molecules")
    data, out = _fake_data(tmp_path), tmp_path / "run"
    old = ["--data", str(data), "--out", str(out), "--n-valid", "5", "--n-test", "10"]
    ckpts = out / "checkpoints"
    ex.check_reuse(ckpts, ex.run_options(ex.parse_args(old)), [])  # what a first run records
    (ckpts / "DKT").mkdir()
    (ckpts / "DKT" / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"--n-valid 5 -> 20; --seed 0 -> 3.*another output"):
        ex.main([*old, "--n-valid", "20", "--seed", "3", "--learners", "DKT"])
    with pytest.raises(SystemExit, match=r"--full \(.*hidden \[512\] -> \[2048\]"):
        ex.main([*old, "--full", "--learners", "DKT"])
    data.write_text("other molecules\n")
    with pytest.raises(SystemExit, match=r"--data contents \(SHA-256\) \w+\.\.\. -> "):
        ex.main([*old, "--learners", "DKT"])
    data.write_text("not a ToxCast table\n")
    # same options: reused (and --steps may grow: the checkpoints continue)
    same = ex.parse_args([*old, "--steps", "800"])
    state = [ckpts / "DKT" / "last.pt"]
    ex.check_reuse(ckpts, ex.run_options(same), state, resumable=("steps",))
    assert json.loads((ckpts / "run_options.json").read_text())["steps"] == 800
    # checkpoints of a run that recorded nothing cannot be checked
    (ckpts / "run_options.json").unlink()
    with pytest.raises(SystemExit, match="did not record its options"):
        ex.main([*old, "--learners", "ADKF-IFT"])


def test_fewshot_molecules_refuses_a_learner_checkpoint_of_other_options(tmp_path):
    """A ProtoNet checkpoint from before the example took FS-Mol's Mahalanobis distance stopped
    the run only at ProtoNet's meta-training, after the learners before it had trained."""
    import torch

    ex = _example("fewshot_molecules")
    data, out = _fake_data(tmp_path), tmp_path / "run"
    argv = ["--data", str(data), "--out", str(out), "--learners", "ADKF-IFT,ProtoNet"]
    ckpts = out / "checkpoints"
    ex.check_reuse(ckpts, ex.run_options(ex.parse_args(argv)), [])  # what a first run records
    config = {**ex.learner_configs(ex.parse_args(argv))["ProtoNet"], "distance": "euclidean"}
    learner = {"class": "ProtoNet", "kind": "classification", "seed": 0, "config": config}
    (ckpts / "ProtoNet").mkdir()
    torch.save({"learner": learner, "step": 100}, ckpts / "ProtoNet" / "last.pt")
    data.write_text("not a ToxCast table\n")  # the check comes before any data is read
    with pytest.raises(SystemExit, match=r"ProtoNet: .*distance: 'euclidean' -> 'mahalanobis'"):
        ex.main(argv)


def test_molecular_bo_refuses_saved_models_of_other_options(tmp_path):
    """<out>/models was reused whatever the arguments, while report.json recorded the new
    ones (seed, steps, n-valid)."""
    ex = _example("molecular_bo")
    data, out = _fake_data(tmp_path), tmp_path / "run"
    old = ["--data", str(data), "--root", str(tmp_path), "--out", str(out), "--steps", "50"]
    models = out / "models"
    for f in ("featurizer.json", "ADKF-IFT.pt", "DKT.pt"):
        models.mkdir(parents=True, exist_ok=True)
        (models / f).write_text("")
    with pytest.raises(SystemExit, match="did not record its options"):
        ex.main(old)
    ex.write_run_record(models, ex.run_options(ex.parse_args(old)))
    with pytest.raises(SystemExit, match=r"--seed 0 -> 1; --steps 50 -> 60.*another output folder"):
        ex.main([*old, "--steps", "60", "--seed", "1"])
    with pytest.raises(SystemExit, match=r"--n-valid 30 -> 10"):
        ex.main([*old, "--n-valid", "10", "--models", str(models)])
    # the same options find the complete models and load them
    assert ex.check_saved(ex.parse_args(old), out, ex.run_options(ex.parse_args(old))) is True
    # incomplete models: the checkpoints are checked instead (there --steps may grow)
    (models / "DKT.pt").unlink()
    ckpts = out / "checkpoints"
    ex.write_run_record(ckpts, ex.run_options(ex.parse_args(old)))
    (ckpts / "DKT").mkdir()
    (ckpts / "DKT" / "last.pt").write_bytes(b"")
    longer = ex.parse_args([*old, "--steps", "60"])
    assert ex.check_saved(longer, out, ex.run_options(longer)) is False
    with pytest.raises(SystemExit, match=r"--n-test 100 -> 50"):
        ex.main([*old, "--n-test", "50"])
