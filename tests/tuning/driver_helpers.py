"""What the driver-kill tests share: the CLI as a subprocess, and a read-only peek at how many
periods of a method are in the SQLite MLflow store so far."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any


def method_steps(db: Path, method: str) -> int:
    """Logged ``val_f1`` points of ``method``'s trial runs (0 while the file is not readable)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute(
                "SELECT COUNT(*) FROM metrics m JOIN tags t ON m.run_uuid = t.run_uuid "
                "WHERE m.key = 'val_f1' AND t.key = 'rp.method' AND t.value = ?",
                (method,),
            ).fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def cli(*args: str, **kw: Any) -> subprocess.Popen:
    """``raytune-periodic ARGS`` as a subprocess, stdout and stderr together."""
    return subprocess.Popen(
        [sys.executable, "-m", "raytune_periodic.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )
