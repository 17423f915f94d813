#!/usr/bin/env bash
# Bring the Ray cluster of cluster.yaml up (or update it): ray up.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/up.sh [--config FILE] [-- EXTRA_RAY_UP_ARGS...]

Start (or update) the Ray cluster described by cluster.yaml with `ray up`.
The head runs Ray (dashboard on 127.0.0.1:8265) and the MLflow server (127.0.0.1:5000);
reach both with:  ray attach cluster.yaml -p 8265 -p 5000

  --config FILE   cluster config (default: cluster.yaml next to this directory)
  -h, --help      show this help

Environment: RP_MLFLOW_DB_PASSWORD (PostgreSQL password for MLflow, required by the head
setup of cluster.yaml); cloud credentials as the provider expects (AWS profile, gcloud).
USAGE
}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="$here/../cluster.yaml"
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --config) config="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
exec ray up -y "$config" "${extra[@]}"
