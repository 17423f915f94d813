"""``raytune-periodic mlflow-sync``: deliver what was spooled while the server was down.

Each spool file is delivered in order (``Spool.drain``); a write the server rejects goes to the
spool's failed-writes log. ``retry_failed`` then replays each failed-writes log: it is moved to
``<stem>.retry.jsonl`` (an interrupted retry is finished first) and delivered like a spool,
without the last-step skipping of a spool replay (a failed step is older than the steps that were
delivered after it; MLflow ignores a metric row it already has); what fails again goes back to
the failed-writes log. A file that cannot be read is reported and skipped, never blocking the
others; the result counts every write not delivered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raytune_periodic.tracking.spool import Spool, count_ops, is_unreachable

Out = Callable[[str], object]


def sync_spools(
    spool_dir: str | os.PathLike[str] | None,
    tracking_uri: str | None = None,
    *,
    retry_failed: bool = False,
    out: Out = print,
) -> int:
    """Deliver every spool file under ``spool_dir``; the number of writes still left.

    ``tracking_uri`` overrides the URI each spool was written for. ``retry_failed`` also
    replays the writes the server rejected earlier (the failed-writes logs); without it they
    are reported and counted as left.
    """
    files = Spool.files(spool_dir)
    left = sum(_deliver_spool(path, spool_dir, tracking_uri, out) for path in files)
    stems = _failed_stems(spool_dir)
    for stem in stems:
        if retry_failed:
            left += _retry_failed(stem, spool_dir, tracking_uri, out)
        else:
            n = count_ops(_with(stem, ".failed.jsonl")) + count_ops(_with(stem, ".retry.jsonl"))
            if n:
                out(f"{stem}: {n} failed write(s) kept aside; --retry-failed replays them")
            left += n
    if not files and not stems:
        out("nothing spooled")
    return left


def _with(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def _failed_stems(spool_dir: str | os.PathLike[str] | None) -> list[Path]:
    stems = set()
    for path in Spool.failed_files(spool_dir):
        name = path.name.removesuffix(".failed.jsonl").removesuffix(".retry.jsonl")
        stems.add(path.with_name(name))
    return sorted(stems)


def _store(uri: str, experiment: str, spool_dir: Any, spool: Spool) -> Any:
    from raytune_periodic.tracking import MlflowStore

    store = MlflowStore(uri, experiment, synchronous=True, spool_dir=spool_dir)
    store.spool = spool
    return store


def _deliver_spool(path: Path, spool_dir: Any, tracking_uri: str | None, out: Out) -> int:
    try:
        head = Spool.header(path)
    except (OSError, ValueError) as exc:
        out(f"{path}: skipped, not readable as a spool ({exc})")
        return count_ops(path)
    uri = tracking_uri or head["tracking_uri"]
    spool = Spool(path, head["tracking_uri"], head["experiment"])
    store = _store(uri, head["experiment"], spool_dir, spool)
    before = spool.pending()
    remaining = store.sync()
    out(f"{head['experiment']} -> {uri}: delivered {before - remaining}, left {remaining}")
    return int(remaining)


def _retry_failed(stem: Path, spool_dir: Any, tracking_uri: str | None, out: Out) -> int:
    failed, retry_path = _with(stem, ".failed.jsonl"), _with(stem, ".retry.jsonl")
    try:
        head = Spool.header(retry_path if retry_path.exists() else failed)
    except (OSError, ValueError) as exc:
        out(f"{stem}: failed writes not replayable ({exc}); replay them by hand")
        return count_ops(failed) + count_ops(retry_path)
    main = Spool(_with(stem, ".jsonl"), head["tracking_uri"], head["experiment"])
    uri = tracking_uri or head["tracking_uri"]
    if main.has_pending():
        out(f"{head['experiment']} -> {uri}: deliver the spool before retrying failed writes")
        return main.failed_count()
    store = _store(uri, head["experiment"], spool_dir, main)
    before = main.failed_count()
    rounds = 2 if retry_path.exists() else 1  # an interrupted retry first, then the log
    try:
        for _ in range(rounds):
            retry = main.take_failed()
            if retry is not None:
                retry.drain(store._apply)  # no replay skipping: see the module docstring
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        out(f"{head['experiment']} -> {uri}: server unreachable, failed writes kept")
    left = main.failed_count()
    again = count_ops(failed)
    out(
        f"{head['experiment']} -> {uri}: retried {before} failed write(s): "
        f"{max(before - left, 0)} delivered, {again} failed again, left {left}"
    )
    return left
