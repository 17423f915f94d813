#!/usr/bin/env bash
# Start an MLflow tracking server: loopback only, or beyond it only with authentication.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/mlflow_server.sh [--host HOST] [--port PORT] [--data-dir DIR]
                               [--backend-store-uri URI] [--artifacts-destination URI]
                               [--allowed-hosts LIST] [--auth --admin-password-file FILE]
                               [-- EXTRA_MLFLOW_SERVER_ARGS...]

Run `mlflow server` in the foreground with safe, fast defaults:
  --host HOST                  bind address (default 127.0.0.1: other machines come through an
                               SSH tunnel). Any other address needs --auth (and --allowed-hosts)
  --port PORT                  default 5000
  --data-dir DIR               the server's local state: the default SQLite store, artifacts and
                               the auth database (default $PWD/mlflow-server; git-ignored and
                               never shipped by launch/submit.sh)
  --backend-store-uri URI      default sqlite:///DIR/mlflow.db. PostgreSQL without a password in
                               the URI: postgresql:///mlflow (peer authentication over the Unix
                               socket) or postgresql://mlflow@HOST:5432/mlflow with the password
                               in ~/.pgpass (mode 600). A URI with a password is refused: it
                               would be on the command line, visible to every user in `ps`
  --artifacts-destination URI  default DIR/artifacts (or s3://bucket/prefix)
  --allowed-hosts LIST         host-check allow list (comma separated, e.g. "10.0.0.*,head:5000")
  --auth                       MLflow's basic-auth app (--app-name basic-auth, needs
                               `pip install mlflow[auth]`): every request needs a user. The auth
                               database and the CSRF key live in DIR (owner-only files)
  --admin-password-file FILE   with --auth: the password of user `admin`, created on the first
                               start (later starts keep the stored one; rotate it with MLflow's
                               update-password API). The file must be readable by its owner only;
                               the password reaches MLflow through the environment
                               (MLFLOW_AUTH_ADMIN_PASSWORD), never a command line. Clients pass
                               MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
  -h, --help                   show this help

Basic auth sends the password with every request: beyond loopback, keep the server inside a
private network (or behind TLS). MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false and --workers 1 make
it healthy in seconds; poll http://HOST:PORT/health before use.
USAGE
}
host="127.0.0.1"
port="5000"
data="$PWD/mlflow-server"
backend=""
artifacts=""
auth=0
password_file=""
allowed=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --host) host="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --backend-store-uri) backend="$2"; shift 2 ;;
        --artifacts-destination) artifacts="$2"; shift 2 ;;
        --allowed-hosts) allowed=("--allowed-hosts" "$2"); shift 2 ;;
        --auth) auth=1; shift ;;
        --admin-password-file) password_file="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
fail() { echo "mlflow_server.sh: $*" >&2; exit 2; }

case "$host" in
    127.*|localhost|::1) ;;
    *) [[ $auth == 1 ]] || fail "--host $host leaves loopback: add --auth --admin-password-file \
FILE (MLflow basic auth), or keep 127.0.0.1 and use an SSH tunnel" ;;
esac
for uri in "$backend" "$artifacts"; do
    if [[ "$uri" =~ ^[a-z0-9+]+://[^/@]*:[^/@]*@ ]]; then
        fail "a password in a URI is visible on the command line: use peer authentication \
(postgresql:///mlflow) or ~/.pgpass"
    fi
done

mkdir -p "$data"
data="$(cd "$data" && pwd)"
backend="${backend:-sqlite:///$data/mlflow.db}"
artifacts="${artifacts:-$data/artifacts}"
if [[ "$artifacts" != *://* ]]; then mkdir -p "$artifacts"; fi
app=()
if [[ $auth == 1 ]]; then
    [[ -n "$password_file" ]] || fail "--auth needs --admin-password-file FILE"
    [[ -s "$password_file" ]] || fail "$password_file: missing or empty"
    if [[ -n "$(find "$password_file" -perm /077 2>/dev/null)" ]]; then
        fail "$password_file is readable by others: chmod 600 it"
    fi
    umask 077
    if [[ ! -s "$data/flask_secret_key" ]]; then
        "${PYTHON:-python}" -c 'import secrets; print(secrets.token_hex(32))' \
            >"$data/flask_secret_key"
    fi
    cat >"$data/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$data/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    MLFLOW_AUTH_ADMIN_PASSWORD="$(head -n 1 "$password_file")"
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$data/flask_secret_key")"
    export MLFLOW_AUTH_CONFIG_PATH="$data/basic_auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    app=(--app-name basic-auth)
elif [[ -n "$password_file" ]]; then
    fail "--admin-password-file only goes with --auth"
fi
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec mlflow server --host "$host" --port "$port" --workers 1 \
    --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
    "${app[@]}" "${allowed[@]}" "${extra[@]}"
