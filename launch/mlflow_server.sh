#!/usr/bin/env bash
# Start an MLflow tracking server bound to 127.0.0.1 (one worker, no job runner).
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/mlflow_server.sh [--host HOST] [--port PORT] [--backend-store-uri URI]
                               [--artifacts-destination URI] [--allowed-hosts LIST]
                               [-- EXTRA_MLFLOW_SERVER_ARGS...]

Run `mlflow server` in the foreground with safe, fast defaults:
  --host HOST                  bind address (default 127.0.0.1; other nodes reach it through an
                               SSH tunnel; with 0.0.0.0 also pass --allowed-hosts)
  --port PORT                  default 5000
  --backend-store-uri URI      default sqlite:///$PWD/mlflow-server/mlflow.db
                               (PostgreSQL: postgresql://mlflow:$PW@127.0.0.1:5432/mlflow, with
                               the password from the environment)
  --artifacts-destination URI  default $PWD/mlflow-server/artifacts (or s3://bucket/prefix)
  --allowed-hosts LIST         host-check allow list (comma separated, e.g. "10.0.0.*,head:5000")
  -h, --help                   show this help

MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false and --workers 1 make it healthy in seconds; poll
http://HOST:PORT/health before use.
USAGE
}
host="127.0.0.1"
port="5000"
backend="sqlite:///$PWD/mlflow-server/mlflow.db"
artifacts="$PWD/mlflow-server/artifacts"
allowed=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --host) host="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --backend-store-uri) backend="$2"; shift 2 ;;
        --artifacts-destination) artifacts="$2"; shift 2 ;;
        --allowed-hosts) allowed=("--allowed-hosts" "$2"); shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ "$backend" == sqlite:///* ]]; then mkdir -p "$(dirname "${backend#sqlite:///}")"; fi
if [[ "$artifacts" != *://* ]]; then mkdir -p "$artifacts"; fi
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec mlflow server --host "$host" --port "$port" --workers 1 \
    --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
    "${allowed[@]}" "${extra[@]}"
