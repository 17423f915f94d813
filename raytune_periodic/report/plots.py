"""Comparison plots (PNG, matplotlib's Agg canvas; no pyplot global state).

F1 curves are per method: the mean over its trials at each step of the trial timeline (the
period index, for methods without PBT), with a ±1 std band where a method has 2+ trials.
Hyperparameter values are drawn per trial (thin steps; at most ``MAX_SCHEDULES`` per method):
a mean of periodic random schedules would be flat. A method keeps its colour across the figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.report.compare import ExperimentData, MethodData, TrialData

_STEP_LABEL = "period (trial timeline step)"
MAX_SCHEDULES = 40  #: schedules drawn per method in values.png (evenly spaced over its trials)


def write_plots(data: ExperimentData, out_dir: str | Path) -> list[Path]:
    """Write ``val_f1.png``, ``values.png``, ``train_vs_val.png`` and ``losses.png`` into
    ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in data.methods if m.trials]
    colors = {m.name: f"C{i % 10}" for i, m in enumerate(methods)}
    return [
        _save(_val_f1(methods, colors), out / "val_f1.png"),
        _save(_values(methods, colors), out / "values.png"),
        _save(_train_vs_val(methods), out / "train_vs_val.png"),
        _save(_losses(methods, colors), out / "losses.png"),
    ]


def _figure(n_panels: int, width: float = 6.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    figure = require("matplotlib.figure")
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = figure.Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _mean_band(trials: Sequence[TrialData], key: str) -> tuple[Any, Any, Any] | None:
    """(steps, mean, std) over the trials' histories of ``key``; None when none has it."""
    pd = require("pandas")
    series = {t.trial_id: pd.Series(t.history[key]) for t in trials if t.history.get(key)}
    if not series:
        return None
    frame = pd.DataFrame(series).sort_index()
    return frame.index.to_numpy(), frame.mean(axis=1).to_numpy(), frame.std(axis=1).to_numpy()


def _curve(ax: Any, trials: Sequence[TrialData], key: str, label: str, **style: Any) -> None:
    band = _mean_band(trials, key)
    if band is None:
        return
    steps, mean, std = band
    (line,) = ax.plot(steps, mean, label=label, **style)
    if len(trials) > 1:
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _val_f1(methods: Sequence[MethodData], colors: dict[str, str]) -> Any:
    fig, (ax,) = _figure(1, 8.0, 4.5)
    for method in methods:
        label = f"{method.name} (n={len(method.trials)})"
        _curve(ax, method.trials, "val_f1", label, color=colors[method.name])
    ax.set(xlabel=_STEP_LABEL, ylabel="val F1 (period mini-batches)", title="Validation F1")
    if methods:
        ax.legend(fontsize="small")
    else:
        _empty(ax, "no trials")
    return fig


def _values(methods: Sequence[MethodData], colors: dict[str, str]) -> Any:
    names = sorted({n for m in methods for t in m.trials for n in t.value_names})
    fig, axes = _figure(max(len(names), 1))
    if not names:
        _empty(axes[0], "no hyperparameter values logged")
        return fig
    collections = require("matplotlib.collections")
    np = require("numpy")
    for ax, name in zip(axes, names):
        for method in methods:
            segments = []
            shown = method.trials[:: max(1, math.ceil(len(method.trials) / MAX_SCHEDULES))]
            for trial in shown:
                points = sorted(trial.history.get(f"value/{name}", {}).items())
                if points:  # steps-post: hold each value until the next step
                    steps, values = np.array(points, dtype=float).T
                    xs = np.append(np.repeat(steps, 2)[1:], steps[-1] + 1)
                    segments.append(np.column_stack([xs, np.repeat(values, 2)]))
            if segments:  # one collection per method: thousands of trials draw in a second
                color = colors[method.name]
                lines = collections.LineCollection(segments, colors=color, alpha=0.6, lw=1.0)
                ax.add_collection(lines)
                some = f" ({len(shown)} of {len(method.trials)} trials)" * (
                    len(shown) < len(method.trials)
                )
                ax.plot([], [], color=color, label=method.name + some)
        ax.autoscale_view()
        ax.set(xlabel=_STEP_LABEL, ylabel=name, title=f"value/{name}")
        ax.legend(fontsize="small")
    return fig


def _train_vs_val(methods: Sequence[MethodData]) -> Any:
    fig, axes = _figure(max(len(methods), 1))
    if not methods:
        _empty(axes[0], "no trials")
        return fig
    for ax, method in zip(axes, methods):
        _curve(ax, method.trials, "train_f1", "train F1")
        _curve(ax, method.trials, "val_f1", "val F1", linestyle="--")
        ax.set(xlabel=_STEP_LABEL, ylabel="F1", title=f"{method.name}: train vs val F1")
        ax.legend(fontsize="small")
    return fig


def _losses(methods: Sequence[MethodData], colors: dict[str, str]) -> Any:
    """Loss curves (the periodic paper's Fig. 4): training loss per period, full-validation
    loss at epoch ends; mean and band over each method's trials."""
    fig, axes = _figure(2)
    if not methods:
        _empty(axes[0], "no trials")
        return fig
    for method in methods:
        _curve(axes[0], method.trials, "train_loss", method.name, color=colors[method.name])
        _curve(axes[1], method.trials, "full_val_loss", method.name, color=colors[method.name])
    axes[0].set(xlabel=_STEP_LABEL, ylabel="loss", title="training loss (per period)")
    axes[1].set(xlabel=_STEP_LABEL, ylabel="loss", title="validation loss (epoch ends)")
    for ax in axes:
        ax.legend(fontsize="small")
    return fig


def seeds_figure(methods: Sequence[MethodData], colors: dict[str, str]) -> Any:
    """Per-seed dot plot of the headline metrics: a dot per method and seed (the mean over the
    seed's trials for final test F1), a grey line joining one seed's dots across methods."""
    from raytune_periodic.report.stats import HEADLINE, METRICS, seed_values
    from raytune_periodic.report.table import seed_sort_key

    fig, axes = _figure(len(HEADLINE), 6.0, 4.0)
    names = [m.name for m in methods]
    for ax, key in zip(axes, HEADLINE):
        per_method = {m.name: seed_values(m, key) for m in methods}
        seeds = sorted({s for v in per_method.values() for s in v}, key=seed_sort_key)
        for seed in seeds:
            ys = [_mean(per_method[n].get(seed)) for n in names]
            ax.plot(range(len(names)), ys, color="0.6", lw=0.8, zorder=1)
        for x, name in enumerate(names):
            ys = [_mean(v) for v in per_method[name].values()]
            ax.scatter([x] * len(ys), ys, color=colors[name], zorder=2, s=22)
        ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 5 else 0)
        n_seeds = len(seeds)
        ax.set(ylabel=METRICS[key][0], title=f"{METRICS[key][0]} per seed ({n_seeds} seeds)")
        if not seeds:
            _empty(ax, "no values")
    return fig


def _mean(values: Sequence[float] | None) -> float:
    return sum(values) / len(values) if values else math.nan


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes (what the HTML page embeds)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
