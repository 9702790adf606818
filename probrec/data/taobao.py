"""TaobaoAd click logs (Alimama display-ad CTR data) as an :class:`InteractionLog`.

Reads the CSV layout of FuxiCTR's TaobaoAd sample (``clk, time_stamp, userid, adgroup_id, pid,
cate_id, campaign_id, customer, brand, price, cms_segid, ..., click_sequence``): one row per ad
impression, ``clk`` the label, the ad group the item. Every other column but the click sequence
becomes a categorical side field (price is bucketed on a log scale); the pre-recorded click
sequence (``^``-separated ad-group ids) is kept in ``metadata["click_sequence"]`` -- the
:mod:`probrec.recsys` pipeline builds histories from the log itself, strictly before each event.

Rows repeating a ``(user, item, time)`` triple are merged (clicked if any was), so that the
triple identifies an event, as the frozen-embedding store of LoopFM needs.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from probrec.data.movielens import InteractionLog, factorize

__all__ = ["load_taobao_ad"]

_NEEDED = ("clk", "time_stamp", "userid", "adgroup_id")


def _parse_time(value: str) -> int:
    v = value.strip()
    try:
        return int(float(v))
    except ValueError:
        dt = datetime.strptime(v, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        return int(dt.timestamp())


def _column(rows: list[dict[str, str]], name: str, parse: Callable[[str], Any], path: Path):
    """``parse`` of column ``name`` in every row; a value it cannot read is named by column and
    data row (a bare "could not convert string to float: 'abc'" before)."""
    out = []
    for i, r in enumerate(rows):
        value = r.get(name, "")
        try:
            out.append(parse(value))
        except (ValueError, TypeError, OverflowError):
            raise ValueError(
                f"{path}: column {name!r} of data row {i + 1} holds {value!r}, which is not a "
                "number" + (" or a 'YYYY-mm-dd HH:MM:SS' time" if name == "time_stamp" else "")
            ) from None
    return out


def _price_bucket(v: str) -> str:
    """``floor(log2(1 + price))`` as text (``""`` when missing)."""
    if v.strip() in ("", "nan"):
        return ""
    price = float(v)
    if not price >= 0:  # a negative price gave log2 of a negative number
        raise ValueError(v)
    return str(int(math.log2(1 + price)))


def load_taobao_ad(path: str | Path, *, name: str | None = None) -> InteractionLog:
    """Loads a TaobaoAd CSV (plain or ``.gz``).

    Args:
        path: the CSV file.
        name: dataset name (default: the file's stem).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a needed column is missing or a label is not 0/1.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"TaobaoAd CSV {str(p)!r} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", newline="") as fh:  # type: ignore[operator]
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:  # named no file
        raise ValueError(f"path {str(p)!r} is not a readable CSV: {exc}") from exc
    missing = [c for c in _NEEDED if c not in header]
    if missing:
        raise ValueError(f"{p} lacks the column(s) {missing}; columns are {header}")
    if not rows:
        raise ValueError(f"{p} has no data rows")
    label = np.array(_column(rows, "clk", float, p))
    if not np.isin(label, (0.0, 1.0)).all():
        raise ValueError(f"clk of {p} must be 0/1")
    user = np.array(_column(rows, "userid", lambda v: int(float(v)), p), dtype=np.int64)
    item = np.array(_column(rows, "adgroup_id", lambda v: int(float(v)), p), dtype=np.int64)
    time = np.array(_column(rows, "time_stamp", _parse_time, p), dtype=np.int64)
    price = _column(rows, "price", _price_bucket, p) if "price" in header else None
    # merge repeated (user, item, time) rows: clicked if any was
    keys = np.stack([user, item, time], axis=1)
    uniq, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    merged_label = np.zeros(len(uniq))
    np.maximum.at(merged_label, inv, label)
    rows = [rows[i] for i in first]
    side = [c for c in header if c not in (*_NEEDED, "click_sequence")]
    fields, card = {}, {}
    for c in side:
        vals = [price[i] for i in first] if c == "price" else [r.get(c, "") for r in rows]
        fields[c], card[c] = factorize(np.array(vals, dtype=object))
    seqs = [
        [int(s) for s in r.get("click_sequence", "").split("^") if s.strip().isdigit()]
        for r in rows
    ]
    log = InteractionLog.sorted_by_time(
        uniq[:, 0],
        uniq[:, 1],
        uniq[:, 2],
        merged_label,
        fields,
        card,
        name=name or p.name.split(".")[0],
        metadata={"source": str(p), "merged_rows": int(len(label) - len(uniq))},
    )
    order = np.lexsort((uniq[:, 1], uniq[:, 0], uniq[:, 2]))
    log.metadata["click_sequence"] = [seqs[i] for i in order]
    return log
