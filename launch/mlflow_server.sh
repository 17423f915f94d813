#!/usr/bin/env bash
# Start an MLflow tracking server: loopback only, or beyond it only with authentication.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/mlflow_server.sh [--host HOST] [--port PORT] [--data-dir DIR]
                               [--backend-store-uri URI] [--artifacts-destination URI]
                               [--postgres-s3 [--s3-port PORT]]
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
  --postgres-s3                the cluster's tracking stack on this machine (cluster.yaml's
                               head: PostgreSQL store, S3 artifacts), for trying that layout on
                               a laptop. Starts PostgreSQL (data in DIR/postgres, kept across
                               starts; a Unix socket in that owner-only folder and no TCP port;
                               peer authentication: no password) with a database `mlflow`,
                               moto's S3 server on 127.0.0.1 with a bucket `mlflow` (unless
                               --artifacts-destination names a real bucket), then MLflow on
                               both. moto keeps objects IN MEMORY: its artifacts are gone when
                               the script stops. Ctrl-C or SIGTERM stops all three. Needs the
                               test extra (`make install`: pgserver's PostgreSQL binaries, moto;
                               or Debian's postgresql, PG_BIN=/usr/lib/postgresql/N/bin). As
                               root, PostgreSQL runs as `nobody` (it refuses root)
  --s3-port PORT               moto's port with --postgres-s3 (default: PORT + 1)
  --allowed-hosts LIST         host-check allow list (comma separated, e.g. "10.0.0.*,head:5000")
  --auth                       MLflow's basic-auth app (--app-name basic-auth, needs Flask-WTF:
                               the package's `server` extra): every request needs a user. The auth
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
stack=0
s3_port=""
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
        --postgres-s3) stack=1; shift ;;
        --s3-port) s3_port="$2"; shift 2 ;;
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

if [[ $stack == 1 && -n "$backend" ]]; then
    fail "--postgres-s3 starts its own PostgreSQL: drop --backend-store-uri"
fi
if [[ -n "$s3_port" && ( $stack == 0 || -n "$artifacts" ) ]]; then
    fail "--s3-port only goes with --postgres-s3 and no --artifacts-destination"
fi

mkdir -p "$data"
data="$(cd "$data" && pwd)"
py="${PYTHON:-python}"
pids=()  # what --postgres-s3 started, in order: "SIGNAL:PID"
stop_stack() {
    local i sig pid
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # MLflow first, PostgreSQL last
        sig="${pids[i]%%:*}" pid="${pids[i]#*:}"
        kill "-$sig" "$pid" 2>/dev/null || true  # a negative PID: its whole process group
        wait "${pid#-}" 2>/dev/null || true
    done
    pids=()
}
if [[ $stack == 1 ]]; then
    # PostgreSQL: pgserver's binaries (the test extra), else Debian's, else the PATH's
    pg="${PG_BIN:-}"
    if [[ -z "$pg" ]]; then
        pg="$("$py" -c 'import importlib.util as u, pathlib as p
s = u.find_spec("pgserver")
print(p.Path(list(s.submodule_search_locations)[0], "pginstall", "bin") if s else "")' \
            2>/dev/null || true)"
    fi
    if [[ -z "$pg" || ! -x "$pg/postgres" ]]; then
        pg="$(find /usr/lib/postgresql -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)"
    fi
    if [[ -z "$pg" || ! -x "$pg/postgres" ]] && command -v initdb >/dev/null; then
        pg="$(dirname "$(readlink -f "$(command -v initdb)")")"
    fi
    [[ -n "$pg" && -x "$pg/postgres" ]] || fail "no PostgreSQL: pip install -c constraints.txt \
pgserver (the test extra), or apt-get install postgresql, or set PG_BIN"
    pgdata="$data/postgres"
    # the Unix socket lives in the data folder (owner-only): its path must fit in 107 bytes
    (( ${#pgdata} + 18 < 108 )) || fail "$pgdata is too long for PostgreSQL's Unix socket: \
use a shorter --data-dir"
    as_pg=()
    if [[ $EUID == 0 ]]; then  # "root" execution of the PostgreSQL server is not permitted
        command -v setpriv >/dev/null || fail "as root, PostgreSQL needs setpriv (util-linux)"
        as_pg=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups)
    fi
    if [[ ! -s "$pgdata/PG_VERSION" ]]; then
        [[ -d "$pgdata" ]] || mkdir -m 700 "$pgdata"
        if [[ $EUID == 0 ]]; then chown nobody: "$pgdata"; fi
        # the connecting user (this one) is the superuser role: peer authentication over the
        # socket, no TCP connections at all, no password anywhere
        (cd / && "${as_pg[@]}" "$pg/initdb" -D "$pgdata" -U "$(id -un)" --auth-local=peer \
            --auth-host=reject --encoding=UTF8 --no-instructions) >"$data/initdb.log" 2>&1 ||
            fail "initdb failed (as root it runs as nobody: can nobody reach $pgdata and \
$pg?): $data/initdb.log"
    fi
    trap stop_stack EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # each service in its own session: Ctrl-C reaches this script only, which stops them in order
    (cd / && exec setsid "${as_pg[@]}" "$pg/postgres" -D "$pgdata" -k "$pgdata" -p 5432 \
        -c listen_addresses= -c unix_socket_permissions=0700) >>"$data/postgres.log" 2>&1 &
    pids+=("INT:$!")  # SIGINT: PostgreSQL's fast shutdown
    for _ in $(seq 1 300); do
        "$pg/pg_isready" -q -h "$pgdata" -p 5432 && break
        kill -0 "${pids[0]#*:}" 2>/dev/null || fail "PostgreSQL did not start: $data/postgres.log"
        sleep 0.2
    done
    "$pg/pg_isready" -q -h "$pgdata" -p 5432 || fail "PostgreSQL not ready: $data/postgres.log"
    if [[ "$("$pg/psql" -h "$pgdata" -p 5432 -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" != 1 ]]; then
        "$pg/createdb" -h "$pgdata" -p 5432 mlflow
    fi
    backend="postgresql:///mlflow?host=$pgdata&port=5432"
    if [[ -z "$artifacts" ]]; then
        # moto's S3 server on loopback, with credentials that open nothing but it
        s3_port="${s3_port:-$((port + 1))}"
        export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
            AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
        export MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$s3_port"
        setsid "$py" -m moto.server -H 127.0.0.1 -p "$s3_port" >>"$data/moto.log" 2>&1 &
        pids+=("TERM:$!")
        make_bucket='import sys, time
import boto3, botocore.exceptions
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
for _ in range(300):
    try:
        s3.create_bucket(Bucket="mlflow")
        break
    except botocore.exceptions.BotoCoreError:  # not listening yet
        time.sleep(0.2)
else:
    sys.exit(1)'
        "$py" -c "$make_bucket" "$MLFLOW_S3_ENDPOINT_URL" ||
            fail "moto's S3 server did not start: $data/moto.log"
        artifacts="s3://mlflow/mlartifacts"
    fi
fi
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
server=(mlflow server --host "$host" --port "$port" --workers 1
    --backend-store-uri "$backend" --artifacts-destination "$artifacts"
    "${app[@]}" "${allowed[@]}" "${extra[@]}")
if [[ $stack == 0 ]]; then exec "${server[@]}"; fi
echo "mlflow_server.sh: PostgreSQL ($pgdata), artifacts in $artifacts; MLflow on $host:$port" >&2
setsid "${server[@]}" &
mlflow_pid=$!
pids+=("TERM:-$mlflow_pid")  # MLflow and its workers: the whole session's process group
wait "$mlflow_pid"
