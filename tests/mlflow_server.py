"""Real tracking servers on this machine for tests (tracking outage, the 2-node cluster):
``mlflow server`` on 127.0.0.1 with a SQLite store, or with the cluster's stack (cluster.yaml):
a PostgreSQL backend store and an S3 artifact store (moto's S3 server on 127.0.0.1).

Everything is started and stopped by PID. PostgreSQL listens on a Unix socket only, in a
private directory, with peer authentication (no TCP port, no password), like the head's
``postgresql:///mlflow``; its binaries come from the ``pgserver`` wheel (or Debian's
``/usr/lib/postgresql/*/bin``). PostgreSQL refuses to run as root: as root it runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

#: S3 credentials for moto (any value works; none is real)
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(start: int, span: int = 130) -> int:
    """A port ``p`` with ``p``, ``p + 1`` and ``p + 100 .. p + span`` free on 127.0.0.1 (a local
    Ray cluster's port block), searched from ``start``."""
    for base in range(start, 60000, 1000 + span):
        socks = []
        try:
            for port in [base, base + 1, *range(base + 100, base + span)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def healthy(url: str) -> bool:
    return _answers(f"{url}/health")


def _stop_group(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL, group: bool = True
) -> None:
    """Signal a process started with ``start_new_session=True`` (and everything in its group,
    or only the process itself); SIGKILL to the group if it has not exited 30 s later."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1, started and stopped by PID. The backend store is
    SQLite in ``root`` unless ``backend_store_uri`` is given; ``env`` is added to the server's
    environment only (e.g. the S3 endpoint and credentials: clients never need them, artifacts
    go through the server)."""

    def __init__(
        self,
        root: Path,
        port: int,
        backend_store_uri: str | None = None,
        artifacts_destination: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.backend = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.artifacts = artifacts_destination or str(root / "artifacts")
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", self.backend,
               "--artifacts-destination", self.artifacts]  # fmt: skip
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not healthy(self.url):
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server never became healthy"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        _stop_group(self.proc)  # its own session: the server and its worker
        deadline = time.monotonic() + 30
        while healthy(self.url):
            assert time.monotonic() < deadline, "mlflow server still answers"
            time.sleep(0.1)

    def metric_rows(self, key: str) -> int:
        """Rows of metric ``key`` in the server's database, read directly (0 before the schema
        exists): progress that does not depend on the server answering."""
        if self.backend.startswith("sqlite:///"):
            import sqlite3

            db = self.backend.removeprefix("sqlite:///")
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                    row = con.execute("SELECT COUNT(*) FROM metrics WHERE key = ?", (key,))
                    return int(row.fetchone()[0])
            except sqlite3.OperationalError:
                return 0
        import psycopg

        try:
            with psycopg.connect(self.backend, connect_timeout=5) as con:
                row = con.execute("SELECT COUNT(*) FROM metrics WHERE key = %s", (key,))
                return int(row.fetchone()[0])  # type: ignore[index]
        except psycopg.Error:  # no such table yet (the server is migrating the schema)
            return 0

    def stored_artifacts(self) -> list[str]:
        """The files in the artifact store, relative to ``--artifacts-destination``, read from
        the store itself (the local folder, or the S3 bucket's prefix), not through MLflow."""
        if not self.artifacts.startswith("s3://"):
            root = Path(self.artifacts)
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        bucket, _, prefix = self.artifacts.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        pages = (
            s3_client(self.env["MLFLOW_S3_ENDPOINT_URL"])
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix)
        )
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        return sorted(k.removeprefix(prefix) for k in keys)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for the moto server at ``endpoint`` (fake credentials)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
    )


# ----------------------------------------------------------------------------- PostgreSQL
def postgres_bin_dir() -> Path | None:
    """The folder with ``initdb`` and ``postgres``: ``$RP_PG_BIN``, the ``pgserver`` wheel's,
    Debian's newest ``/usr/lib/postgresql/N/bin``, or the ``PATH``'s; None if there is none."""
    candidates = [Path(os.environ["RP_PG_BIN"])] if os.environ.get("RP_PG_BIN") else []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")

    def version(p: Path) -> int:
        return int(p.parent.name) if p.parent.name.isdigit() else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)  # type: ignore[arg-type]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            return folder
    return None


def _postgres_user() -> dict[str, Any]:
    """``subprocess`` arguments that run PostgreSQL's programs as ``nobody`` under root (it
    refuses to run as root); none otherwise."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def runnable_postgres(bin_dir: Path, spare: Path) -> Path:
    """``bin_dir`` if PostgreSQL's user can run its programs, else a copy of pgserver's install
    under ``spare`` (a folder that user can reach): under root, a checkout in a private folder
    (``/root/...``) holds binaries that ``nobody`` cannot execute."""
    run_as = _postgres_user()
    try:
        for prog in ("postgres", "initdb"):
            subprocess.run(
                [str(bin_dir / prog), "--version"],
                check=True, capture_output=True, timeout=60, **run_as,
            )  # fmt: skip
        return bin_dir
    except (OSError, subprocess.SubprocessError):
        if not run_as:
            raise
    install = bin_dir.parent  # .../site-packages/pgserver/pginstall
    copy = spare / "pgserver" / "pginstall"
    if (copy / "bin" / "postgres").exists():  # copied before
        return copy / "bin"
    for sub in ("bin", "lib", "share"):
        shutil.copytree(install / sub, copy / sub)
    libs = install.parent.parent / "pgserver.libs"  # initdb's RUNPATH: $ORIGIN/../../../
    if libs.is_dir():
        shutil.copytree(libs, spare / "pgserver.libs")
    return copy / "bin"


class LocalPostgres:
    """A throwaway PostgreSQL server: its own data directory, a Unix socket in a private
    directory (mode 700, no TCP at all), peer authentication (the connecting user's name is the
    role: no password). ``start``/``stop`` by PID; ``create_database`` gives a fresh database's
    URI for MLflow (``postgresql:///NAME?host=SOCKET_DIR&port=PORT``)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = free_port()  # names the socket file; nothing listens on it
        self.role = pwd.getpwuid(os.geteuid()).pw_name
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as = _postgres_user()

    def start(self, timeout: float = 60) -> None:
        # short (the socket path must stay below 108 bytes) and outside pytest's tmp folders,
        # which are private to root: the server's own user must reach it
        self.dir = Path(tempfile.mkdtemp(prefix="rp-pg-", dir="/tmp"))
        self.bin = runnable_postgres(self.bin, self.dir / "install")
        if self._run_as:
            os.chown(self.dir, self._run_as["user"], self._run_as["group"])
        data, log = self.dir / "data", self.dir / "postgres.log"
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(data), "-U", self.role, "--auth-local=peer",
             "--auth-host=reject", "--encoding=UTF8", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, timeout=120, **self._run_as,
        )  # fmt: skip
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-k", str(self.dir), "-c", "listen_addresses=",
                 "-c", "unix_socket_permissions=0700",
                 # a test database: durability is not what is tested here
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                stdout=out, stderr=out, start_new_session=True, **self._run_as,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._admin("SELECT 1")
                return
            except Exception:  # not accepting connections yet
                assert self.proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "PostgreSQL never accepted connections"
                time.sleep(0.1)

    def uri(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.dir}&port={self.port}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True, connect_timeout=5) as con:
            con.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str) -> str:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        self._admin(f"CREATE DATABASE {name}")
        return self.uri(name)

    def stop(self) -> None:
        # SIGINT to the postmaster: PostgreSQL's fast shutdown (it stops its own processes)
        _stop_group(self.proc, signal.SIGINT, group=False)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- S3 (moto)
class MotoS3:
    """moto's S3 server on 127.0.0.1 (in memory), started and stopped by PID."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this S3 (MLflow's server reads the endpoint)."""
        return {**FAKE_AWS, "MLFLOW_S3_ENDPOINT_URL": self.url}

    def start(self, timeout: float = 60) -> None:
        log = (self.root / "moto.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, **FAKE_AWS}, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _answers(f"{self.url}/moto-api/"):
            assert self.proc.poll() is None, (self.root / "moto.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "moto's S3 server never answered"
            time.sleep(0.1)

    def create_bucket(self, bucket: str) -> None:
        s3_client(self.url).create_bucket(Bucket=bucket)

    def stop(self) -> None:
        _stop_group(self.proc)


# ----------------------------------------------------------------------------- the stack
class PostgresS3:
    """cluster.yaml's tracking stack on this machine: one PostgreSQL and one S3 (moto) per test
    session; ``server()`` gives an ``MlflowServer`` on a fresh database and a fresh prefix of
    the bucket, so tests share the two services but never each other's data."""

    bucket = "rp-mlflow"

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root = root
        self.postgres = LocalPostgres(bin_dir)
        self.s3 = MotoS3(root)
        self._n = 0

    def start(self) -> None:
        try:
            self.postgres.start()
            self.s3.start()
            self.s3.create_bucket(self.bucket)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.s3.stop()
        self.postgres.stop()

    def server(self, root: Path, name: str) -> MlflowServer:
        """An (unstarted) MLflow server over a new database and the prefix ``NAME-N/``."""
        self._n += 1
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] or "db"
        uri = self.postgres.create_database(f"{slug}_{self._n}")
        prefix = f"{slug.replace('_', '-')}-{self._n}"
        return MlflowServer(
            root, free_port(), backend_store_uri=uri,
            artifacts_destination=f"s3://{self.bucket}/{prefix}", env=self.s3.env,
        )  # fmt: skip
