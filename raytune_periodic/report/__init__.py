"""Reports: the method comparison (table, paired statistics, anytime curves, an HTML page),
read back from MLflow (docs/MLFLOW.md).

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
    "compare_frame",
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
    """What ``raytune-periodic compare`` prints for one invocation (default: the latest).

    ``fmt``: ``md`` (method table, paired statistics vs ``baseline`` — default the first
    method —, verdicts, ranks, notes; starts with a line naming the invocation and ends with
    the written paths), ``csv`` (the ``compare_frame`` table, bare), ``json`` (every number,
    for scripts) or ``html`` (one self-contained page; without ``out_dir`` the page itself is
    returned). With ``out_dir``, also writes the file (``methods.md``, ``methods.csv``,
    ``report.json`` or ``report.html``) and the PNG plots there.
    """
    from raytune_periodic.report.output import compare_experiment as run

    return run(experiment, tracking_uri, out_dir, fmt, invocation_id, baseline)


def compare_frame(
    experiment: str,
    tracking_uri: str | None = None,
    invocation_id: str | None = None,
    baseline: str | None = None,
) -> Any:
    """The numbers of ``compare`` as a pandas DataFrame, one row per method: the method table
    plus the paired statistics against ``baseline`` (see ``report.output.compare_frame``)."""
    from raytune_periodic.report.output import compare_frame as frame

    return frame(experiment, tracking_uri, invocation_id, baseline)
