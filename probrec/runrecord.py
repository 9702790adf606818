"""Run records: the options saved models and checkpoints were made with, checked on reuse.

A script that reuses what an earlier run left in its output folder (checkpoints to resume,
saved models to evaluate) writes a record of the options that determine them
(``run_options.json``: data contents, seed, split, training settings) and, before reusing
anything, compares it with its own options: a re-run with another split or seed would
otherwise resume or evaluate models trained on other tasks, and report them as its own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "META_TRAINING_OPTION_NAMES",
    "RECORD",
    "check_run_record",
    "code_version",
    "file_sha256",
    "meta_training_options",
    "write_run_record",
]

RECORD = "run_options.json"

#: the command-line option behind each key of :func:`meta_training_options`, for the message
#: that refuses a mismatch (``check_run_record(option_names=...)``)
META_TRAINING_OPTION_NAMES = {
    "data_sha256": "--data contents (SHA-256)",
    "seed": "--seed",
    "n_valid": "--n-valid",
    "n_test": "--n-test",
    "steps": "--steps",
    "meta_options": "meta-training options",
}


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's contents (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> dict[str, Any]:
    """The code a result comes from, for the environment a results file records.

    Returns:
        ``{"probrec": version, "git_commit": hash, "git_dirty": bool}``; the last two are
        ``None`` where probrec is not run from the root of a git checkout (an installed wheel)
        or ``git`` is missing. ``git_dirty``: tracked files differ from the commit.
    """
    from probrec import __version__

    here = Path(__file__).resolve().parent

    def git(*cmd: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(here), *cmd], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")  # the checkout probrec/ sits in, not any repo
    commit = git("rev-parse", "HEAD") if top and Path(top).resolve() == here.parent else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "probrec": __version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }


def meta_training_options(
    data: str | Path, *, seed: int, n_valid: int, n_test: int, config: Mapping[str, Any]
) -> dict[str, Any]:
    """The options that determine a task split and the models meta-trained on it, as JSON
    values: the data file (path, for messages, and contents), the split's seed and sizes, the
    number of steps (``config["n_steps"]``) and the other meta-training options."""
    options = {
        "data": str(Path(data).resolve()),
        "data_sha256": file_sha256(data),
        "seed": seed,
        "n_valid": n_valid,
        "n_test": n_test,
        "steps": config["n_steps"],
        "meta_options": {k: v for k, v in config.items() if k != "n_steps"},
    }
    return json.loads(json.dumps(options))  # tuples as lists, as a record holds them


def _short(value: Any) -> Any:
    return value[:12] + "..." if isinstance(value, str) and len(value) > 40 else value


def _describe(key: str, old: Any, new: Any, names: Mapping[str, str]) -> str:
    name = names.get(key, key)
    old, new = _short(old), _short(new)
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return f"{name} (" + ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys) + ")"
    return f"{name} {old} -> {new}"


def check_run_record(
    folder: str | Path,
    options: Mapping[str, Any],
    state: Iterable[Path],
    *,
    resumable: Iterable[str] = (),
    option_names: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> None:
    """Checks that the files ``state`` of ``folder`` (what a run would reuse) were made with
    ``options``, as ``folder/run_options.json`` records.

    Args:
        folder: the folder holding the reused files and the record.
        options: this run's options (JSON values).
        state: the files this run would reuse; none: nothing to check.
        resumable: keys that may differ (e.g. a longer run resumes a shorter one's checkpoints).
        option_names: the command-line option behind each key, for the message.
        ignore: keys recorded for information only (e.g. the data path, whose contents are
            compared through a digest).

    Raises:
        ValueError: there is no record, or the recorded options differ (the message names the
            options and their old and new values).
    """
    folder = Path(folder)
    state = list(state)
    if not state:
        return
    names = dict(option_names or {})
    record = folder / RECORD
    if not record.is_file():
        raise ValueError(
            f"{folder} holds {state[0].relative_to(folder)} from a run that did not record its "
            f"options, so it cannot be checked against this one: use another output folder, or "
            f"delete {folder}"
        )
    saved = json.loads(record.read_text())
    skip = set(resumable) | set(ignore)
    differ = [
        _describe(k, saved.get(k), options.get(k), names)
        for k in sorted(set(saved) | set(options))
        if k not in skip and saved.get(k) != options.get(k)
    ]
    if differ:
        raise ValueError(
            f"{folder} holds models trained with other options ({'; '.join(differ)}): this run "
            f"would reuse them as if trained with its own. Use another output folder, or delete "
            f"{folder}"
        )


def write_run_record(folder: str | Path, options: Mapping[str, Any]) -> Path:
    """Records ``options`` in ``folder/run_options.json`` (atomically); returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / RECORD
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(options), indent=1) + "\n")
    tmp.replace(record)
    return record
