"""The driver's state of one experiment under ``<storage>/<name>/``: which invocation it is,
which Tuners finished (or errored), and a lock so that two drivers never share it.

``rp_state.json`` is replaced atomically and durably. ``rp_driver.lock`` holds the pid and host
of the running driver (created with ``O_EXCL``); a lock whose process is gone (a killed driver)
is taken over, one whose process lives is a one-line error.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from raytune_periodic.durable import atomic_write_text
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.trial_results import DRIVER_STATE_FILE

LOCK_FILE = "rp_driver.lock"
DONE, ERRORED = "done", "errored"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DriverState:
    """Load, lock and save the state of the experiment folder ``exp_dir``."""

    def __init__(self, exp_dir: Path) -> None:
        self.dir = exp_dir
        self.path = exp_dir / DRIVER_STATE_FILE
        self.lock_path = exp_dir / LOCK_FILE
        self.data: dict[str, Any] = {}
        self._locked = False

    def acquire(self) -> None:
        """Take the experiment's lock; a live driver holding it is a one-line error."""
        self.dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._holder()
                if other and other.get("host") == me["host"] and _alive(int(other["pid"])):
                    raise ConfigError(
                        "run",
                        f"another driver (pid {other['pid']}) is running experiment "
                        f"{self.dir.name!r} in {self.dir.parent}; wait for it or stop it",
                    ) from None
                if other and other.get("host") != me["host"]:
                    raise ConfigError(
                        "run",
                        f"experiment {self.dir.name!r} is locked by a driver on "
                        f"{other.get('host')} (pid {other.get('pid')}); remove "
                        f"{self.lock_path} if that driver is gone",
                    ) from None
                self.lock_path.unlink(missing_ok=True)  # its driver is gone: take it over
                continue
            os.write(fd, json.dumps(me).encode())
            os.close(fd)
            self._locked = True
            return

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.lock_path.read_text())
            return data if isinstance(data, dict) and "pid" in data else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._locked:
            self.lock_path.unlink(missing_ok=True)
            self._locked = False

    def begin(self, resume: bool, restart: bool) -> dict[str, Any]:
        """The state of this invocation: resumed, or new (refusing to drop an unfinished one)."""
        old = self._load()
        if resume:
            if not old:
                raise ConfigError("--resume", f"no previous run of {self.dir.name!r} here")
            self.data = old
        else:
            if old and not old.get("finished") and not restart:
                raise ConfigError(
                    "run",
                    f"experiment {self.dir.name!r} has an unfinished invocation "
                    f"{old.get('invocation_id', '?')[:8]} in {self.dir.parent}: --resume to "
                    f"finish it, or --restart to start a new one",
                )
            self.data = {"invocation_id": uuid.uuid4().hex, "tuners": {}}
        return self.data

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except ValueError:
            raise ConfigError("--resume", f"{self.path} is not valid JSON") from None
        return data if isinstance(data, dict) else {}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2))

    def tuner_status(self, key: str) -> str | None:
        return self.data.setdefault("tuners", {}).get(key)

    def set_tuner(self, key: str, status: str) -> None:
        self.data.setdefault("tuners", {})[key] = status
        self.save()
