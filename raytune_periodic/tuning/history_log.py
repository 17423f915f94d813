"""Every period's metrics of a trial, kept beside its checkpoints instead of inside them.

A trial re-sends its periods after a restore from its own checkpoint, so that periods whose
MLflow logging was lost with a killed driver are delivered (the MLflow callback skips the steps
it already has). Storing the whole history in every checkpoint made each checkpoint grow with
the periods run (O(P²) bytes over a run). Instead, each checkpoint writes one *segment*: the
periods run since the previous save, as a small JSON file in the trial's folder of Tune's
storage (``<trial>/rp_history/``), through the storage's own filesystem (a local or shared
folder, or S3). A restore to period ``p`` reads the segments back and keeps the periods
``< p`` (the later-written segment wins for a period run twice). Total size: O(P).

Without a Tune storage context (a trainable used directly, e.g. in tests) the segments stay in
memory.
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any

from raytune_periodic.protocol.trial_results import trial_folder

HISTORY_DIR = "rp_history"


class HistorySegments:
    """The periods of one trial since its last save, and its saved segments."""

    def __init__(self) -> None:
        self.pending: list[dict[str, float]] = []
        self._memory: dict[str, list[dict[str, float]]] = {}

    def add(self, records: list[dict[str, float]]) -> None:
        self.pending.extend(records)

    @staticmethod
    def _where(storage: Any) -> tuple[Any, str] | None:
        return trial_folder(storage, HISTORY_DIR)

    def save(self, storage: Any, period: int) -> None:
        """Write the pending periods as one segment (named by first and end period)."""
        if not self.pending:
            return
        first = int(self.pending[0]["period"])
        # named by write time first: a later segment overrides an earlier one on load
        name = f"seg-{time.time_ns():020d}-{first:09d}-{period:09d}.json"
        where = self._where(storage)
        if where is None:
            self._memory[name] = list(self.pending)
        else:
            fs, folder = where
            fs.create_dir(folder, recursive=True)
            with fs.open_output_stream(posixpath.join(folder, name)) as out:
                out.write(json.dumps(self.pending).encode())
        self.pending = []

    def load(self, storage: Any, upto: int) -> list[dict[str, float]]:
        """Every saved period ``< upto`` in period order (later segments win)."""
        segments: list[tuple[str, list[dict[str, float]]]] = []
        where = self._where(storage)
        if where is None:
            segments = sorted(self._memory.items())
        else:
            from pyarrow import fs as pafs

            fs, folder = where
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            for info in sorted(infos, key=lambda i: i.base_name):
                if info.base_name.startswith("seg-") and info.base_name.endswith(".json"):
                    with fs.open_input_stream(info.path) as src:
                        try:
                            segments.append((info.base_name, json.loads(src.read())))
                        except ValueError:
                            continue  # a segment torn by a crash: its periods are re-run
        by_period: dict[int, dict[str, float]] = {}
        for _, records in segments:
            for rec in records:
                if int(rec["period"]) < upto:
                    by_period[int(rec["period"])] = rec
        self.pending = []
        return [by_period[p] for p in sorted(by_period)]
