"""Benchmark: what the annotator simulators of ``probrec.flows`` cost against the softmax head.

Simulated annotators whose panels agree as human panels do (an item latent) are paid for in
training and inference time. On a synthetic annotator population shaped like POPQUORN on
MiniLM features (:func:`probrec.data.synthetic_annotations`: ``--dim`` 384 features, 4-9
annotators per item, labels 1-5, ``--items`` training items and as many held-out items) this
times, for every model at the library's defaults (encoder 256, dropout 0.5, batches of 64
items, AdamW):

* **epoch**: one training epoch (``fit(x, annotations, mask, epochs=1)``, no validation);
* **probs**: the per-label distribution of every held-out item (``label_log_probs``: exact,
  by Gauss-Hermite quadrature or by importance sampling with the model's default samples);
* **moments**: every held-out item's mean label and the spread of a simulated panel
  (``item_moments``, what the standard-deviation RMSE scores);
* **panel**: the joint likelihood of every held-out item's annotations, scored as one panel
  (``panel_log_prob``, what the panel NLL scores: with an item latent a mixture importance
  sampling or quadrature estimate; otherwise the sum of the per-annotation log-probabilities);
* **sample**: a simulated panel of 10 annotators for every held-out item (``sample(x, 10)``);
* **memory**: the peak tensor memory of one training epoch (:func:`_common.peak_memory_bytes`).

Every time is reported as a ratio to the softmax head's, measured in the same run (repeats
interleave the models, so machine load hits all of them alike). The JSON also records how far
each model's label probabilities are from summing to one (``probs_sum_max_abs_error``).

With ``zuko`` installed (a benchmark-only dependency, ``pip install zuko``) the integer flow
is also set against a conditional neural spline flow from zuko (``zuko.flows.NSF``: one 1-D
monotone rational-quadratic spline of 8 bins, conditioner with the same 256-unit hidden layer),
trained the usual way for ordinal data, by uniform dequantisation (``y + U(0, 1)``, one density
evaluation per annotation). Its label probabilities are exact too, from its CDF at the label
boundaries ``Phi(f(k)) - Phi(f(k - 1))``: what our integer flow computes, from cut points
shared by an item's annotators, and what zuko's flow needs its transform for.

Run from the repository root::

    python benchmarks/annotator_flows.py --threads 1
    python benchmarks/annotator_flows.py --items 500 --repeats 3 --no-memory
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    environment,
    format_table,
    peak_memory_bytes,
    ratio_summary,
    setup,
    summarize,
    time_interleaved,
    write_json,
)

from probrec.argtypes import single_seed, whole

NAME = "annotator_flows"
BASELINE = "softmax head"
ZUKO = "zuko NSF, dequantised"
#: model name -> (class name in probrec.flows, constructor arguments)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    BASELINE: ("SoftmaxHead", {}),
    "discretised Gaussian head": ("GaussianHead", {"objective": "discretised"}),
    "integer flow": ("ConditionalIntegerFlow", {}),
    "integer flow, item latent (32-node quadrature)": (
        "ConditionalIntegerFlow",
        {"item_latent": 1, "quadrature": 32},
    ),
    "integer flow, item latent (importance sampling)": (
        "ConditionalIntegerFlow",
        {"item_latent": 1},
    ),
    "softmax flow, latent per annotation": ("ConditionalSoftmaxFlow", {"latent": "annotation"}),
    "softmax flow, item latent (importance sampling)": (
        "ConditionalSoftmaxFlow",
        {"latent": "item"},
    ),
    "softmax flow, item latent (4 nodes per label: 4^5-point quadrature)": (
        "ConditionalSoftmaxFlow",
        {"latent": "item", "quadrature": 4},
    ),
}
PANEL = 10
OPS = ("epoch", "probs", "moments", "panel", "sample")


def model_text(text: str) -> str:
    """argparse type of one ``--models`` entry: a text that some model name of :data:`MODELS`
    contains (model names hold commas, so the entries are separate arguments)."""
    if not any(text in name for name in MODELS):
        raise argparse.ArgumentTypeError(
            f"{text!r} is in no model name; models: " + "; ".join(repr(n) for n in MODELS)
        )
    return text


model_text.__name__ = "model name"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--items",
        type=whole(2),
        default=2000,
        help="training (and held-out) items (default %(default)s)",
    )
    p.add_argument(
        "--dim", type=whole(4), default=384, help="feature width (default %(default)s: MiniLM)"
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default %(default)s)",
    )
    p.add_argument(
        "--threads", type=whole(1), default=1, help="torch CPU threads (default %(default)s)"
    )
    p.add_argument(
        "--repeats",
        type=whole(1),
        default=5,
        help="timed repeats, median reported (default %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=whole(0),
        default=1,
        help="untimed calls per variant first (default %(default)s)",
    )
    p.add_argument("--seed", type=single_seed, default=0, help="seed (default %(default)s)")
    p.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory pass (the profiler's)"
    )
    p.add_argument("--no-zuko", action="store_true", help="leave zuko out even if installed")
    p.add_argument(
        "--models",
        type=model_text,
        nargs="+",
        default=None,
        metavar="TEXT",
        help="time only the models whose name contains one of these texts (each must be part "
        "of a model name; the softmax head, the baseline, always runs); default: all",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results") / f"{NAME}.json",
        help="JSON output file (default %(default)s)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, padded labels, mask


def _data(items: int, dim: int, seed: int) -> tuple[Split, Split, tuple[int, ...]]:
    """Training and held-out (features, labels, mask) of one population, and its labels."""
    from probrec.data import synthetic_annotations

    data = synthetic_annotations(2 * items, dim, seed=seed)
    x = np.asarray(data.features, dtype=np.float32)
    y, mask = data.labels, data.mask
    train = (x[:items], y[:items], mask[:items])
    return train, (x[items:], y[items:], mask[items:]), data.label_values


def _ours(
    cls_name: str,
    kwargs: dict[str, Any],
    train: Split,
    test: Split,
    labels: tuple[int, ...],
    device: torch.device,
    seed: int,
) -> tuple[dict[str, Callable[[], Any]], int]:
    """One model of ``probrec.flows``: its timed calls (:data:`OPS`) and its parameter count."""
    import probrec.flows as flows

    x, y, mask = train
    x_test = test[0]
    model = getattr(flows, cls_name)(x.shape[1], labels, seed=seed, **kwargs).to(device)
    fit = dict(epochs=1, valid=None, seed=seed, progress=False)
    model.fit(x, y, mask, **fit)  # one untimed epoch first, whatever --warmup says
    fns = {
        "epoch": lambda: model.fit(x, y, mask, **fit),
        "probs": lambda: model.label_log_probs(x_test),
        "moments": lambda: model.item_moments(x_test),
        "panel": lambda: model.panel_log_prob(*test),
        "sample": lambda: model.sample(x_test, PANEL, seed=seed),
    }
    return fns, sum(p.numel() for p in model.parameters())


def _zuko(
    train: Split,
    test: Split,
    labels: tuple[int, ...],
    dev: torch.device,
    seed: int,
) -> tuple[dict[str, Callable[[], Any]], int, str]:
    """A dequantised zuko NSF on the same data: its timed calls, parameters, version."""
    import zuko

    from probrec.data.annotations import annotation_counts
    from probrec.flows.base import panel_moments

    x, y, mask = train
    x_test = test[0]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.as_tensor((x - mu) / sd, device=dev)
    loc, scale = torch.as_tensor(mu, device=dev), torch.as_tensor(sd, device=dev)

    def held_out() -> torch.Tensor:
        """The held-out features standardised inside every timed call, as ours are."""
        return (torch.as_tensor(x_test, device=dev) - loc) / scale

    lab = torch.as_tensor(y, device=dev, dtype=torch.float32)
    msk = torch.as_tensor(mask, device=dev)
    lo = float(labels[0])
    # boundaries between consecutive labels on the dequantised scale (label k: k - lo + [0, 1]);
    # the tails below the first and above the last go to the end labels, as our cut points do
    cuts = torch.arange(1, len(labels), device=dev, dtype=torch.float32)
    torch.manual_seed(seed)
    flow = zuko.flows.NSF(
        features=1, context=x.shape[1], transforms=1, bins=8, hidden_features=(256,)
    )
    flow = flow.to(dev)
    opt = torch.optim.AdamW(flow.parameters(), lr=3e-4, weight_decay=1e-2)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def epoch() -> None:
        flow.train()
        for idx in torch.randperm(len(xs), generator=gen).split(64):
            idx = idx.to(dev)
            m = msk[idx]
            ctx = xs[idx].unsqueeze(1).expand(-1, m.shape[1], -1)[m]
            t = (lab[idx][m] - lo + torch.rand(int(m.sum()), device=dev)).unsqueeze(-1)
            loss = -flow(ctx).log_prob(t).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    @torch.no_grad()
    def probs() -> torch.Tensor:
        flow.eval()
        out = []
        for c in held_out().split(512):
            d = flow(c.unsqueeze(1).expand(-1, len(cuts), -1))
            z = d.transform(cuts.view(1, -1, 1).expand(len(c), -1, 1)).squeeze(-1)
            cdf = torch.nn.functional.pad(torch.special.ndtr(z), (1, 1), value=0.0)
            cdf[:, -1] = 1.0
            out.append((cdf[:, 1:] - cdf[:, :-1]).clamp_min(1e-12).log())
        return torch.cat(out)

    values = torch.tensor(labels, device=dev, dtype=torch.float32)

    @torch.no_grad()
    def moments() -> tuple[torch.Tensor, torch.Tensor]:
        return panel_moments(probs().exp()[None], values)  # one distribution per item

    # held-out label counts [n, K]: annotators independent given x, a panel's log-likelihood
    # is the sum of its annotations' log-probabilities
    counts = torch.as_tensor(annotation_counts(test[1], test[2], labels), device=dev).float()

    @torch.no_grad()
    def panel() -> torch.Tensor:
        return (counts * probs()).sum(-1)

    @torch.no_grad()
    def sample() -> torch.Tensor:
        flow.eval()
        t = flow(held_out()).sample((PANEL,)).squeeze(-1)
        return (t.floor().clamp(0, len(labels) - 1) + lo).long()

    n_params = sum(p.numel() for p in flow.parameters())
    fns = {"epoch": epoch, "probs": probs, "moments": moments, "panel": panel, "sample": sample}
    return fns, n_params, zuko.__version__


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    train, test, labels = _data(args.items, args.dim, args.seed)
    mask, x_test = train[2], test[0]
    variants: dict[str, dict[str, Callable[[], Any]]] = {}
    params: dict[str, int] = {}
    chosen = {
        name: spec
        for name, spec in MODELS.items()
        if name == BASELINE or args.models is None or any(t in name for t in args.models)
    }
    for name, (cls_name, kwargs) in chosen.items():
        variants[name], params[name] = _ours(
            cls_name, kwargs, train, test, labels, device, args.seed
        )
    zuko_version = None
    if not args.no_zuko:
        try:
            fns, n, zuko_version = _zuko(train, test, labels, device, args.seed)
        except ImportError:
            print("zuko is not installed (pip install zuko): its row is left out")
        else:
            fns["epoch"]()  # one untimed epoch first, as for ours
            variants[ZUKO], params[ZUKO] = fns, n
    raw: dict[str, dict[str, list[float]]] = {}
    for op in OPS:
        times = time_interleaved(
            {name: fns[op] for name, fns in variants.items()}, args.repeats, args.warmup, device
        )
        for name, t in times.items():
            raw.setdefault(name, {})[op] = t
    # what the timed calls return, besides time: distributions over the labels
    sum_err = {
        name: float((fns["probs"]().exp().sum(-1) - 1).abs().max())
        for name, fns in variants.items()
    }
    memory = {}
    if not args.no_memory:
        memory = {name: peak_memory_bytes(fns["epoch"], device) for name, fns in variants.items()}
    results = {
        name: {
            "params": params[name],
            **{f"{op}_seconds": summarize(raw[name][op]) for op in OPS},
            **{
                f"{op}_ratio_to_head": ratio_summary(raw[name][op], raw[BASELINE][op]) for op in OPS
            },
            "epoch_peak_memory_bytes": memory.get(name),
            "probs_sum_max_abs_error": sum_err[name],
        }
        for name in variants
    }
    n_ann = int(mask.sum())
    rows = []
    for name, r in results.items():
        row = [name, params[name]]
        for op in OPS:
            med = statistics.median(raw[name][op])
            row.append(f"{med * 1e3:.0f} ms ({r[f'{op}_ratio_to_head']['ratio_of_medians']:.1f}x)")
        mem = r["epoch_peak_memory_bytes"]
        row.append("-" if mem is None else f"{mem / 2**20:.1f}")
        rows.append(row)
    print(
        f"{args.items} training items ({n_ann} annotations), {len(x_test)} held-out items, "
        f"dim {args.dim}, {device}, {torch.get_num_threads()} thread(s); ratio to the {BASELINE}"
    )
    headers = ["model", "params", *OPS[:-1], f"sample {PANEL}", "epoch peak MiB"]
    print(format_table(rows, headers))
    versus = None
    if ZUKO in raw and "integer flow" in raw:  # > 1: the integer flow is faster
        versus = {op: ratio_summary(raw[ZUKO][op], raw["integer flow"][op]) for op in OPS}
        print(
            "integer flow vs zuko (zuko time / ours; per repeat): "
            + ", ".join(
                f"{op} {v['ratio_of_medians']:.2f}x ({v['per_repeat_min']:.2f}-"
                f"{v['per_repeat_max']:.2f})"
                for op, v in versus.items()
            )
        )
    payload = {
        "benchmark": NAME,
        "config": {k: str(v) for k, v in vars(args).items()},
        "data": {
            "train_items": args.items,
            "train_annotations": n_ann,
            "test_items": len(x_test),
            "labels": list(labels),
        },
        "models": {k: {"class": c, "kwargs": kw} for k, (c, kw) in chosen.items()},
        "zuko": zuko_version,
        "integer_flow_vs_zuko": versus,
        "environment": environment(device),
        "baseline": BASELINE,
        "results": results,
        "raw_seconds": raw,
    }
    print(f"wrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
