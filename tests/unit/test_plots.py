"""The continual heat map renders off-screen to a valid PNG."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from forgesweep.metrics import AccuracyMatrix
from forgesweep.tracking.plots import accuracy_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _partly_nan_matrix() -> AccuracyMatrix:
    # after stage 1 of 3: the last row and the upper triangle are still NaN
    m = AccuracyMatrix(3)
    m.set(0, 0, 0.91)
    m.set(1, 0, 0.72)
    m.set(1, 1, 0.96)
    return m


def test_heatmap_writes_valid_png(tmp_path):
    m = _partly_nan_matrix()
    assert math.isnan(m.get(2, 2))
    out = accuracy_heatmap(m, ["Deepfakes", "Face2Face", "FaceSwap"], "ACC after stage 1",
                           tmp_path / "nested" / "acc.png")
    assert out == tmp_path / "nested" / "acc.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert width > 0 and height > 0
        img.verify()


def test_heatmap_does_not_leave_pyplot_figures(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    accuracy_heatmap(_partly_nan_matrix(), ["a", "b", "c"], "t", str(tmp_path / "h.png"))
    assert plt.get_fignums() == before


def test_heatmap_rejects_wrong_number_of_names(tmp_path):
    with pytest.raises(ValueError, match="3 names"):
        accuracy_heatmap(_partly_nan_matrix(), ["a", "b"], "t", tmp_path / "h.png")
