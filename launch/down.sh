#!/usr/bin/env bash
# Tear the Ray cluster of cluster.yaml down: ray down.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/down.sh [--config FILE] [--keep-min-workers]

Stop every node of the cluster with `ray down`. Copy the MLflow database off the head first
if it is SQLite (PostgreSQL and the S3 artifact store outlive the head only if external).

  --config FILE        cluster config (default: cluster.yaml)
  --keep-min-workers   pass --keep-min-workers to ray down
  -h, --help           show this help
USAGE
}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="$here/../cluster.yaml"
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --config) config="$2"; shift 2 ;;
        --keep-min-workers) extra+=("--keep-min-workers"); shift ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
exec ray down -y "$config" "${extra[@]}"
