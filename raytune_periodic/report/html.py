"""The compare report as one self-contained HTML page: tables, verdicts, the plots embedded as
base64 PNGs, the experiment's config, and links to the MLflow runs when the tracking server is
HTTP. No script, stylesheet, font or image is fetched: the file opens offline."""

from __future__ import annotations

import base64
import datetime
import os
import tempfile
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_periodic._imports import require
from raytune_periodic.protocol.mlflow_layout import CONFIG_ARTIFACT
from raytune_periodic.report.table import MD_HEADER, seed_of, table_cells
from raytune_periodic.tracking import is_finite

if TYPE_CHECKING:
    from raytune_periodic.report.compare import ExperimentData
    from raytune_periodic.report.output import Report

PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; }
.meta { color: #555; } .sig { font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
"""

CAPTIONS = {
    "anytime": "Anytime curves: best validation F1 found so far vs the compute spent, per method "
    "(mean over seeds, 95 % bootstrap band).",
    "seeds": "Per seed: the headline metrics of each method; a grey line joins one seed's "
    "methods (the pairing behind the statistics).",
    "val_f1": "Validation F1 (period mini-batches) per period: mean over trials, ±1 std.",
    "values": "Regularization values per period, one line per trial.",
    "train_vs_val": "Train vs validation F1 per method (the overfitting gap).",
    "losses": "Training loss per period and validation loss at epoch ends (mean over trials, "
    "±1 std): the periodic paper's Fig. 4.",
}
TRIAL_HEADER = (
    "trial",
    "method",
    "seed",
    "status",
    "best val F1",
    "test F1 at best",
    "final test F1",
    "MLflow run",
)
METHODS_TEXT = (
    "Per seed, each method's value is the test F1 of the trial its search selected (best "
    "validation F1), or the mean / IQM of its trials' final test F1. Δ is the mean over the "
    "paired seeds of method − baseline; the interval is a 95 % BCa bootstrap over seeds (a "
    "seed's trials resampled together); with few seeds it is too narrow (88 % coverage measured "
    "at 10 seeds). P(improve) is the probability that the method beats the baseline (per seed "
    "over trials, Mann-Whitney, averaged over seeds). p: paired t-test on the per-seed values, "
    "Holm-corrected over the methods. The seeds for 80 % power are a rough estimate at the "
    "observed effect (paired t-test, α = 0.05)."
)


def run_link(data: ExperimentData, run_id: str | None, text: str | None = None) -> str:
    """An HTML link to the run in the MLflow UI when the tracking URI is HTTP(S), else the
    run id as text."""
    label = escape(text or (run_id or "–"))
    uri = data.tracking_uri
    if run_id and uri.startswith(("http://", "https://")):
        href = f"{uri.rstrip('/')}/#/experiments/{data.experiment_id}/runs/{run_id}"
        return f'<a href="{escape(href)}">{label}</a>'
    return f"<code>{label}</code>" if text is None else label


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], raw: bool = False) -> str:
    """``raw``: cells are HTML already (links); otherwise they are escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else escape(c)}</td>" for c in row) + "</tr>\n"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def _list(items: Iterable[str]) -> str:
    return "<ul>\n" + "".join(f"<li>{escape(i)}</li>\n" for i in items) + "</ul>\n"


def _image(stem: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = CAPTIONS.get(stem, "Ranks: " + stem.removeprefix("ranks_"))
    return (
        f'<figure><img alt="{escape(stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>\n"
    )


def config_text(data: ExperimentData) -> str | None:
    """The resolved config the invocation logged (``config.yaml``), None when absent."""
    mlflow = require("mlflow")
    client = mlflow.MlflowClient(tracking_uri=data.tracking_uri)
    old = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"  # no tqdm bar on stderr for one small file
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(data.invocation_run_id, CONFIG_ARTIFACT, tmp)
            return Path(path).read_text()
    except Exception:  # noqa: BLE001 - an invocation without the artifact still has a report
        return None
    finally:
        if old is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = old


def _config(data: ExperimentData, text: str | None) -> str:
    if text is not None:
        return f"<p>{escape(CONFIG_ARTIFACT)} of the invocation run:</p><pre>{escape(text)}</pre>\n"
    rows = sorted(data.invocation_params.items())
    note = f"<p>No {escape(CONFIG_ARTIFACT)} artifact; the invocation run's params:</p>\n"
    return note + _table(("param", "value"), rows)


def _trials(data: ExperimentData) -> str:
    rows = []
    for method in data.methods:
        for t in method.trials:
            s = t.summary
            cells = [escape(t.trial_id), escape(method.name), escape(seed_of(t)), escape(t.status)]
            cells += [_f(s.get(k)) for k in ("best_val_f1", "test_f1_at_best", "final_test_f1")]
            rows.append([*cells, run_link(data, t.run_id)])
    return (
        f"<details><summary>{len(rows)} trial runs</summary>\n"
        + _table(TRIAL_HEADER, rows, raw=True)
        + "</details>\n"
    )


def _f(x: Any) -> str:
    return f"{x:.3f}" if is_finite(x) else "–"


def render_html(report: Report, images: dict[str, bytes], config: str | None) -> str:
    """The page: ``images`` are PNG bytes by figure stem, ``config`` the config.yaml text."""
    from raytune_periodic.report.output import PAIRED_FOOTNOTE, PAIRED_HEADER, paired_cells

    data = report.data
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    methods = [
        f"<li>{escape(m.name)} ({escape(m.search or '?')}, {len(m.trials)} trials): "
        f"{run_link(data, m.run_id)}</li>\n"
        for m in data.methods
    ]
    parts = [
        f"<h1>{escape(data.experiment_name)}: method comparison</h1>\n",
        f'<p class="meta">invocation {run_link(data, data.invocation_run_id, data.invocation_id)}'
        f" · {len(data.methods)} methods, {len(data.trials)} trials · MLflow "
        f"<code>{escape(data.tracking_uri)}</code> · baseline {escape(report.baseline)} · "
        f"generated {when}</p>\n",
        "<h2>Verdicts</h2>\n" + _list(report.verdicts or ["no method to compare with"]),
        "<h2>Methods</h2>\n" + _table(MD_HEADER, map(table_cells, _records(report.table))),
        f"<h2>Paired with {escape(report.baseline)}</h2>\n"
        + _table(PAIRED_HEADER, map(paired_cells, _records(report.paired)))
        + f"<p>{escape(PAIRED_FOOTNOTE)}</p>\n",
    ]
    if report.ranks:
        parts.append("<h2>Ranks</h2>\n" + _list(r.summary() for r in report.ranks))
    parts.append("<h2>Plots</h2>\n" + "".join(_image(k, v) for k, v in images.items()))
    if report.notes:
        parts.append("<h2>Notes</h2>\n" + _list(report.notes))
    parts += [
        "<h2>How the numbers are computed</h2>\n" + f"<p>{escape(METHODS_TEXT)}</p>\n",
        "<h2>Runs</h2>\n<ul>\n" + "".join(methods) + "</ul>\n" + _trials(data),
        "<h2>Configuration</h2>\n" + _config(data, config),
    ]
    title = escape(f"compare: {data.experiment_name} ({data.invocation_id})")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "".join(parts)
        + "</body>\n</html>\n"
    )


def _records(frame: Any) -> list[dict[str, Any]]:
    return list(frame.to_dict("records"))
