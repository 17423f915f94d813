"""Grad-CAM of trained trials (periodic paper §2.5, §4.5, Fig. 5) with ``pytorch_grad_cam``.

One figure: a row per image, a column per run (method); the first column is the input image.
Each run's model comes from MLflow alone: the trial run's ``model/best`` artifact (the weights of
its best validation epoch, logged at the trial's end: ``tracking/models.py``), rebuilt from the
spec in its ``rp_model.json`` with the state dict loaded weights-only. Nothing is read from the
Ray storage and nothing is unpickled. The images come from the run's dataset: pass ``data_root``
when the root the run trained on is not reachable from this machine (bundled datasets need none).

The target layer is the model's last ``nn.Conv2d``; the CAM is for each model's predicted class.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import MODEL_ARTIFACTS, TAG_METHOD
from raytune_periodic.report.replay import client_for, get_trial_run

DEFAULT_IMAGES = (0, 1, 2, 3)


@dataclass
class CamRun:
    """One trained run ready for Grad-CAM."""

    label: str
    run_id: str
    model: nn.Module
    data: Any  #: the run's DataSplits
    model_uri: str  #: ``runs:/<run id>/model/best``


def target_layer(model: nn.Module, name: str = "model") -> nn.Module:
    """The last ``nn.Conv2d`` of ``model``; a one-line ConfigError when it has none."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(
            "model", f"{name} has no convolutional layer: Grad-CAM needs one (use a CNN)"
        )
    return convs[-1]


def load_run(
    client: Any, run_id: str, label: str | None = None, data_root: str | Path | None = None
) -> CamRun:
    """A trial run's best-epoch model and its dataset, from MLflow alone (module docstring)."""
    from raytune_periodic.tracking.models import download_model, load_model_dir
    from raytune_periodic.training.spec import load_data, parse_run_spec

    run = get_trial_run(client, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        model, info = load_model_dir(download_model(client, run_id, "best", tmp))
    spec = parse_run_spec(info["spec"])
    name = spec.model["name"]
    if len(info["input_shape"]) != 3:
        raise ConfigError("dataset", f"{spec.dataset['name']} is not an image dataset: no Grad-CAM")
    target_layer(model, f"model {name!r}")
    if data_root is not None:
        spec.dataset["root"] = str(data_root)
    root = spec.dataset.get("root")
    if root is not None and not Path(root).exists():
        raise ConfigError(
            "data_root", f"run {run_id} trained on {root}, not reachable here: pass --data-root"
        )
    data = load_data(spec)
    uri = f"runs:/{run_id}/{MODEL_ARTIFACTS['best']}"
    return CamRun(label or run.data.tags.get(TAG_METHOD, run_id), run_id, model, data, uri)


def best_runs(
    experiment: str, tracking_uri: str | None = None, invocation_id: str | None = None
) -> dict[str, str]:
    """``{method: run id}`` of each method's trial with the highest ``best_val_f1``."""
    from raytune_periodic.report.compare import load_experiment

    data = load_experiment(tracking_uri, experiment, invocation_id)
    out: dict[str, str] = {}
    for method in data.methods:
        scored = [
            (t.summary["best_val_f1"], t.run_id)
            for t in method.trials
            if t.status != "error" and t.summary.get("best_val_f1") is not None
        ]
        if scored:
            out[method.name] = max(scored)[1]
    if not out:
        raise ConfigError("experiment", f"{experiment!r}: no trial with a best_val_f1")
    return out


def load_images(images: Sequence[int | str], data: Any) -> tuple[torch.Tensor, list[str]]:
    """A batch ``(N, C, H, W)`` and row labels: ints index ``data.test``; strings are image
    files, resized to the dataset's size, scaled to [0, 1] and standardised with the test
    split's per-channel mean/std when the split is a tensor dataset."""
    shape = tuple(data.input_shape)
    xs, labels = [], []
    for item in images:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            idx = int(item)
            if not 0 <= idx < len(data.test):
                raise ConfigError(
                    "images", f"test index {idx} out of range 0..{len(data.test) - 1}"
                )
            x, y = data.test[idx]
            xs.append(torch.as_tensor(x, dtype=torch.float32))
            labels.append(f"test #{idx} (y={int(y)})")
        else:
            xs.append(_image_file(Path(item), shape, data))
            labels.append(Path(item).name)
    if not xs:
        raise ConfigError("images", "no images given")
    return torch.stack(xs), labels


def _image_file(path: Path, shape: tuple[int, ...], data: Any) -> torch.Tensor:
    from PIL import Image

    if not path.is_file():
        raise ConfigError("images", f"no image file {path}")
    channels, height, width = shape
    img = Image.open(path).convert("L" if channels == 1 else "RGB").resize((width, height))
    x = torch.tensor(list(img.getdata()), dtype=torch.float32) / 255.0
    x = x.reshape(height, width, -1).permute(2, 0, 1)[:channels]
    tensors = getattr(data.test, "tensors", None)
    if tensors is not None:
        ref = tensors[0].float()
        mean = ref.mean(dim=(0, 2, 3), keepdim=True)[0]
        std = ref.std(dim=(0, 2, 3), keepdim=True)[0].clamp_min(1e-8)
        x = (x - x.mean()) / x.std().clamp_min(1e-8) * std + mean
    return x


def _display(x: torch.Tensor) -> Any:
    """``(C, H, W)`` → an RGB float image in [0, 1] (min-max scaled) for display/overlay."""
    img = x.detach().float()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
    img = img.repeat(3, 1, 1) if img.shape[0] == 1 else img[:3]
    return img.permute(1, 2, 0).numpy()


def gradcam_figure(
    runs: Sequence[str] | dict[str, str],
    out: str | Path,
    *,
    images: Sequence[int | str] = DEFAULT_IMAGES,
    tracking_uri: str | None = None,
    data_root: str | Path | None = None,
) -> Path:
    """Write one PNG: a row per image, the input then one Grad-CAM column per run.

    ``runs``: trial run ids, or ``{column label: run id}`` (e.g. from ``best_runs``);
    ``data_root``: the dataset root on this machine, when not the runs' own. Image
    indices refer to the first run's test split; every run must take that input shape.
    """
    cam_mod = require("pytorch_grad_cam")
    cam_image = require("pytorch_grad_cam.utils.image")
    figure = require("matplotlib.figure")
    client = client_for(tracking_uri)
    items = list(runs.items()) if isinstance(runs, dict) else [(None, r) for r in runs]
    if not items:
        raise ConfigError("runs", "no run ids given")
    loaded = [load_run(client, run_id, label, data_root) for label, run_id in items]
    batch, row_labels = load_images(images, loaded[0].data)
    for cr in loaded[1:]:
        if tuple(cr.data.input_shape) != tuple(batch.shape[1:]):
            raise ConfigError("runs", f"run {cr.run_id} takes {cr.data.input_shape} inputs")
    rows, cols = batch.shape[0], len(loaded) + 1
    fig = figure.Figure(figsize=(1.9 * cols, 1.9 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = [_display(x) for x in batch]
    for r in range(rows):
        axes[r][0].imshow(shown[r])
        axes[r][0].set_ylabel(row_labels[r], fontsize=8)
    axes[0][0].set_title("input", fontsize=9)
    for c, cr in enumerate(loaded, start=1):
        with torch.no_grad():
            preds = cr.model(batch).argmax(dim=1).tolist()
        with cam_mod.GradCAM(model=cr.model, target_layers=[target_layer(cr.model)]) as cam:
            masks = cam(input_tensor=batch.clone(), targets=None)
        for r in range(rows):
            overlay = cam_image.show_cam_on_image(shown[r], masks[r], use_rgb=True)
            axes[r][c].imshow(overlay)
            axes[r][c].set_xlabel(f"pred {preds[r]}", fontsize=8)
        axes[0][c].set_title(cr.label, fontsize=9)
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
