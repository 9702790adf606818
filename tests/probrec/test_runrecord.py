"""Run records: reuse is allowed only for files made with the same options."""

from __future__ import annotations

import hashlib

import pytest

from probrec.runrecord import RECORD, check_run_record, file_sha256, write_run_record


def test_reuse_needs_the_same_options(tmp_path):
    state = tmp_path / "last.pt"
    state.write_text("x")
    check_run_record(tmp_path, {"seed": 0}, [])  # nothing to reuse: nothing to check
    with pytest.raises(ValueError, match="did not record its options"):
        check_run_record(tmp_path, {"seed": 0}, [state])
    opts = {"seed": 0, "steps": 10, "meta": {"lr": 1e-3, "hidden": [8]}, "path": "/a"}
    assert write_run_record(tmp_path, opts) == tmp_path / RECORD
    check_run_record(tmp_path, opts, [state])
    check_run_record(tmp_path, {**opts, "steps": 20}, [state], resumable=["steps"])
    check_run_record(tmp_path, {**opts, "path": "/b"}, [state], ignore=["path"])
    changed = {**opts, "seed": 3, "meta": {"lr": 1e-2, "hidden": [8]}}
    names = {"seed": "--seed", "meta": "--preset"}
    with pytest.raises(ValueError, match=r"\(--preset \(lr 0.001 -> 0.01\); --seed 0 -> 3\)"):
        check_run_record(tmp_path, changed, [state], option_names=names)


def test_file_digest_is_sha256_of_the_contents(tmp_path):
    p = tmp_path / "d.bin"
    p.write_bytes(b"abc" * 500_000)  # over one read block
    assert file_sha256(p) == hashlib.sha256(b"abc" * 500_000).hexdigest()
