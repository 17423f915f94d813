"""Grad-CAM writes one figure (row per image, column per method) from two real trial runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_gradcam_figure_grid_from_best_runs(report_experiment: dict, tmp_path: Path) -> None:
    from matplotlib import image as mpimg
    from PIL import Image

    from raytune_periodic.report.gradcam import best_runs, gradcam_figure

    uri = report_experiment["uri"]
    runs = best_runs(report_experiment["name"], uri)
    assert list(runs) == ["BL", "PD"]
    digit = tmp_path / "digit.png"
    Image.fromarray(_digit_array()).save(digit)
    out = gradcam_figure(runs, tmp_path / "cam.png", images=[0, 5, str(digit)], tracking_uri=uri)
    assert out.is_file()
    height, width = mpimg.imread(out).shape[:2]
    rows, cols = 3, 1 + len(runs)
    assert (width, height) == (round(1.9 * cols * 100), round((1.9 * rows + 0.3) * 100))


def _digit_array() -> Any:
    import numpy as np

    img = np.zeros((16, 16), dtype=np.uint8)
    img[3:13, 6:10] = 255  # a "1"
    return img


def test_gradcam_by_run_id_and_errors(report_experiment: dict, tmp_path: Path) -> None:
    from raytune_periodic.errors import ConfigError
    from raytune_periodic.models import build_model
    from raytune_periodic.report.gradcam import best_runs, gradcam_figure, target_layer

    uri = report_experiment["uri"]
    run_id = best_runs(report_experiment["name"], uri)["PD"]
    out = gradcam_figure([run_id], tmp_path / "one.png", images=[1], tracking_uri=uri)
    assert out.is_file()
    mlp = build_model("mlp", (1, 8, 8), 10, hidden=[8])
    with pytest.raises(ConfigError, match="no convolutional layer"):
        target_layer(mlp)
    with pytest.raises(ConfigError, match="out of range"):
        gradcam_figure([run_id], tmp_path / "bad.png", images=[10**6], tracking_uri=uri)
