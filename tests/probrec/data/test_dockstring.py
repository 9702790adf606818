"""DOCKSTRING loader: parsing, missing values and errors on synthetic tables; the real table."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from probrec.data.dockstring import DOCKSTRING_TARGETS, load_dockstring_targets


def _write(path, header, rows, compress=False):
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    if compress:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_reads_scores_and_missing_values(tmp_path, compress):
    header = ["inchikey", "smiles", *reversed(DOCKSTRING_TARGETS)]
    vals = [str(-float(i) / 10) for i in range(58)]
    row2 = list(vals)
    row2[0], row2[5] = "", "nan"
    path = tmp_path / ("t.csv.gz" if compress else "t.csv")
    _write(path, header, [["K1", "CCO", *vals], ["K2", "c1ccccc1", *row2]], compress)
    smiles, names, scores = load_dockstring_targets(path)
    assert smiles == ["CCO", "c1ccccc1"]
    assert names == list(DOCKSTRING_TARGETS)
    assert scores.shape == (2, 58) and scores.dtype == np.float64
    # the file's columns are reversed: target j sits in file column 57 - j
    np.testing.assert_allclose(scores[0], [-(57 - j) / 10 for j in range(58)])
    assert np.isnan(scores[1, 57]) and np.isnan(scores[1, 52])
    assert np.isnan(scores).sum() == 2
    _, sub, s2 = load_dockstring_targets(path, targets=["ESR2", "PPARD"])
    assert sub == ["ESR2", "PPARD"] and s2.shape == (2, 2)
    np.testing.assert_allclose(s2[0], scores[0, [9, 0]])


def test_errors(tmp_path):
    header = ["smiles", *DOCKSTRING_TARGETS]
    good = ["CCO", *["-7.0"] * 58]
    with pytest.raises(FileNotFoundError):
        load_dockstring_targets(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="smiles_column"):
        load_dockstring_targets(_write(tmp_path / "a.csv", ["smi", *DOCKSTRING_TARGETS], [good]))
    with pytest.raises(ValueError, match="lacks the target"):
        load_dockstring_targets(_write(tmp_path / "b.csv", header[:-1], [good[:-1]]))
    with pytest.raises(ValueError, match="unknown DOCKSTRING target"):
        load_dockstring_targets(_write(tmp_path / "c.csv", header, [good]), targets=["XYZ"])
    with pytest.raises(TypeError, match="targets"):
        load_dockstring_targets(tmp_path / "c.csv", targets="ESR2")
    bad = list(good)
    bad[3] = "strong"
    with pytest.raises(ValueError, match="line 2.*not a number"):
        load_dockstring_targets(_write(tmp_path / "d.csv", header, [bad]))
    with pytest.raises(ValueError, match="fields"):
        load_dockstring_targets(_write(tmp_path / "e.csv", header, [good[:-2]]))
    with pytest.raises(ValueError, match="no rows"):
        load_dockstring_targets(_write(tmp_path / "f.csv", header, []))
    with pytest.raises(ValueError, match="empty SMILES"):
        load_dockstring_targets(_write(tmp_path / "g.csv", header, [["", *good[1:]]]))


@pytest.mark.data
def test_real_table(shared_data):
    path = shared_data / "molecules/ood/dockstring-dataset-subsampled.csv.gz"
    smiles, names, scores = load_dockstring_targets(path)
    assert len(smiles) == 2312 and scores.shape == (2312, 58)
    assert names == list(DOCKSTRING_TARGETS)
    assert np.isnan(scores).sum() == 2  # two MAOB scores are missing in this subsample
    assert np.isnan(scores[:, names.index("MAOB")]).sum() == 2
    assert np.nanmedian(scores) < -5
