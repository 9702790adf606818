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
