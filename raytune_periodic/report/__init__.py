"""Reports: the method comparison table and plots, read back from MLflow (docs/MLFLOW.md).

The submodules load on first use (pandas/matplotlib/MLflow are imported only when needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raytune_periodic.report.compare import (
        ExperimentData,
        MethodData,
        TrialData,
        load_experiment,
        method_table,
        render_table,
    )
    from raytune_periodic.report.plots import write_plots

__all__ = [
    "ExperimentData",
    "MethodData",
    "TrialData",
    "compare_experiment",
    "load_experiment",
    "method_table",
    "render_table",
    "write_plots",
]


def __getattr__(name: str) -> Any:
    if name == "write_plots":
        from raytune_periodic.report import plots

        return plots.write_plots
    if name in __all__:
        from raytune_periodic.report import compare

        return getattr(compare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compare_experiment(
    experiment: str,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    fmt: str = "md",
    invocation_id: str | None = None,
    baseline: str | None = None,
) -> str:
    """What ``raytune-periodic compare`` prints: the method table of one invocation.

    With ``out_dir``, also writes the table (``methods.md`` / ``methods.csv``) and the PNG
    plots there. Markdown output starts with a line naming the invocation and ends with the
    written paths; CSV output is the bare table.
    """
    from raytune_periodic.report.compare import load_experiment, method_table, render_table
    from raytune_periodic.report.plots import write_plots

    data = load_experiment(tracking_uri, experiment, invocation_id)
    table = render_table(method_table(data), fmt)
    written: list[Path] = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"methods.{fmt}").write_text(table)
        written = [out / f"methods.{fmt}", *write_plots(data, out)]
    if fmt == "csv":
        return table
    head = (
        f"experiment {data.experiment_name!r}, invocation {data.invocation_id} "
        f"({len(data.methods)} methods, {len(data.trials)} trials; MLflow {data.tracking_uri})"
    )
    tail = "".join(f"\nwrote {p}" for p in written)
    return f"{head}\n\n{table}{tail}"
