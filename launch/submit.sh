#!/usr/bin/env bash
# Submit a search to a running Ray cluster with `ray job submit` and a runtime_env.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/submit.sh CONFIG [--address URL] [--mlflow-uri URI] [--storage-path PATH]
                        [--env KEY=VALUE]... [--py-module PATH]... [--resume] [--no-wait]
                        [-- EXTRA_RUN_ARGS...]

Run `raytune-periodic run CONFIG` as a Ray job (the driver runs on the head). The working
directory is shipped as the job's runtime_env working_dir; the MLflow URI and the Tune storage
path are passed to the job as arguments and as MLFLOW_TRACKING_URI / RP_STORAGE_PATH. The
driver connects to the cluster through the RAY_ADDRESS that Ray sets for every job.

  CONFIG               experiment YAML (path relative to the repository root)
  --address URL        Ray dashboard address (default: $RAY_ADDRESS or http://127.0.0.1:8265,
                       e.g. through `ray attach cluster.yaml -p 8265`)
  --mlflow-uri URI     tracking URI as seen from the head (default: http://127.0.0.1:5000)
  --storage-path PATH  Tune storage shared by all nodes (s3://..., gs://..., or an NFS path)
  --env KEY=VALUE      an extra environment variable for the driver and every trial worker
                       (the runtime_env's env_vars; repeatable), e.g. CUDA_VISIBLE_DEVICES
  --py-module PATH     your own package folder (with __init__.py) of models, datasets,
                       regularizers, controllers, rewards or methods named by import path in
                       CONFIG: shipped to the driver and every trial worker (the runtime_env's
                       py_modules; repeatable). Installed packages need nothing.
  --resume             finish the last invocation (Tuner.restore)
  --no-wait            return after submission (follow with `ray job logs -f ID`)
  -h, --help           show this help

Ray token auth: the client needs RAY_AUTH_MODE=token and the cluster's token
(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN), as on the cluster. What is shipped:
the checkout without .git, .venv, runs/, MLflow's local stores (mlflow.db, mlruns, mlartifacts)
and launch/mlflow_server.sh's data directory (mlflow-server/); Ray also honours .gitignore.
USAGE
}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
mlflow_uri="http://127.0.0.1:5000"
storage=""
config=""
wait_flag=()
run_args=()
env_vars=()
py_modules=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --address) address="$2"; shift 2 ;;
        --mlflow-uri) mlflow_uri="$2"; shift 2 ;;
        --storage-path) storage="$2"; shift 2 ;;
        --env)
            if [[ "${2:-}" != *=* ]]; then echo "--env needs KEY=VALUE, got: ${2:-}" >&2; exit 2; fi
            env_vars+=("$2"); shift 2 ;;
        --py-module)
            if [[ ! -d "${2:-}" ]]; then
                echo "--py-module needs a package folder (Ray's job API ships folders), got: ${2:-}" >&2
                exit 2
            fi
            py_modules+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
        --resume) run_args+=("--resume"); shift ;;
        --no-wait) wait_flag=("--no-wait"); shift ;;
        --) shift; run_args+=("$@"); break ;;
        -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) if [[ -n "$config" ]]; then echo "one CONFIG only" >&2; exit 2; fi; config="$1"; shift ;;
    esac
done
if [[ -z "$config" ]]; then usage >&2; exit 2; fi
if [[ -z "$storage" ]]; then
    echo "--storage-path is required (shared storage: s3://, gs:// or NFS)" >&2
    exit 2
fi
env_json="$(RP_PY_MODULES="$(printf '%s\n' "${py_modules[@]}")" \
    "${PYTHON:-python}" - "$root" "$mlflow_uri" "$storage" "${env_vars[@]}" <<'PY'
import json, os, sys
root, uri, storage, *extra = sys.argv[1:]
env = {"MLFLOW_TRACKING_URI": uri, "RP_STORAGE_PATH": storage}
env.update(kv.split("=", 1) for kv in extra)
spec = {"working_dir": root, "env_vars": env,
        "excludes": [".git", ".venv", "runs", "mlartifacts", "mlflow.db", "mlflow-server",
                     "mlruns"]}
modules = [m for m in os.environ["RP_PY_MODULES"].splitlines() if m]
if modules:
    spec["py_modules"] = modules
print(json.dumps(spec))
PY
)"
exec ray job submit --address "$address" "${wait_flag[@]}" --runtime-env-json "$env_json" -- \
    python -m raytune_periodic.cli run "$config" --mlflow-uri "$mlflow_uri" \
    --storage-path "$storage" "${run_args[@]}"
