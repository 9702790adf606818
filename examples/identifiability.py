"""Identifiable representations from task structure (Chen, Horwood, Heo & Hernandez-Lobato,
"Leveraging Task Structures for Improved Identifiability in Neural Network Representations",
TMLR 2024).

Two experiments:

* ``synthetic``: multi-task regression problems with known latents (linear and nonlinear
  mixing; per-task causal graphs ``z_C -> y -> z_S``). Stage 1 (a multi-task network) is scored
  by the weak MCC (after CCA) of its representation; stage 2 (the linear causal model fitted by
  maximum marginal likelihood) by the strong MCC (Hungarian matching) of its latents, against
  PCA and FastICA on the same stage-1 features and the raw stage-1 coordinates.
* ``dockstring``: the 58 DOCKSTRING docking targets as tasks. Stage 1 and stage 2 are trained
  on 48 targets and part of the molecules; on the 10 held-out targets a GP head
  (Matern-5/2, hyperparameters fitted per support set) predicts from 32 / 64 support
  molecules, on stage-1 features, stage-2 latents, PCA of the fingerprints and the raw
  fingerprints (Tanimoto kernel). Few-shot R^2 on the rest of the held-out molecules,
  mean +- s.e. over (target, repeat) episodes.

Writes ``results.json`` and figures to ``--out`` (and ``--figures``).

Example:
    nice -n 5 python examples/identifiability.py --out runs/identifiability
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from probrec.argtypes import existing_path, int_list, number, whole
from probrec.data.dockstring import DOCKSTRING_TARGETS
from probrec.reporting import format_mean_se, json_safe, mean_and_se, mean_se_summary

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/molecules/ood/dockstring-dataset-subsampled.csv.gz"
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=["synthetic", "dockstring", "all"], default="all")
    p.add_argument("--out", default="runs/identifiability", help="output folder")
    p.add_argument("--figures", default="", help="folder for the PNG figures (default: --out)")
    p.add_argument("--seeds", type=whole(1), default=5, help="synthetic seeds")
    p.add_argument("--latent-dim", type=whole(1), default=5, help="synthetic latents d")
    p.add_argument(
        "--obs-dim", type=whole(1), default=10, help="synthetic observation width D (>= d)"
    )
    p.add_argument("--tasks", type=whole(1), default=50, help="synthetic tasks")
    p.add_argument(
        "--rows", type=whole(2), default=200, help="synthetic training rows per task (>= 2)"
    )
    p.add_argument("--epochs", type=whole(1), default=60, help="stage-1 epochs (synthetic)")
    p.add_argument(
        "--hidden",
        type=int_list(1, distinct=False),
        default="64",
        help="stage-1 hidden widths, comma-separated (synthetic)",
    )
    p.add_argument("--lr", type=number(0.0), default=3e-3, help="stage-1 Adam step (synthetic)")
    p.add_argument(
        "--weight-decay",
        type=number(0.0, strict=False),
        default=1e-3,
        help="stage-1 weight decay (synthetic)",
    )
    p.add_argument("--stage2-steps", type=whole(1), default=1000, help="stage-2 Adam steps")
    p.add_argument("--restarts", type=whole(1), default=3, help="stage-2 restarts")
    p.add_argument(
        "--paper-model",
        action="store_true",
        help="stage 2 with z_C | y ~ N(0, I) (the paper's model) instead of exact conditioning",
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="DOCKSTRING table")
    p.add_argument(
        "--held-out",
        type=whole(1),
        default=10,
        help=f"held-out DOCKSTRING targets (of the {len(DOCKSTRING_TARGETS)})",
    )
    p.add_argument("--rep-dim", type=whole(1), default=16, help="DOCKSTRING representation width")
    p.add_argument("--dock-epochs", type=whole(1), default=80, help="stage-1 epochs (DOCKSTRING)")
    p.add_argument(
        "--dropout",
        type=number(0.0, strict=False),
        default=0.2,
        help="stage-1 dropout in [0, 1) (DOCKSTRING)",
    )
    p.add_argument(
        "--no-descriptors",
        dest="descriptors",
        action="store_false",
        help="Morgan count fingerprints only (default: fingerprints + RDKit 2-D descriptors)",
    )
    p.add_argument("--train-molecules", type=whole(1), default=1500, help="stage-1 molecules")
    p.add_argument("--sizes", type=int_list(2), default="32,64", help="support sizes")
    p.add_argument("--repeats", type=whole(1), default=20, help="support sets per target and size")
    p.add_argument(
        "--ard-repeats",
        type=whole(0),
        default=0,
        help="support sets per target for an ARD GP head at the largest support size "
        "(default 0: skipped; about 2-5 s per fit)",
    )
    p.add_argument("--seed", type=whole(0), default=0, help="seed of the DOCKSTRING experiment")
    p.add_argument("--threads", type=whole(1), default=1, help="torch CPU threads")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    if args.part != "synthetic":  # (the synthetic part reads no file)
        try:
            existing_path("file")(args.data)
        except argparse.ArgumentTypeError as exc:
            p.error(f"argument --data: {exc}")
    # bounds that depend on another option or on the fixed DOCKSTRING targets
    if args.obs_dim < args.latent_dim:
        p.error(f"--obs-dim {args.obs_dim} must be >= --latent-dim {args.latent_dim}")
    if args.held_out >= len(DOCKSTRING_TARGETS):
        p.error(
            f"--held-out {args.held_out} leaves no training target of the "
            f"{len(DOCKSTRING_TARGETS)} DOCKSTRING targets"
        )
    if args.dropout >= 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout:g}")
    return args


# ---------------------------------------------------------------------------------- synthetic
def synthetic_run(mixing: str, seed: int, args) -> dict:
    from sklearn.decomposition import PCA, FastICA

    from metalearn.identifiability import (
        fit_causal_model,
        fit_multitask,
        make_synthetic_tasks,
        strong_mcc,
        weak_mcc,
    )

    d = args.latent_dim
    data = make_synthetic_tasks(
        args.tasks, args.rows + 50, d, args.obs_dim, mixing=mixing, seed=seed
    )
    train, test = data.split(50)
    t0 = time.time()
    fit = fit_multitask(
        train.x,
        train.y,
        d,
        hidden=tuple(args.hidden),
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=seed,
    )
    h, h_test = fit.represent(train.x).double(), fit.represent(test.x).double()
    t1 = time.time()
    model, record = fit_causal_model(
        h,
        train.y,
        d,
        steps=args.stage2_steps,
        refine_steps=args.stage2_steps // 3,
        restarts=args.restarts,
        condition_causal=not args.paper_model,
        seed=seed,
    )
    t2 = time.time()
    z_hat = model.latents(h_test)
    mcc, (rows, cols) = strong_mcc(test.z, z_hat, return_matching=True)
    found = model.causal_indicators().numpy()[:, cols]
    hn, hn_test = h.numpy(), h_test.numpy()
    pca = PCA(d, random_state=seed).fit(hn)
    ica = FastICA(d, random_state=seed, max_iter=2000, tol=1e-5).fit(hn)
    return {
        "mixing": mixing,
        "seed": seed,
        "weak_mcc_stage1": weak_mcc(test.z, hn_test),
        "strong_mcc_stage2": mcc,
        "strong_mcc_pca": strong_mcc(test.z, pca.transform(hn_test)),
        "strong_mcc_ica": strong_mcc(test.z, ica.transform(hn_test)),
        "strong_mcc_stage1_raw": strong_mcc(test.z, hn_test),
        "indicator_accuracy": float((found == data.causal[:, rows]).mean()),
        "stage2_loglik_per_row": max(record.restart_objectives),
        "seconds_stage1": t1 - t0,
        "seconds_stage2": t2 - t1,
    }


SYN_KEYS = [
    ("weak_mcc_stage1", "weak MCC, stage 1"),
    ("strong_mcc_stage2", "strong MCC, stage 2"),
    ("strong_mcc_pca", "strong MCC, PCA"),
    ("strong_mcc_ica", "strong MCC, FastICA"),
    ("strong_mcc_stage1_raw", "strong MCC, stage-1 coords"),
    ("indicator_accuracy", "causal-indicator accuracy"),
]


def synthetic(args) -> dict:
    runs = []
    for mixing in ("linear", "nonlinear"):
        for seed in range(args.seeds):
            r = synthetic_run(mixing, seed, args)
            runs.append(r)
            print(
                f"  {mixing:9s} seed {seed}: weak(stage 1) {r['weak_mcc_stage1']:.3f}  "
                f"strong(stage 2) {r['strong_mcc_stage2']:.3f}  PCA {r['strong_mcc_pca']:.3f}  "
                f"ICA {r['strong_mcc_ica']:.3f}  ({r['seconds_stage1']:.0f}+"
                f"{r['seconds_stage2']:.0f} s)",
                flush=True,
            )
    summary = {}
    print(f"\nSynthetic ({args.seeds} seeds, mean +- s.e.)")
    print(f"{'metric':30s} {'linear':>16s} {'nonlinear':>16s}")
    for key, label in SYN_KEYS:
        row = {
            m: mean_se_summary([r[key] for r in runs if r["mixing"] == m])
            for m in ("linear", "nonlinear")
        }
        summary[key] = {m: (v["mean"], v["se"]) for m, v in row.items()}
        # one seed: the mean alone (its s.e. is undefined)
        cells = "".join(f" {format_mean_se(row[m]):>16s}" for m in ("linear", "nonlinear"))
        print(f"{label:30s}{cells}")
    return {"runs": runs, "summary": summary}


def synthetic_figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = SYN_KEYS[1:5]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.2
    for i, (key, label) in enumerate(keys):
        for j, m in enumerate(("linear", "nonlinear")):
            mu, se = res["summary"][key][m]
            ax.bar(
                j + (i - 1.5) * width,
                mu,
                width,
                yerr=se if np.isfinite(se) else None,  # one seed: no error bar
                capsize=3,
                color=f"C{i}",
                label=label.replace("strong MCC, ", "") if j == 0 else None,
            )
    ax.set_xticks([0, 1], ["linear mixing", "nonlinear mixing"])
    ax.set_ylabel("strong MCC (test rows)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Latent recovery up to permutation and scaling")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------- dockstring
def few_shot_r2(
    feats: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    size: int,
    repeats: int,
    kernel: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """R^2 of a GP head on ``repeats`` random support sets of ``size`` from ``pool``."""
    from probrec.gp.exact import GPConfig
    from probrec.gp.head import GPHead

    pool = pool[~np.isnan(y[pool])]
    sup = np.stack([rng.choice(len(pool), size, replace=False) for _ in range(repeats)])
    qry = np.stack([np.setdiff1d(np.arange(len(pool)), s) for s in sup])
    x = torch.as_tensor(feats[pool], dtype=torch.float64)
    yt = torch.as_tensor(y[pool], dtype=torch.float64)
    head = GPHead(GPConfig(kernel=kernel, kind="regression", mean="constant"))
    gp = head.fit(x[sup], yt[sup])
    mean, _ = gp.predict(x[qry])
    yq = yt[qry]
    sse = ((mean - yq) ** 2).sum(-1)
    sst = ((yq - yq.mean(-1, keepdim=True)) ** 2).sum(-1)
    return (1.0 - sse / sst).numpy()


def few_shot_r2_ard(
    feats: np.ndarray, y: np.ndarray, pool: np.ndarray, size: int, repeats: int, rng
) -> np.ndarray:
    """R^2 of an ARD GP (Matern-5/2 with one lengthscale per feature, scikit-learn): unlike an
    isotropic kernel it depends on the basis of the features, not only on their geometry."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    pool = pool[~np.isnan(y[pool])]
    out = []
    for _ in range(repeats):
        sup = rng.choice(len(pool), size, replace=False)
        qry = np.setdiff1d(np.arange(len(pool)), sup)
        kernel = ConstantKernel(1.0, (1e-3, 1e2)) * Matern(
            np.ones(feats.shape[1]), (1e-2, 1e3), nu=2.5
        ) + WhiteKernel(0.1, (1e-5, 1e1))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(feats[pool[sup]], y[pool[sup]])
        yq = y[pool[qry]]
        pred = gp.predict(feats[pool[qry]])
        out.append(1.0 - ((pred - yq) ** 2).sum() / ((yq - yq.mean()) ** 2).sum())
    return np.asarray(out)


def load_dockstring(args) -> tuple[list[str], list[str], np.ndarray]:
    """The DOCKSTRING table, with the molecule counts the options need checked (``SystemExit``
    naming them): loaded before any training."""
    from probrec.data.dockstring import load_dockstring_targets

    smiles, names, scores = load_dockstring_targets(args.data)
    n = len(smiles)
    pool = n - args.train_molecules
    if pool <= max(args.sizes):
        raise SystemExit(
            f"{args.data} has {n} molecules: --train-molecules {args.train_molecules} leaves "
            f"{max(pool, 0)} for support sets of --sizes {','.join(map(str, args.sizes))} and "
            "their queries"
        )
    return smiles, names, scores


def dockstring(args, table=None) -> dict:
    from sklearn.decomposition import PCA, FastICA

    from metalearn.identifiability import fit_causal_model, fit_multitask
    from probrec.data.featurize import MoleculeFeaturizer

    rng = np.random.default_rng(args.seed)
    smiles, names, scores = table if table is not None else load_dockstring(args)
    scores = np.minimum(scores, 5.0)  # DOCKSTRING convention: failed poses clipped at 5
    n, t = scores.shape
    order = rng.permutation(t)
    held, train_t = np.sort(order[: args.held_out]), np.sort(order[args.held_out :])
    mol = rng.permutation(n)
    mol_train, mol_pool = mol[: args.train_molecules], mol[args.train_molecules :]
    print(
        f"DOCKSTRING ({'fingerprints + descriptors' if args.descriptors else 'fingerprints'}): "
        f"{n} molecules, {len(train_t)} training targets, held out: "
        f"{[names[j] for j in held]}",
        flush=True,
    )
    feat = MoleculeFeaturizer(
        descriptors=args.descriptors, count_transform="log1p", n_jobs=2, progress=args.progress
    )
    raw = feat.raw_features(smiles)
    x = feat.fit_raw(raw[mol_train]).transform_raw(raw).astype(np.float32)
    fp = x[:, : feat.n_bits] if feat.fingerprint else x
    t0 = time.time()
    fit = fit_multitask(
        x[mol_train],
        scores[mol_train][:, train_t],
        args.rep_dim,
        hidden=(512, 256),
        epochs=args.dock_epochs,
        batch_size=128,
        weight_decay=1e-5,
        dropout=args.dropout,
        seed=args.seed,
        progress=args.progress,
    )
    h = fit.represent(x).double()
    t1 = time.time()
    pred = fit.predict(x[mol_pool]).numpy()
    yp = scores[mol_pool][:, train_t]
    r2_train_targets = 1 - np.nanmean((pred - yp) ** 2, 0) / np.nanvar(yp, 0)
    model, record = fit_causal_model(
        h[mol_train],
        scores[mol_train][:, train_t],
        args.rep_dim,
        steps=args.stage2_steps,
        refine_steps=args.stage2_steps // 3,
        restarts=args.restarts,
        condition_causal=not args.paper_model,
        seed=args.seed,
        progress=args.progress,
    )
    t2 = time.time()
    print(
        f"stage 1: R^2 of the training targets on held-out molecules "
        f"{np.mean(r2_train_targets):.3f} ({t1 - t0:.0f} s); stage 2: {t2 - t1:.0f} s",
        flush=True,
    )
    z = model.latents(h).numpy()
    hn = h.numpy()

    def standardise(a):
        mu, sd = a[mol_train].mean(0), a[mol_train].std(0) + 1e-12
        return (a - mu) / sd

    pca = PCA(args.rep_dim, random_state=args.seed).fit(x[mol_train])
    h_pca = PCA(args.rep_dim, whiten=True, random_state=args.seed).fit(hn[mol_train])
    h_ica = FastICA(args.rep_dim, random_state=args.seed, max_iter=2000).fit(hn[mol_train])
    feats = {
        "stage-1 features": (standardise(hn), "matern52"),
        "stage-2 latents": (standardise(z), "matern52"),
        "stage-1 PCA (whitened)": (standardise(h_pca.transform(hn)), "matern52"),
        "stage-1 FastICA": (standardise(h_ica.transform(hn)), "matern52"),
        "PCA of inputs": (standardise(pca.transform(x)), "matern52"),
        "fingerprints (Tanimoto)": (np.expm1(fp).astype(np.float64), "tanimoto"),
    }
    sizes = args.sizes
    table: dict = {}
    per_target: dict = {}
    for size in sizes:
        for fname, (f, kernel) in feats.items():
            vals = []
            for j in held:
                r = few_shot_r2(
                    f,
                    scores[:, j],
                    mol_pool,
                    size,
                    args.repeats,
                    kernel,
                    np.random.default_rng([args.seed, size, int(j)]),
                )
                per_target.setdefault(f"{size}", {}).setdefault(fname, {})[names[j]] = float(
                    r.mean()
                )
                vals.append(r)
            table.setdefault(str(size), {})[fname] = np.concatenate(vals)
    print(
        f"\nDOCKSTRING transfer to {len(held)} held-out targets: few-shot R^2 of a GP head, "
        f"{args.repeats} support sets per target (mean +- s.e. over target x repeat episodes;"
        " paired difference vs stage-1 features)"
    )
    out_table = {}
    header = f"{'features':26s}" + "".join(f" {'n=' + str(s):>18s} {'diff':>16s}" for s in sizes)
    print(header)
    for fname in feats:
        line = f"{fname:26s}"
        for s in sizes:
            v = table[str(s)][fname]
            stat = mean_se_summary(v)
            diff = mean_se_summary(v - table[str(s)]["stage-1 features"])
            out_table.setdefault(str(s), {})[fname] = {
                "mean": stat["mean"],
                "se": stat["se"],
                "diff": diff["mean"],
                "diff_se": diff["se"],
            }
            # one episode: the mean alone (its s.e. is undefined)
            line += f" {format_mean_se(stat):>18s} {format_mean_se(diff, signed=True):>16s}"
        print(line)
    ard_table: dict = {}
    if args.ard_repeats:
        print(
            f"\nARD GP head (scikit-learn, one lengthscale per feature), {args.ard_repeats} "
            "support sets per target"
        )
        ard_feats = ["stage-1 features", "stage-2 latents", "stage-1 PCA (whitened)"]
        print(f"{'features':26s}" + f" {'n=' + str(sizes[-1]):>18s}")
        for fname in ard_feats:
            line = f"{fname:26s}"
            for size in sizes[-1:]:
                vals = np.concatenate(
                    [
                        few_shot_r2_ard(
                            feats[fname][0],
                            scores[:, j],
                            mol_pool,
                            size,
                            args.ard_repeats,
                            np.random.default_rng([args.seed, size, int(j)]),
                        )
                        for j in held
                    ]
                )
                stat = mean_se_summary(vals)
                ard_table.setdefault(str(size), {})[fname] = {k: stat[k] for k in ("mean", "se")}
                line += f" {format_mean_se(stat):>18s}"
            print(line, flush=True)
    ind = model.causal_indicators().numpy()
    y_std = np.nan_to_num((yp - np.nanmean(yp, 0)) / np.nanstd(yp, 0))
    both = np.concatenate([standardise(z)[mol_pool], y_std], 1)
    corr = np.corrcoef(both.T)[: args.rep_dim, args.rep_dim :]
    return {
        "held_out": [names[j] for j in held],
        "train_targets": [names[j] for j in train_t],
        "stage1_pool_r2_train_targets": mean_and_se(r2_train_targets),
        "descriptors": args.descriptors,
        "stage2_loglik_per_row": record.restart_objectives,
        "causal_indicators": ind.astype(int).tolist(),
        "latent_target_corr": corr.tolist(),
        "seconds_stage1": t1 - t0,
        "seconds_stage2": t2 - t1,
        "table": out_table,
        "ard_table": ard_table,
        "per_target": per_target,
    }


def dockstring_figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ind = np.asarray(res["causal_indicators"])
    corr = np.asarray(res["latent_target_corr"])
    names = res["train_targets"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    axes[0].imshow(ind.T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("stage 2: causal indicators (black = causal)")
    im = axes[1].imshow(
        corr, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
    )
    axes[1].set_title("corr(recovered latent, docking score), held-out molecules")
    for ax in axes:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    axes[0].set_ylabel("recovered latent")
    fig.colorbar(im, ax=axes[1], fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # the table first: counts it cannot hold stop the run before any work
    docking = load_dockstring(args) if args.part in ("dockstring", "all") else None
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figs = Path(args.figures) if args.figures else out
    figs.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args)}
    start = time.time()
    if args.part in ("synthetic", "all"):
        results["synthetic"] = synthetic(args)
        synthetic_figure(results["synthetic"], figs / "identifiability_synthetic_mcc.png")
    if docking is not None:
        results["dockstring"] = dockstring(args, docking)
        dockstring_figure(results["dockstring"], figs / "identifiability_dockstring_latents.png")
    results["seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=1))
    print(f"\nwrote {out / 'results.json'} ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
