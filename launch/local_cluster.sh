#!/usr/bin/env bash
# A multi-node Ray test cluster on one machine: a head and N worker raylets, each with its own
# temp dir and ports, token auth on. Every process is stopped by the PIDs this script recorded.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: launch/local_cluster.sh start [--workers N] [--dir DIR] [--port PORT] [--cpus N]
                                     [--head-cpus N] [--dashboard-port PORT]
       launch/local_cluster.sh stop [--dir DIR]
       launch/local_cluster.sh address [--dir DIR]

start    a head node and N worker nodes (separate raylets) on this machine. Each node runs
         `ray start --block` in its own process group with its own --temp-dir under DIR and
         its own dashboard-agent / runtime-env-agent ports; PIDs go to DIR/*.pid. The dashboard
         (for `ray job submit`) listens on 127.0.0.1 only. Waits until all nodes are alive.
stop     stop the nodes started from DIR, by PID (never `ray stop`, which kills every Ray on
         the machine).
address  print the GCS address (for `raytune-periodic run --address`) and the dashboard URL.

  --workers N          worker nodes (default 1)
  --dir DIR            state directory (default ./runs/local_cluster; keep it short: Ray's
                       socket paths under it must stay below 108 bytes)
  --port PORT          head GCS port (default 6390)
  --cpus N             CPUs per worker node (default 1)
  --head-cpus N        CPUs of the head node (default 1)
  --dashboard-port P   dashboard port (default 8275)
  -h, --help           show this help

Token auth is on: `ray start` (Ray 2.60) enables it only with RAY_AUTH_MODE=token, which this
script exports for every node. The token is Ray's: $RAY_AUTH_TOKEN, else the file
$RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (created owner-only when missing, 256 random bits
as `ray get-auth-token --generate` makes them). After start the script checks that the
dashboard refuses a request without the token, and stops the nodes if it does not. Clients
(ray.init, `ray job submit`, launch/submit.sh) need RAY_AUTH_MODE=token and the same token.
USAGE
}
cmd="${1:-}"
case "$cmd" in
    -h|--help|"") usage; [[ -n "$cmd" ]] && exit 0; exit 2 ;;
    start|stop|address) shift ;;
    *) echo "unknown command: $cmd" >&2; usage >&2; exit 2 ;;
esac
workers=1
dir="$PWD/runs/local_cluster"
port=6390
cpus=1
head_cpus=1
dash_port=8275
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --workers) workers="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        --head-cpus) head_cpus="$2"; shift 2 ;;
        --dashboard-port) dash_port="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0

stop_nodes() {
    local pidfile pid deadline
    for pidfile in "$dir"/*.pid; do
        [[ -e "$pidfile" ]] || continue
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM -- "-$pid" 2>/dev/null || true   # `ray start --block` cleans its node up
            deadline=$((SECONDS + 8))
            # alive and not a zombie (an unreaped exited process still answers kill -0)
            while [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == [^Z]* ]] && ((SECONDS < deadline)); do
                sleep 0.2
            done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

case "$cmd" in
    stop) stop_nodes; exit 0 ;;
    address)
        echo "gcs=127.0.0.1:$port"
        echo "dashboard=http://127.0.0.1:$dash_port"
        exit 0 ;;
esac

if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$token_file" ]]; then
        mkdir -p "$(dirname "$token_file")"
        (umask 077 && "${PYTHON:-python}" -c \
            'import secrets; print(secrets.token_hex(32), end="")' >"$token_file")
    fi
    chmod 600 "$token_file"
fi
# node index i gets its own agent ports: base + 10*i
start_node() {  # name, extra args...
    local name="$1" i="$2"
    shift 2
    mkdir -p "$dir/$name"
    setsid ray start --block --disable-usage-stats --temp-dir "$dir/$name" \
        --dashboard-agent-listen-port $((port + 100 + 10 * i)) \
        --dashboard-agent-grpc-port $((port + 101 + 10 * i)) \
        --runtime-env-agent-port $((port + 102 + 10 * i)) \
        --metrics-export-port $((port + 103 + 10 * i)) \
        "$@" >"$dir/$name.log" 2>&1 &
    echo $! >"$dir/$name.pid"
}
trap 'stop_nodes' ERR
start_node head 0 --head --port "$port" --num-cpus "$head_cpus" --num-gpus 0 \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dash_port" \
    --ray-client-server-port $((port + 1))
# wait for the head's GCS before joining workers
"${PYTHON:-python}" - "$port" "$(cat "$dir/head.pid")" "$dir/head.log" <<'PY'
import os, socket, sys, time
deadline = time.monotonic() + 120
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        try:
            os.kill(int(sys.argv[2]), 0)
        except ProcessLookupError:
            sys.exit("head exited:\n" + open(sys.argv[3]).read()[-2000:])
        if time.monotonic() > deadline:
            sys.exit("head never came up")
        time.sleep(0.2)
PY
for ((i = 1; i <= workers; i++)); do
    start_node "worker$i" "$i" --address "127.0.0.1:$port" --num-cpus "$cpus" --num-gpus 0
done
"${PYTHON:-python}" - "$port" "$((workers + 1))" "$dash_port" <<'PY'
import sys, time, urllib.error, urllib.request
import ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", logging_level="ERROR")
deadline = time.monotonic() + 120
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.monotonic() > deadline:
        sys.exit("not every node joined")
    time.sleep(0.5)
try:  # token auth must be on: the jobs API refuses a request without the token
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[3]}/api/jobs/", timeout=30)
    sys.exit("token authentication is OFF: the dashboard answered without a token")
except urllib.error.HTTPError as exc:
    if exc.code != 401:
        sys.exit(f"token authentication check: HTTP {exc.code}, expected 401")
print(f"{sys.argv[2]} nodes alive, token authentication on")
PY
trap - ERR
echo "gcs=127.0.0.1:$port"
echo "dashboard=http://127.0.0.1:$dash_port"
