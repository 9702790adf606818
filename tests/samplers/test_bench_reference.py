"""The benchmark runner against independent counts and closed forms: every target evaluation
charged (counted by a wrapper around the target, not by the samplers' own bookkeeping), the
MAP baseline scored as a point mass, refused settings before the first run, the code version
in the run record."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import sem

from probrec.cli import UsageError
from samplers import bench
from samplers.optimize import map_estimate
from samplers.targets import MoG40


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(["--out", str(tmp_path), "--no-progress", "--no-plots", *extra])


class _Counting(MoG40):
    """MoG-40 that counts the rows it evaluates, per seed of the run it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, int]] = []
        self._inner = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self._inner == 0 and self.rows:
            self.rows[-1]["lp"] += x.shape[0]
        return super().log_prob(x)

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._inner == 0 and self.rows:
            self.rows[-1]["grad"] += x.shape[0]
        self._inner += 1
        try:
            return super().log_prob_and_grad(x)
        finally:
            self._inner -= 1


def test_every_target_evaluation_is_charged_and_printed(tmp_path, monkeypatch, capsys):
    target = _Counting()
    monkeypatch.setattr(bench, "make_target", lambda name, data, seed=0: target)
    runs = []
    real = bench.make_sampler

    def counted_sampler(*a, **kw):  # a fresh count per run (the runner builds one per run)
        sampler = real(*a, **kw)
        run = sampler.run

        def counted_run(tgt, n, seed=0):
            target.rows.append({"lp": 0, "grad": 0})
            runs.append((sampler, seed))
            return run(tgt, n, seed=seed)

        sampler.run = counted_run
        return sampler

    n = 40
    monkeypatch.setattr(bench, "make_sampler", counted_sampler)
    args = _args(
        tmp_path,
        *("--samplers", "digs,pt,pt_hmc,mala,hmc,rwm", "--budgets", "20,120"),
        *("--seeds", "0,1", "--n-samples", str(n), "--compile", "off"),
    )
    assert bench.run(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    done = [r for r in rows if "skipped" not in r]
    assert len(runs) == len(done) == len(target.rows) == 6 * 2 * 2 - 2  # pt_hmc skips 20
    for r, counted in zip(done, target.rows):
        assert (r["n_log_prob_evals"], r["n_grad_evals"]) == (counted["lp"], counted["grad"])
        spent = (counted["lp"] + counted["grad"]) / n
        assert r["evals_per_sample"] == pytest.approx(spent) and spent <= r["budget"]
    # the printed table shows what was spent, which is below the budget where a transition
    # does not divide it (PT with HMC inside: 50 evaluations per transition and chain)
    out = capsys.readouterr().out
    pt_hmc = [r["evals_per_sample"] for r in done if r["sampler"] == "pt_hmc"]
    assert pt_hmc == [pt_hmc[0]] * 2 and pt_hmc[0] < 120
    line = next(t for t in out.splitlines() if t.startswith("mog40   pt_hmc"))
    assert line.split()[2:4] == ["120", f"{pt_hmc[0]:.1f}"]
    # and the runs skipped (budget below one transition) instead of leaving them out
    assert "skipped: mog40 pt_hmc at budget 20: budget 20 evaluations per sample is too" in out


def test_map_is_scored_as_a_point_mass_against_the_same_reference(tmp_path):
    n, seed = 50, 3
    args = _args(
        tmp_path,
        *("--samplers", "mala,map", "--budgets", "10", "--seeds", str(seed)),
        *("--n-samples", str(n)),
    )
    assert bench.run(args) == 0
    rows = {r["sampler"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    mala, mp = rows["mala"], rows["map"]
    assert mp["mmd2_floor"] == mala["mmd2_floor"]  # one floor for every row of a seed
    target = MoG40()
    theta, _ = map_estimate(target, n_starts=8, steps=3000, lr=1e-2, seed=seed)
    a = theta.double().numpy()[None]
    y = target.sample(n, seed=10_000 + seed).double().numpy()  # the runner's reference draws
    # MMD^2 (V-statistic) of the point mass at a: sum over bandwidths of
    # k(a, a) - 2 mean_j k(a, y_j) + mean_jk k(y_j, y_k)
    d_ay, d_yy = cdist(a, y, "sqeuclidean"), cdist(y, y, "sqeuclidean")
    expected = sum(
        1.0 - 2 * np.exp(-d_ay / (2 * h**2)).mean() + np.exp(-d_yy / (2 * h**2)).mean()
        for h in (1.0, 2.0, 5.0, 10.0, 20.0)
    )
    assert mp["mmd2"] == pytest.approx(expected, rel=1e-6)
    assert mp["mmd2_over_floor"] > 10  # a point mass is far from 40 modes (was 0.98x)
    assert mp["modes_covered"] == 1 and mp["mode_weight_tv"] == pytest.approx(0.975, abs=1e-3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--samplers", "mala,ptsd", "--chains", "10"), "ptsd draws independent samples"),
        (("--samplers", "mala,dikl", "--chains", "10"), "dikl draws independent samples"),
        (
            ("--samplers", "mala,hmc", "--settings", '{"hmc": {"n_leapfrog": 0}}'),
            "--samplers hmc on --targets mog40 (--settings): n_leapfrog must be >= 1",
        ),
    ],
)
def test_settings_a_sampler_refuses_are_refused_before_any_run(tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench.run(_args(out, "--budgets", "50", "--seeds", "0", "--n-samples", "20", *extra))
    assert not out.exists()  # nothing ran (MALA's runs came first, then a traceback)


def _git_head() -> str:
    root = Path(bench.__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_results_and_demo_report_name_the_code_they_come_from(tmp_path):
    head = _git_head()
    args = _args(tmp_path, "--samplers", "mala", "--budgets", "5", "--seeds", "0,1")
    args.n_samples = 10
    assert bench.run(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["git_commit"] == head and isinstance(res["git_dirty"], bool)
    assert res["probrec"] == version("probrec")
    assert res["seeds"] == [0, 1] and [r["seed"] for r in res["rows"]] == [0, 1]
    assert res["compile"] == "auto"

    from probrec import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = tmp_path / "demo"
    demo.run(parser.parse_args(["--out", str(out), "--quick", "--sections", "samplers"]))
    report = json.loads((out / "report.json").read_text())
    assert report["git_commit"] == head and report["probrec"] == version("probrec")
    assert (out / report["sections"]["samplers"]["figure"]).is_file()


def test_lj55_table_and_figure_report_the_mean_energy_over_seeds(tmp_path, capsys):
    # LJ-55 has no reference file: its rows hold the mean energy only, and the table and the
    # figure of the W1 they looked for were empty
    args = _args(tmp_path, "--targets", "lj55", "--samplers", "mala", "--budgets", "10,20")
    args.seeds, args.n_samples, args.no_plots = [0, 1, 2], 10, False
    assert bench.run(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    out = capsys.readouterr().out
    for budget in (10, 20):
        e = [r["energy_mean"] for r in res["rows"] if r["budget"] == budget]
        assert len(e) == 3
        line = next(t for t in out.splitlines() if t.startswith(f"lj55    mala        {budget} "))
        cells = line.split()
        assert cells[4] == "energy_mean" and cells[7] == "3"
        assert float(cells[5]) == pytest.approx(np.mean(e), rel=1e-4)
        assert float(cells[6]) == pytest.approx(sem(e), rel=1e-2)  # ddof 1
    assert res["figures"] == ["lj55_independent_energy_mean_vs_budget.png"]
    assert (tmp_path / res["figures"][0]).stat().st_size > 1000
