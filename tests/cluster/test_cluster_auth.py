"""Security of the cluster path: Ray token authentication really on (cluster.yaml, and a real
2-node local cluster that refuses clients without the token), cluster.yaml's network, instance
and IAM settings, the MLflow server leaving loopback only with authentication, no database
password on a command line, and the server's data directory neither committed nor shipped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent
while not (ROOT / "cluster.yaml").exists():
    ROOT = ROOT.parent
LAUNCH = ROOT / "launch"
BIN = str(Path(sys.executable).parent)


def _cluster() -> tuple[dict[str, Any], dict[str, Any]]:
    """cluster.yaml and its commented-out on-prem variant."""
    text = (ROOT / "cluster.yaml").read_text()
    block = text.split("# --- on-prem ---\n")[1].split("# --- end on-prem ---")[0]
    onprem = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    return yaml.safe_load(text), onprem


def _fake_bin(tmp: Path, name: str) -> Path:
    """A stand-in for a command that records its arguments (one JSON list per call)."""
    folder = tmp / "fakebin"
    folder.mkdir(exist_ok=True)
    log = tmp / f"{name}.calls"
    script = folder / name
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(0o755)
    return log


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    path = f"{tmp / 'fakebin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "PYTHON": sys.executable, **extra}


# ----------------------------------------------------------------------------- cluster.yaml
@pytest.mark.parametrize("variant", ["aws", "onprem"])
def test_cluster_yaml_starts_every_node_with_token_auth(variant: str) -> None:
    cfg = _cluster()[0 if variant == "aws" else 1]
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for cmd in ray_starts:  # `ray start --head` leaves auth off without it (Ray 2.60)
        assert cmd.index("RAY_AUTH_MODE=token") < cmd.index("ray start"), cmd
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["initialization_commands"])
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cfg["setup_commands"])


def test_cluster_yaml_network_instances_and_roles_are_locked_down() -> None:
    cfg, _ = _cluster()
    text = (ROOT / "cluster.yaml").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "0.0.0.0/0" not in code
    # our own security group on every node type: Ray then creates none (its own would open
    # SSH to 0.0.0.0/0); its provider.security_group rules would only apply to a created one
    assert "security_group" not in cfg["provider"]
    nodes = cfg["available_node_types"]
    for name, node in nodes.items():
        conf = node["node_config"]
        assert conf["SecurityGroupIds"], name
        assert conf["MetadataOptions"]["HttpTokens"] == "required", name  # IMDSv2 only
        for dev in conf["BlockDeviceMappings"]:
            assert dev["Ebs"]["Encrypted"] is True, (name, dev)
    head = nodes[cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    worker = nodes["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    assert head != worker
    policy = json.loads((LAUNCH / "iam" / "worker-policy.json").read_text())
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert all(a.startswith("s3:") and "*" not in a for a in actions), st
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if actions == ["s3:ListBucket"]:
            assert set(st["Condition"]["StringLike"]["s3:prefix"]) <= {
                "ray_results",
                "ray_results/*",
            }
        else:
            assert all(r.endswith("/ray_results/*") for r in resources), st
    head_policy = json.loads((LAUNCH / "iam" / "head-policy.json").read_text())
    passes = [s for s in head_policy["Statement"] if s["Action"] == "iam:PassRole"]
    assert passes and all(s["Resource"].endswith("role/raytune-periodic-worker") for s in passes)


def test_no_database_password_on_any_command_line(tmp_path: Path) -> None:
    cfg, onprem = _cluster()
    for conf in (cfg, onprem):
        commands = " ".join(
            " ".join(conf.get(k) or [])
            for k in ("head_setup_commands", "head_start_ray_commands", "setup_commands")
        )
        assert not re.search(r"PASSWORD|://[^/@\s]*:[^/@\s]*@", commands), commands
    assert "postgresql:///mlflow" in " ".join(cfg["head_start_ray_commands"])  # peer auth
    calls = _fake_bin(tmp_path, "mlflow")
    uri = "postgresql://mlflow:hunter2secret@db:5432/mlflow"
    out = subprocess.run(
        [str(LAUNCH / "mlflow_server.sh"), "--data-dir", str(tmp_path / "d"),
         "--backend-store-uri", uri],
        env=_env(tmp_path), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "pgpass" in out.stderr
    assert "hunter2secret" not in out.stderr and not calls.exists()


# ----------------------------------------------------------------------------- MLflow server
def test_mlflow_server_leaves_loopback_only_with_auth(tmp_path: Path) -> None:
    calls = _fake_bin(tmp_path, "mlflow")
    script, data = str(LAUNCH / "mlflow_server.sh"), ["--data-dir", str(tmp_path / "d")]
    secret = tmp_path / "admin_password"
    secret.write_text("correct-horse-battery-1")
    secret.chmod(0o644)
    refused = [
        ["--host", "0.0.0.0"],  # no authentication
        ["--host", "10.0.0.5", "--auth"],  # no password file
        ["--host", "0.0.0.0", "--auth", "--admin-password-file", str(secret)],  # others read it
    ]
    for args in refused:
        out = subprocess.run(
            [script, *data, *args], env=_env(tmp_path), capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 2, (args, out.stderr)
    assert not calls.exists()  # nothing was started
    secret.chmod(0o600)
    ok = subprocess.run(
        [script, *data, "--host", "0.0.0.0", "--auth", "--admin-password-file", str(secret),
         "--allowed-hosts", "10.0.0.*"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    (argv,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert "correct-horse-battery-1" not in " ".join(argv)  # via the environment only
    ini = tmp_path / "d" / "basic_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert f"sqlite:///{tmp_path / 'd'}/basic_auth.db" in ini.read_text()


def test_server_data_dir_is_neither_committed_nor_shipped(tmp_path: Path) -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "mlflow-server/mlflow.db"], cwd=ROOT, timeout=30
    )
    assert ignored.returncode == 0, "mlflow-server/ is not git-ignored"
    calls = _fake_bin(tmp_path, "ray")
    out = subprocess.run(
        [str(LAUNCH / "submit.sh"), "configs/quickstart.yaml", "--storage-path", "/nfs/r"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (argv,) = [json.loads(line) for line in calls.read_text().splitlines()]
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert {"mlflow-server", "mlflow.db", "mlruns", ".venv"} <= set(runtime_env["excludes"])
    rsync = yaml.safe_load((ROOT / "cluster.yaml").read_text())["rsync_exclude"]
    assert "mlflow-server" in rsync


def test_up_sh_makes_an_owner_only_token(tmp_path: Path) -> None:
    calls = _fake_bin(tmp_path, "ray")
    home = tmp_path / "home"
    home.mkdir()
    out = subprocess.run(
        [str(LAUNCH / "up.sh")], env=_env(tmp_path, HOME=str(home)), capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = home / ".ray" / "auth_token"
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    (argv,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argv[:2] == ["up", "-y"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth is not None:
        import base64

        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:  # not listening yet
        return 0


@pytest.mark.integration
def test_mlflow_basic_auth_server_refuses_anonymous_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth]")
    secret = tmp_path / "admin_password"
    secret.write_text("correct-horse-battery-1\n")
    secret.chmod(0o600)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(LAUNCH / "mlflow_server.sh"), "--port", str(port), "--data-dir",
         str(tmp_path / "d"), "--auth", "--admin-password-file", str(secret)],
        env=_env(tmp_path), stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _status(f"{url}/health") != 200:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server never became healthy"
            time.sleep(0.5)
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search) == 401
        assert _status(search, ("admin", "wrong")) == 401
        assert _status(search, ("admin", "correct-horse-battery-1")) == 200
        for pid in subprocess.run(
            ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True, timeout=10
        ).stdout.split():
            with contextlib.suppress(FileNotFoundError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                assert b"correct-horse" not in cmdline
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "correct-horse-battery-1")
        from raytune_periodic.tracking.mlflow_store import MlflowStore

        with MlflowStore(url, "auth-test", spool_dir=tmp_path / "spool") as store:
            inv = store.start_invocation("inv", {"name": "auth-test"}, {"seeds": "0"})
        assert store.client.get_run(inv).data.tags["rp.kind"] == "invocation"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# ----------------------------------------------------------------------------- Ray cluster
def _free_base_port(span: int = 130) -> int:
    from mlflow_server import free_port_block

    return free_port_block(31000, span)  # each test file its own range: no overlap


@pytest.fixture
def auth_cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A head and one worker raylet from launch/local_cluster.sh with a token of its own
    (RAY_AUTH_TOKEN_PATH, created by the script), stopped by PID."""
    token = tmp_path / "token" / "auth_token"
    env = {**_env(tmp_path), "RAY_AUTH_TOKEN_PATH": str(token)}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        env.pop(key, None)
    port = _free_base_port()
    state = Path(tempfile.mkdtemp(prefix="rpa-", dir="/tmp"))  # short: AF_UNIX paths
    args = ["--dir", str(state), "--port", str(port), "--dashboard-port", str(port + 120)]
    script = str(LAUNCH / "local_cluster.sh")
    try:
        out = subprocess.run(
            [script, "start", "--workers", "1", *args], env=env, capture_output=True,
            text=True, timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "token authentication on" in out.stdout
        yield {"env": env, "token": token, "gcs": f"127.0.0.1:{port}", "port": port,
               "dashboard": f"http://127.0.0.1:{port + 120}"}  # fmt: skip
    finally:
        subprocess.run([script, "stop", *args], env=env, timeout=120, check=False)
        assert not list(state.glob("*.pid"))
        shutil.rmtree(state, ignore_errors=True)


CLIENT = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
print("NODES", sum(n["Alive"] for n in ray.nodes()))
"""
RAY_CLIENT = """
import sys, ray
ray.init(sys.argv[1], logging_level="ERROR")
print("NODES", len(ray.nodes()))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_local_cluster_refuses_clients_without_the_token(
    auth_cluster: dict[str, Any], tmp_path: Path
) -> None:
    token_file: Path = auth_cluster["token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    home = tmp_path / "stranger"  # no ~/.ray/auth_token to fall back on
    home.mkdir()
    base = {k: v for k, v in auth_cluster["env"].items() if not k.startswith("RAY_AUTH")}
    gcs, client_port = auth_cluster["gcs"], auth_cluster["port"] + 1
    clients = {  # who: (script, address, environment)
        "with token": (CLIENT, gcs, {**base, "RAY_AUTH_MODE": "token",
                                     "RAY_AUTH_TOKEN_PATH": str(token_file)}),
        "no token": (CLIENT, gcs, {**base, "HOME": str(home)}),
        "wrong token": (CLIENT, gcs, {**base, "HOME": str(home), "RAY_AUTH_MODE": "token",
                                      "RAY_AUTH_TOKEN": "0" * 64}),
        "ray client, no token": (RAY_CLIENT, f"ray://127.0.0.1:{client_port}",
                                 {**base, "HOME": str(home)}),
    }  # fmt: skip
    procs = {
        who: subprocess.Popen(
            [sys.executable, "-c", code, addr],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for who, (code, addr, env) in clients.items()
    }
    outs = {}
    for who, proc in procs.items():
        try:
            outs[who] = (proc.communicate(timeout=120)[0], proc.returncode)
        except subprocess.TimeoutExpired:
            proc.kill()
            outs[who] = (proc.communicate()[0], None)
    out, rc = outs["with token"]
    assert rc == 0 and "NODES 2" in out, out[-2000:]
    for who in ("no token", "wrong token"):
        out, rc = outs[who]
        assert rc != 0 and "NODES" not in out, (who, out[-2000:])
        assert "Authentication token is missing or incorrect" in out, (who, out[-2000:])
    out, rc = outs["ray client, no token"]
    assert rc != 0 and "NODES" not in out, out[-2000:]
    # the jobs API (job submission runs code on the cluster) wants the token too
    jobs = f"{auth_cluster['dashboard']}/api/jobs/"
    for header, expected in ((None, 401), ("Bearer " + "0" * 64, 403), ("Bearer " + token, 200)):
        req = urllib.request.Request(jobs)
        if header:
            req.add_header("Authorization", header)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == expected, (header and header[:10], status)
