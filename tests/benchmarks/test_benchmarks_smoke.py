"""Smoke tests of the benchmark scripts: each ``main()`` runs end to end at the smallest sizes.

They keep the scripts from rotting as the library changes. They check what the scripts
compute besides time (the same MAP optimum as gpytorch + BoTorch, the IFT hypergradient equal
to an unrolled inner loop that has converged, a JSON file with every field), never wall time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchmarks.conftest import TINY


@pytest.mark.parametrize("name", ["inner_loop", "adkf_ift_step", "adapt_latency"])
def test_help(bench, name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        bench(name).main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "--threads" in out and "--out" in out


def test_inner_loop(bench, tmp_path: Path) -> None:
    out = tmp_path / "inner.json"
    args = TINY + ["--tasks", "2", "--support", "10", "--out", str(out)]
    payload = bench("inner_loop").main(args)
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "inner_loop" and len(saved["times_s"]["ours"]) == 1
    from probrec import __version__

    assert saved["environment"]["probrec"] == __version__  # the code the numbers come from
    assert set(saved["environment"]) >= {"git_commit", "git_dirty"}
    # the batched Newton fit and the per-task gpytorch / BoTorch fit find the same MAP optimum
    assert all(saved["ours"]["converged"])
    assert max(saved["ours"]["grad_norm"]) <= saved["tolerance"]
    assert saved["agreement"]["max_abs_objective_diff"] < 1e-6
    assert saved["agreement"]["max_abs_objective_vs_gpytorch_mll"] < 1e-6
    assert math.isfinite(payload["speedup"]["ratio_of_medians"])


def _tiny_step(check_steps: int) -> list[str]:
    """Options of a tiny ``adkf_ift_step`` run: 2 tasks, 8 + 12 points, 4 unrolled steps."""
    sizes = ["--tasks", "2", "--support", "8", "--query", "12", "--hidden", "16"]
    return TINY + sizes + ["--unroll-steps", "4", "--check-steps", str(check_steps)]


def test_adkf_ift_step(bench, tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    args = _tiny_step(check_steps=200) + ["--no-rss", "--out", str(out)]
    bench("adkf_ift_step").main(args)
    saved = json.loads(out.read_text())
    check = saved["hypergradient_check"]
    # an unrolled loop run to convergence gives the IFT hypergradient; 4 steps do not quite
    assert check["long"]["inner_grad_norm_max"] < 1e-6
    assert check["long"]["cosine"] > 0.99999 and check["long"]["relative_diff"] < 1e-3
    assert check["long"]["relative_diff"] < check["timed"]["relative_diff"]
    mem = saved["peak_memory_bytes"]
    assert set(mem) == {"ift", "unrolled", "shared", "encoder"}
    # the unrolled step keeps the graph of every inner step on top of the shared work
    assert mem["unrolled"] > mem["shared"] > 0
    assert all(len(v) == 1 for v in saved["times_s"].values())


def test_adapt_latency(bench, tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    args = TINY + [
        "--tasks",
        "2",
        "--support",
        "8",
        "--query",
        "12",
        "--hidden",
        "16",
        "--out",
        str(out),
    ]
    bench("adapt_latency").main(args)
    saved = json.loads(out.read_text())
    res = saved["results"]["support=8,query=12"]
    assert set(res) == {"ADKF-IFT", "ADKF-IFT batched", "DKT", "GP-ST", "RF"}
    assert all(r["ms_per_task"]["median"] > 0 for r in res.values())
    assert set(saved["ratio_rf_over_adkf_ift"]) == {"support=8,query=12"}


@pytest.mark.slow
def test_inner_loop_real_data(bench, tmp_path: Path, shared_data: Path) -> None:
    data = shared_data / "molecules" / "moleculenet" / "toxcast_500.csv.gz"
    args = [
        "--data",
        str(data),
        "--threads",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--tasks",
        "3",
        "--support",
        "16",
        "--out",
        str(tmp_path / "real.json"),
    ]
    saved = bench("inner_loop").main(args)
    assert saved["agreement"]["max_abs_objective_diff"] < 1e-6
    assert saved["data"]["dim"] == 2048


@pytest.mark.slow
def test_adkf_ift_step_rss_probe(bench, tmp_path: Path) -> None:
    args = _tiny_step(check_steps=0) + ["--rss", "--out", str(tmp_path / "rss.json")]
    saved = bench("adkf_ift_step").main(args)
    assert set(saved["peak_rss"]) == {"ift", "unrolled"}
    assert all(v["peak_growth_bytes"] >= 0 for v in saved["peak_rss"].values())


def test_bo_iteration(bench, tmp_path: Path) -> None:
    out = tmp_path / "bo.json"
    args = ["--data", "none", "--threads", "1", "--repeats", "1", "--warmup", "0"]
    payload = bench("bo_iteration").main(
        args + ["--pool", "120", "--observed", "12", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "bo_iteration" and saved["source"] == "synthetic"
    # the direct q = 1 marginals and gpytorch's batched path give the same acquisition values
    assert saved["scoring_max_abs_diff"] < 1e-8 and saved["scoring_same_argmax"]
    assert math.isfinite(payload["ratios"]["iteration"]["ratio_of_medians"])


def test_annotator_flows(bench, tmp_path: Path) -> None:
    out = tmp_path / "flows.json"
    args = ["--items", "40", "--dim", "8", "--threads", "1", "--repeats", "1", "--warmup", "0"]
    bench("annotator_flows").main(args + ["--no-memory", "--no-zuko", "--out", str(out)])
    saved = json.loads(out.read_text())
    res = saved["results"]
    assert set(res) == set(bench("annotator_flows").MODELS) and saved["zuko"] is None
    assert saved["data"]["train_items"] == 40 and saved["data"]["labels"] == [1, 2, 3, 4, 5]
    for r in res.values():
        # every model's per-label probabilities are a distribution (exactly or by normalisation)
        assert r["probs_sum_max_abs_error"] < 1e-5
        assert r["epoch_ratio_to_head"]["ratio_of_medians"] > 0
        assert r["epoch_peak_memory_bytes"] is None
    assert res["softmax head"]["epoch_ratio_to_head"]["per_repeat"] == [1.0]


def test_hmc_vs_pyro(bench, tmp_path: Path) -> None:
    pytest.importorskip("pyro")
    out = tmp_path / "hmc.json"
    args = ["--chains", "2", "--transitions", "8", "--warmup-transitions", "20"]
    args += ["--nuts", "3", "--nuts-chains", "1"]
    bench("hmc_vs_pyro").main(args + ["--repeats", "1", "--warmup", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["config"]["dim"] == 550 and saved["config"]["step_size"] > 0
    # the one-chain runs and Pyro's used the same random stream: the same path
    assert saved["transitions_together_ours_one_chain_vs_pyro"] == [8, 8]
    assert saved["max_abs_gap_before_apart"] < 1e-4
    agree = saved["agreement"]
    assert agree["ours_one_chain"]["accepted"] == agree["pyro"]["accepted"]
    # our closed-form and autograd gradients drive the same batched run
    assert abs(agree["ours"]["test_nll"] - agree["ours_autograd"]["test_nll"]) < 1e-4
    # each side counts its own gradient evaluations: 1 at the start + L per transition
    assert saved["grad_evals"]["pyro"] == saved["grad_evals"]["ours"] == 2 * (1 + 8 * 10)
    assert math.isfinite(saved["ratios"]["ours_over_pyro"]["ratio_of_medians"])
    nuts = saved["nuts"]
    assert nuts["pyro_nuts"]["chains"] == 1 and nuts["pyro_nuts"]["grad_evals"] >= 8
    assert nuts["ours"]["grad_evals"] == saved["grad_evals"]["ours"]
    assert all(r["log_density_ess"] > 0 for r in nuts.values())
