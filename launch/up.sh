#!/usr/bin/env bash
# Bring the Ray cluster of cluster.yaml up (or update it): ray up.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/up.sh [--config FILE] [-- EXTRA_RAY_UP_ARGS...]

Start (or update) the Ray cluster described by cluster.yaml with `ray up`.
The head runs Ray (dashboard on 127.0.0.1:8265) and the MLflow server (127.0.0.1:5000);
reach both with:  RAY_AUTH_MODE=token ray attach cluster.yaml -p 8265 -p 5000

Ray token authentication: the cluster's token is ~/.ray/auth_token on this machine (generated
here, owner-only, when missing); cluster.yaml copies it to every node and starts Ray with
RAY_AUTH_MODE=token. Clients (ray job submit, launch/submit.sh, the dashboard's login) use the
same token: export RAY_AUTH_MODE=token. A new token takes effect at the next `ray up`.

  --config FILE   cluster config (default: cluster.yaml next to this directory)
  -h, --help      show this help

Environment: cloud credentials as the provider expects (AWS profile, gcloud). No database
password: MLflow's PostgreSQL on the head uses peer authentication.
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
token="$HOME/.ray/auth_token"
if [[ ! -s "$token" ]]; then
    mkdir -p "$(dirname "$token")"
    (umask 077 && "${PYTHON:-python}" -c \
        'import secrets; print(secrets.token_hex(32), end="")' >"$token")
    echo "generated the cluster's Ray token: $token" >&2
fi
chmod 600 "$token"
exec ray up -y "$config" "${extra[@]}"
