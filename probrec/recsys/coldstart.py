"""Few-shot cold start: new users of the test period as binary few-shot tasks.

A user whose first event falls in the test period (unseen by the FM and the VM) is one task;
its rows are the user's test-period events, the label is the event's label (rating >= 4). The
features of an event ``(u, i, t)`` come from the frozen FM store and never from the user's own
labels (which belong to the task's support / query sets):

* FM-store block ``[2d + 2]``: the mean of the stored FM embeddings of the item's ``K`` most
  recent earlier events (other users': the user's own earlier events of the item, in logs
  where a user meets an item twice, are left out, so the history can hold fewer), the mean
  over those of them that were positives, the item's positive rate among them and
  ``log(1 + count)``;
* VM block: the hidden layer ``[h]`` and logit of a trained vertical model run with an empty
  user history (the user is new when the task starts) and that item history;
* popularity: the item's smoothed positive rate over *all* its earlier events of other
  users, ``(pos + 1) / (n + 2)``.

Baselines with the ``adapt`` / ``predict_proba`` interface of :mod:`metalearn` (duck-typed:
``probrec`` does not import ``metalearn``): :class:`ColumnScore` (popularity, the VM without
adaptation) and :class:`HeadFineTune` (fine-tunes the VM's output layer on the support set,
starting from the trained weights, with an L2 pull towards them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from probrec.checks import as_float_tensor, check_positive_int, check_real
from probrec.data.tasks import Task, TaskSet
from probrec.recsys.features import EventTable
from probrec.recsys.loopfm import StoredHistory
from probrec.recsys.models import VerticalModel, module_device

__all__ = [
    "ColdStartFeatures",
    "ColumnScore",
    "HeadFineTune",
    "cold_start_features",
    "cold_start_tasks",
    "item_popularity",
]


def _earlier_counts(groups: tuple[np.ndarray, ...], t: np.ndarray, y: np.ndarray):
    """Per event, the number of strictly earlier events of its group and their positives.

    Args:
        groups: ``[n]`` arrays whose values together name an event's group (an item; an
            (item, user) pair).
        t: ``[n]`` times; y: ``[n]`` 0/1 labels (float).

    Returns:
        ``(count [n], positives [n])`` in the events' order.
    """
    n = len(t)
    order = np.lexsort((t, *groups))
    ts, ys = t[order], y[order]
    new_group = np.zeros(n, dtype=bool)
    new_group[0:1] = True
    for g in groups:
        gs = g[order]
        new_group[1:] |= gs[1:] != gs[:-1]
    new_tie = new_group | np.r_[True, ts[1:] != ts[:-1]]
    csum = np.r_[0.0, np.cumsum(ys)]  # csum[k] = positives among sorted[:k]
    idx = np.arange(n)
    group_start = np.maximum.accumulate(np.where(new_group, idx, 0))
    tie_start = np.maximum.accumulate(np.where(new_tie, idx, 0))
    count, pos = np.empty(n), np.empty(n)
    count[order] = tie_start - group_start
    pos[order] = csum[tie_start] - csum[group_start]
    return count, pos


def item_popularity(
    item: np.ndarray, time: np.ndarray, label: np.ndarray, user: np.ndarray | None = None
) -> np.ndarray:
    """Smoothed positive rate ``(pos + 1) / (n + 2)`` of each event's item over the item's
    strictly earlier events ``[n]`` (with ``user``: those of other users only).

    Args:
        item: ``[n]`` item of each event.
        time: ``[n]`` event times (finite).
        label: ``[n]`` 0/1 labels.
        user: optional ``[n]`` user of each event; the rate of an event then leaves out the
            same user's earlier events of the item, whose labels belong to that user's
            cold-start task (logs where a user meets an item more than once, like TaobaoAd's
            impressions).

    Returns:
        ``[n]`` rates in ``(0, 1)``.

    Raises:
        ValueError: the arrays are not 1-D of one length, ``time`` holds NaN or inf (a NaN
            time sorts last and would be scored on later events), or ``label`` holds a value
            other than 0 or 1.
    """
    it, t, y = np.asarray(item), np.asarray(time), np.asarray(label, dtype=float)
    us = None if user is None else np.asarray(user)
    if (
        it.ndim != 1
        or t.shape != it.shape
        or y.shape != it.shape
        or (us is not None and us.shape != it.shape)
    ):  # a longer label was cut
        shapes = f"{it.shape}, {t.shape}, {y.shape}" + ("" if us is None else f", {us.shape}")
        raise ValueError("item, time, label (and user) must be 1-D of one length, got " + shapes)
    if t.dtype.kind == "f" and not np.isfinite(t).all():  # NaN sorts last: later events leaked
        raise ValueError("time contains NaN or infinite values")
    if not ((y == 0) | (y == 1)).all():  # NaN or a 3 gave a "rate" outside [0, 1]
        raise ValueError("label must hold only 0 and 1 (no NaN)")
    if len(it) == 0:
        return np.empty(0)
    count, pos = _earlier_counts((it,), t, y)
    if us is not None:
        own_count, own_pos = _earlier_counts((us, it), t, y)
        count, pos = count - own_count, pos - own_pos
    return (pos + 1.0) / (count + 2.0)


@dataclass
class ColdStartFeatures:
    """Per-event feature blocks (rows = events).

    Attributes:
        fm: ``[n, 2d + 2]`` FM-store block.
        vm_hidden: per vertical model, its hidden layer ``[n, h]`` (empty user history).
        vm_logit: per vertical model, its logit ``[n]`` (empty user history).
        popularity: ``[n]`` item popularity.
    """

    fm: np.ndarray
    vm_hidden: dict[str, np.ndarray]
    vm_logit: dict[str, np.ndarray]
    popularity: np.ndarray

    def matrix(self) -> np.ndarray:
        """``[n, k]``: ``fm | popularity | (hidden | logit) per VM`` (see :meth:`columns`)."""
        blocks = [self.fm, self.popularity[:, None]]
        for name in self.vm_hidden:
            blocks += [self.vm_hidden[name], self.vm_logit[name][:, None]]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def columns(self) -> dict[str, tuple[int, int]]:
        """``(start, stop)`` of each block of :meth:`matrix`: ``"fm"``, ``"pop"``,
        ``"<vm>/hidden"``, ``"<vm>/logit"``."""
        out = {"fm": (0, self.fm.shape[1])}
        c = self.fm.shape[1]
        out["pop"] = (c, c + 1)
        c += 1
        for name, h in self.vm_hidden.items():
            out[f"{name}/hidden"] = (c, c + h.shape[1])
            out[f"{name}/logit"] = (c + h.shape[1], c + h.shape[1] + 1)
            c += h.shape[1] + 1
        return out


def _without_user_labels(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """``batch`` with no trace of its users' own labels: an empty user history, and the item
    histories without the same user's earlier events of the item (a user who meets an item
    twice, as in TaobaoAd's impressions, would otherwise see one of its task's labels in the
    features of another of its rows)."""
    out = dict(batch)
    own = batch["ihist_mask"] & (batch["ihist_user"] == batch["user"][:, None])
    if bool(own.any()):
        keep = ~own
        out["ihist_event"] = torch.where(keep, batch["ihist_event"], -1)
        out["ihist_mask"] = batch["ihist_mask"] & keep
        for key in ("ihist_label", "ihist_user", "ihist_fm_user"):
            out[key] = torch.where(keep, batch[key], torch.zeros_like(batch[key]))
    out["hist_event"] = torch.full_like(batch["hist_event"], -1)
    out["hist_mask"] = torch.zeros_like(batch["hist_mask"])
    out["hist_label"] = torch.zeros_like(batch["hist_label"])
    out["hist_item"] = torch.zeros_like(batch["hist_item"])
    out["hist_fm_item"] = torch.zeros_like(batch["hist_fm_item"])
    out["hist_age_days"] = torch.zeros_like(batch["hist_age_days"])
    out["hist_count"] = torch.zeros_like(batch["hist_count"])
    out["hist_pos_rate"] = torch.full_like(batch["hist_pos_rate"], 0.5)
    return out


@torch.no_grad()
def cold_start_features(
    table: EventTable,
    stored: StoredHistory,
    vms: Mapping[str, VerticalModel],
    index: np.ndarray,
    *,
    batch_size: int = 2048,
) -> ColdStartFeatures:
    """Feature blocks of the events at ``index`` (see the module docstring).

    Args:
        table: the events.
        stored: reads the FM store (its item histories give the FM block).
        vms: trained vertical models by name, each run with an empty user history (on its own
            device).
        index: ``[n]`` events.
    """
    fm: list[Tensor] = []
    hid: dict[str, list[Tensor]] = {k: [] for k in vms}
    logit: dict[str, list[Tensor]] = {k: [] for k in vms}
    for vm in vms.values():
        vm.eval()
    for s in range(0, len(index), batch_size):
        b = stored(_without_user_labels(table.batch(index[s : s + batch_size])))
        m = b["ihist_mask"].float()
        pos = m * b["ihist_label"]
        cnt, npos = m.sum(-1, keepdim=True), pos.sum(-1, keepdim=True)
        mean_all = torch.einsum("bk,bkd->bd", m, b["fm_ihist"]) / cnt.clamp_min(1)
        mean_pos = torch.einsum("bk,bkd->bd", pos, b["fm_ihist"]) / npos.clamp_min(1)
        rate = torch.where(cnt > 0, npos / cnt.clamp_min(1), torch.full_like(cnt, 0.5))
        fm.append(torch.cat([mean_all, mean_pos, rate, torch.log1p(cnt)], dim=-1))
        for name, vm in vms.items():
            dev = module_device(vm)
            h, z, _ = vm({k: v.to(dev) for k, v in b.items()})
            hid[name].append(h.cpu())
            logit[name].append(z.cpu())
    lg = table.log
    pop = item_popularity(lg.item, lg.time, lg.label, lg.user)[index]
    return ColdStartFeatures(
        torch.cat(fm).cpu().numpy(),
        {k: torch.cat(v).numpy() for k, v in hid.items()},
        {k: torch.cat(v).numpy() for k, v in logit.items()},
        pop,
    )


def cold_start_tasks(
    table: EventTable,
    test_index: np.ndarray,
    features: np.ndarray,
    *,
    min_events: int = 20,
    min_per_class: int = 4,
) -> TaskSet:
    """One classification task per new user of the test period.

    Args:
        table: the events.
        test_index: ``[n]`` test-period events (rows of ``features``, same order).
        features: ``[n, k]`` features of those events.
        min_events: users with fewer test events are dropped.
        min_per_class: users with fewer positives or negatives are dropped.

    Returns:
        Tasks named ``user<id>``, with ``metadata["events"]`` the log indices of their rows.
    """
    min_events = check_positive_int(min_events, "min_events")
    test_index = np.asarray(test_index, dtype=np.int64)
    if len(features) != len(test_index):
        raise ValueError(
            f"features has {len(features)} rows, test_index has {len(test_index)} events"
        )
    lg = table.log
    t0 = lg.time[test_index].min()
    seen_before = np.unique(lg.user[lg.time < t0])
    users = lg.user[test_index]
    tasks = []
    for u in np.unique(users):
        if u in seen_before:
            continue
        rows = np.flatnonzero(users == u)
        y = lg.label[test_index[rows]]
        if len(rows) < min_events or min(y.sum(), len(y) - y.sum()) < min_per_class:
            continue
        tasks.append(
            Task(
                features[rows],
                y,
                "classification",
                f"user{int(u)}",
                {"events": test_index[rows].tolist()},
            )
        )
    return TaskSet(tasks, source=f"cold-start users of {lg.name}")


class _ScorePredictor:
    def __init__(self, fn) -> None:
        self.fn = fn

    def predict_proba(self, x) -> Tensor:
        return self.fn(torch.as_tensor(np.asarray(x), dtype=torch.float64))

    def predict(self, x) -> tuple[Tensor, Tensor]:
        p = self.predict_proba(x)
        return p, p * (1 - p)


class ColumnScore:
    """A non-adaptive scorer: ``P(y = 1) = column`` (or ``sigmoid(column)``).

    Args:
        name: display name.
        column: index of the score column in the task inputs.
        logit: apply a sigmoid to the column.
    """

    def __init__(self, name: str, column: int, *, logit: bool = False) -> None:
        self.name, self.logit = name, bool(logit)
        self.column = check_positive_int(column, "column", minimum=0)

    def meta_fit(self, train_tasks, valid_tasks=None, **kwargs) -> dict:
        return {}

    def adapt(self, support_x, support_y) -> _ScorePredictor:
        c, lg = self.column, self.logit
        width = np.shape(support_x)[-1] if np.ndim(support_x) == 2 else None
        if width is not None and c >= width:  # a bare IndexError at prediction
            raise ValueError(f"column {c} is outside the task inputs' {width} columns")
        return _ScorePredictor(lambda x: torch.sigmoid(x[:, c]) if lg else x[:, c])


class HeadFineTune:
    r"""Fine-tunes a trained model's output layer on a support set.

    Minimises :math:`\mathrm{BCE}(y, x w + b) + \lambda \|(w, b) - (w_0, b_0)\|^2 / 2` over the
    support rows by L-BFGS, from the trained weights :math:`(w_0, b_0)`. The support set must
    hold at least one row (an empty one raises ``ValueError``).

    Args:
        name: display name.
        columns: ``(start, stop)`` of the hidden-layer block in the task inputs.
        weight: ``[h]`` trained output weights ``w_0`` (any device; fine-tuning runs on the
            CPU, where the task inputs are).
        bias: trained output bias ``b_0``.
        l2: :math:`\lambda`.
        steps: L-BFGS iterations.

    Raises:
        ValueError: ``weight`` or ``bias`` is not finite, or ``columns`` does not match the
            length of ``weight``.
    """

    def __init__(
        self,
        name: str,
        columns: tuple[int, int],
        weight: Tensor,
        bias: float,
        *,
        l2: float = 1.0,
        steps: int = 50,
    ) -> None:
        self.name, self.columns = name, tuple(columns)
        self.w0 = weight.detach().to("cpu", torch.float64).reshape(-1)
        self.b0 = torch.tensor([float(bias)], dtype=torch.float64)
        if not bool(torch.isfinite(self.w0).all()):  # a NaN weight gave NaN predictions
            raise ValueError("weight contains NaN or infinite values")
        if not bool(torch.isfinite(self.b0).all()):
            raise ValueError(f"bias must be finite, got {bias}")
        if self.columns[1] - self.columns[0] != len(self.w0):
            raise ValueError(f"columns {columns} do not match weight of length {len(self.w0)}")
        self.l2, self.steps = check_real(l2, "l2"), check_positive_int(steps, "steps")

    def meta_fit(self, train_tasks, valid_tasks=None, **kwargs) -> dict:
        return {}

    def adapt(self, support_x, support_y) -> _ScorePredictor:
        a, b = self.columns
        # NaN features or labels gave NaN predictions, a label of 2 was fitted
        x = as_float_tensor(support_x, "support_x", ndim=2, dtype=torch.float64).cpu()
        y = as_float_tensor(support_y, "support_y", ndim=1, dtype=torch.float64).cpu()
        if len(x) != len(y) or len(y) == 0:
            raise ValueError("support_x and support_y must be non-empty and of equal length")
        if x.shape[1] < b:
            raise ValueError(f"support_x has {x.shape[1]} columns; the head reads columns {a}:{b}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("support_y must hold 0/1 labels")
        x = x[:, a:b]
        theta = torch.cat([self.w0, self.b0]).clone().requires_grad_(True)
        init = torch.cat([self.w0, self.b0])
        opt = torch.optim.LBFGS([theta], max_iter=self.steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            z = x @ theta[:-1] + theta[-1]
            loss = F.binary_cross_entropy_with_logits(z, y, reduction="sum")
            loss = loss + 0.5 * self.l2 * ((theta - init) ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        th = theta.detach()
        return _ScorePredictor(lambda q: torch.sigmoid(q[:, a:b] @ th[:-1] + th[-1]))
