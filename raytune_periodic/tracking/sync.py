"""``raytune-periodic mlflow-sync``: deliver what was spooled while the server was down."""

from __future__ import annotations

import os
from collections.abc import Callable

from raytune_periodic.tracking.spool import Spool


def sync_spools(
    spool_dir: str | os.PathLike[str] | None,
    tracking_uri: str | None = None,
    *,
    retry_failed: bool = False,
    out: Callable[[str], object] = print,
) -> int:
    """Deliver every spool file under ``spool_dir``; the number of writes still left.

    ``tracking_uri`` overrides the URI each spool was written for. ``retry_failed`` also
    replays the writes the server rejected earlier (the failed-writes log).
    """
    from raytune_periodic.tracking import MlflowStore

    files = Spool.files(spool_dir)
    left = 0
    for path in files:
        head = Spool.header(path)
        uri = tracking_uri or head["tracking_uri"]
        store = MlflowStore(uri, head["experiment"], synchronous=True, spool_dir=spool_dir)
        store.spool = Spool(path, uri, head["experiment"])
        before = store.spool.pending()
        remaining = store.sync()
        left += remaining
        out(f"{head['experiment']} -> {uri}: delivered {before - remaining}, left {remaining}")
    if not files:
        out("nothing spooled")
    return left
