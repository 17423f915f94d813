"""The HTML report (self-contained, parses), anytime curves, rank view and bulk history reads."""

from __future__ import annotations

import base64
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from report_store import Trial

from raytune_periodic.report import compare_experiment, load_experiment
from raytune_periodic.report.anytime import mean_band, on_grid, seed_curves
from raytune_periodic.report.compare import MethodData, TrialData
from raytune_periodic.report.history import fetch_histories, naive_histories
from raytune_periodic.report.html import render_html, run_link
from raytune_periodic.report.output import build_report
from raytune_periodic.report.ranks import RankResult, rank_view

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}
PNG = b"\x89PNG\r\n\x1a\n"


class StrictPage(HTMLParser):
    """Collects tags and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")


def _parse(page: str) -> StrictPage:
    parser = StrictPage()
    parser.feed(page)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return parser


def _trials(n_seeds: int = 5) -> list[Trial]:
    return [
        Trial(m, f"{m}-{s}-{k}", s, 0.7 + 0.02 * i + 0.01 * ((s + k) % 3))
        for s in range(n_seeds)
        for i, m in enumerate(("BL", "D", "PD"))
        for k in range(2)
    ]


def test_html_page_parses_and_embeds_every_image(
    store_factory: Callable[..., str], tmp_path: Path
) -> None:
    uri = store_factory(_trials())
    page = compare_experiment("exp", uri, fmt="html")
    parsed = _parse(page)
    imgs = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(imgs) == 8  # anytime, seeds, val_f1, values, train_vs_val, losses, 2 rank views
    for attrs in imgs:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    # nothing is fetched: no scripts, stylesheets, frames or remote sources of any kind
    assert not [t for t, _ in parsed.tags if t in ("script", "link", "iframe", "object")]
    sources = [a.get("src") for _, a in parsed.tags if a.get("src")]
    assert all(s.startswith("data:") for s in sources)
    assert "href" not in page  # a SQLite store: run ids as text, no links
    for text in ("D vs BL: selected test F1", "Paired with BL", "mean rank by", "seeds:\n- 0"):
        assert text in page  # verdicts, paired table, ranks, the logged config.yaml
    compare_experiment("exp", uri, tmp_path, "html")
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 8


def test_links_to_the_mlflow_ui_on_an_http_tracking_server(
    store_factory: Callable[..., str],
) -> None:
    data = load_experiment(store_factory(_trials(2), steps=False), "exp")
    data.tracking_uri = "http://mlflow.example:5000/"
    report = build_report(data)
    page = render_html(report, {}, "name: exp\n")
    parsed = _parse(page)
    hrefs = [a["href"] for t, a in parsed.tags if t == "a"]
    trial = data.methods[0].trials[0]
    assert f"http://mlflow.example:5000/#/experiments/{data.experiment_id}/runs/{trial.run_id}" in (
        hrefs
    )
    assert len(hrefs) == 1 + 3 + len(data.trials)  # invocation, methods, trials
    assert run_link(data, None) == "<code>–</code>"


def test_rank_view_needs_three_methods_and_five_seeds(store_factory: Callable[..., str]) -> None:
    rank = rank_view(load_experiment(store_factory(_trials(5), steps=False), "exp"))
    assert isinstance(rank, RankResult)
    assert list(rank.mean_ranks) == ["PD", "D", "BL"] and rank.n_seeds == 5
    assert rank.omnibus == "friedman" and rank.posthoc == "nemenyi" and rank.cd > 0
    few = rank_view(load_experiment(store_factory(_trials(4), steps=False), "exp"))
    assert isinstance(few, str) and "3 methods with 5 seeds in common" in few


def _trial(tid: str, seed: int, full: dict[int, float], n: int, **summary: float) -> TrialData:
    history = {"val_f1": {s: 0.1 for s in range(n)}, "full_val_f1": full,
               "period_seconds": {s: 1.0 for s in range(n)}}  # fmt: skip
    tags = {"rp.seed": str(seed)}
    return TrialData(tid, tid, "M", "ok", {}, tags, {"total_passes": 10.0 * n, **summary}, history)


def test_anytime_curve_advances_the_trials_of_a_seed_in_lockstep() -> None:
    a = _trial("a", 0, {1: 0.5, 3: 0.6}, 4)
    b = _trial("b", 0, {1: 0.7}, 2, cost_t_ori=0.5)
    c = _trial("c", 1, {0: 0.4}, 1)
    (s0, s1) = seed_curves(MethodData("M", "grid", None, {}, [a, b, c]))
    assert s0.seed == "0" and s1.seed == "1"
    # rounds: both trials run periods 0, 1; then only a runs 2, 3
    assert s0.cost["passes"].tolist() == [20.0, 40.0, 50.0, 60.0]
    assert s0.cost["t_ori"].tolist() == pytest.approx([0.5, 1.0, 1.25, 1.5])
    assert s0.cost["seconds"].tolist() == [2.0, 4.0, 5.0, 6.0]
    assert np.isnan(s0.best[0]) and s0.best[1:].tolist() == [0.7, 0.7, 0.7]
    grid, values = on_grid([s0, s1], "passes")
    assert grid[-1] == 60.0 and values.shape == (2, grid.size)
    assert values[0, -1] == 0.7 and np.isnan(values[0, grid < 40.0]).all()
    assert (values[1, grid >= 10.0] == 0.4).all()  # seed 1 ended at 10 passes: its best stays
    mean, low, high = mean_band(np.array([[0.5, 0.6], [0.7, 0.8]]))
    assert mean.tolist() == pytest.approx([0.6, 0.7])
    assert (low <= mean).all() and (mean <= high).all()


@pytest.mark.parametrize("columns", [True, False], ids=["column-query", "mlflow-bulk"])
def test_bulk_history_equals_one_call_per_run(
    store_factory: Callable[..., str], monkeypatch: pytest.MonkeyPatch, columns: bool
) -> None:
    import mlflow

    from raytune_periodic.report import history

    monkeypatch.setattr(history, "_is_plain_sql_store", lambda store: columns)
    monkeypatch.setattr(history, "SQL_CHUNK", 5)  # several chunks
    uri = store_factory([*_trials(2), Trial("X", "x", 0, 0.5, status="diverged")])
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = [t.run_id for t in load_experiment(uri, "exp").trials]
    keys = ["val_f1", "full_val_f1", "val_loss"]  # val_loss: NaN and inf in the diverged one
    bulk = fetch_histories(client, {r: keys for r in runs})
    for key in keys:
        for run_id, naive in naive_histories(client, key, runs):
            assert bulk[run_id].get(key, {}) == pytest.approx(naive, nan_ok=True)
    assert any(np.isnan(list(bulk[r]["val_loss"].values())).any() for r in runs)


class _Response:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def raise_for_status(self) -> None:
        pass

    def json(self) -> dict[str, Any]:
        return {"metrics": self.rows}


def test_http_bulk_splits_a_full_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's get-history-bulk answer holds at most HTTP_POINTS points: a full one is
    asked again in halves."""
    from raytune_periodic.report import history

    calls: list[list[str]] = []

    def fake_request(creds: Any, endpoint: str, method: str, params: dict) -> _Response:
        assert endpoint == history.HTTP_ENDPOINT and method == "GET"
        calls.append(list(params["run_id"]))
        rows = [{"run_id": r, "step": s, "value": 0.5} for r in params["run_id"] for s in range(3)]
        return _Response(rows[: params["max_results"]])

    class Store:  # an HTTP store: it has host credentials, no SQL bulk query
        def get_host_creds(self) -> None:
            return None

    class Client:
        _tracking_client = type("T", (), {"store": Store()})()

    monkeypatch.setattr("mlflow.utils.rest_utils.http_request", fake_request)
    monkeypatch.setattr(history, "HTTP_POINTS", 7)
    monkeypatch.setattr(history, "HTTP_RUNS", 4)
    got = fetch_histories(Client(), {f"r{i}": ["val_f1"] for i in range(6)})
    assert got == {f"r{i}": {"val_f1": {0: 0.5, 1: 0.5, 2: 0.5}} for i in range(6)}
    assert sorted(len(c) for c in calls) == [2, 2, 2, 4]  # 4 runs = 12 points: split
