#!/usr/bin/env bash
# Reference figures for two peer stores, side by side with `dynamo bench`: starts a Redis
# server and a 3-member etcd cluster on loopback in a temporary directory, waits until each
# answers, finds the etcd leader, runs examples/peer_stores.py against each (etcd at the
# leader), then stops everything it started and removes the directory, on failure and on
# Ctrl-C too. Not part of the project's tests. Its own lines (which server, where, the etcd
# members' status) go to stderr; stdout has only what peer_stores.py prints.
#
#   examples/peer_stores.sh [--only redis|etcd] [--redis-json FILE] [--etcd-json FILE]
#                           [--redis-aof no|everysec|always] [-- peer_stores.py options]
#
#   examples/peer_stores.sh                                   # both tables on stdout
#   examples/peer_stores.sh --redis-json r.json --etcd-json e.json -- --requests 500
#
# --redis-json/--etcd-json: also write that store's JSON document to FILE (the table is
# still printed). --redis-aof: Redis persistence (default no: in memory only, no RDB
# snapshots either; everysec/always: append-only file fsynced once a second / before each
# reply). Options after -- go to peer_stores.py (--requests, --concurrency, --value-size,
# --warmup, --seed). Needs redis-server, redis-cli, etcd, etcdctl on PATH (Debian:
# apt-get install redis-server etcd-server etcd-client) and `python -m pip install redis`.
# The standard ports (6379; etcd clients 2379/22379/32379, peers 2380/22380/32380) are used
# when free, else free ports the kernel picks. PYTHON overrides the interpreter.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
ONLY=""
REDIS_JSON=""
ETCD_JSON=""
REDIS_AOF="no"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY="${2:?}"; shift 2 ;;
    --redis-json) REDIS_JSON="${2:?}"; shift 2 ;;
    --etcd-json) ETCD_JSON="${2:?}"; shift 2 ;;
    --redis-aof) REDIS_AOF="${2:?}"; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "peer_stores.sh: unknown option $1 (options for peer_stores.py go after --)" >&2
       usage 2 >&2 ;;
  esac
done
case "$ONLY" in ""|redis|etcd) ;; *) echo "--only redis or --only etcd" >&2; exit 2 ;; esac
case "$REDIS_AOF" in no|everysec|always) ;; *) echo "--redis-aof no|everysec|always" >&2
                                                exit 2 ;; esac
# JSON files given relative to the caller's directory stay so
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
if [ -n "$REDIS_JSON" ]; then REDIS_JSON="$(abspath "$REDIS_JSON")"; fi
if [ -n "$ETCD_JSON" ]; then ETCD_JSON="$(abspath "$ETCD_JSON")"; fi

for tool in redis-server redis-cli etcd etcdctl; do
  case "$tool:$ONLY" in redis*:etcd|etcd*:redis) continue ;; esac
  command -v "$tool" >/dev/null || {
    echo "peer_stores.sh: $tool is not installed (apt-get install -y redis-server" \
         "etcd-server etcd-client)" >&2; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/peer-stores.XXXXXX")"
PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid deadline=$((SECONDS + 10)) alive
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # an etcd leader stopping while its followers stop may linger, trying to hand leadership
  # over: give them all 10 s, then SIGKILL (the data is thrown away anyway)
  while :; do
    alive=()
    for pid in "${PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
    done
    [ "${#alive[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -9 "${alive[@]}" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    local log
    for log in "$WORK"/*.log; do
      if grep -qiE 'error|fatal|panic' "$log" 2>/dev/null; then
        echo "--- $(basename "$log"): its last errors ---" >&2
        grep -iE 'error|fatal|panic' "$log" | tail -n 5 >&2
      fi
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TAKEN=" "
PORT=""
# pick_port PREFERRED: sets PORT to PREFERRED if nothing listens there and no earlier call
# took it, else to a free port the kernel picks (that no earlier call took either).
pick_port() {
  PORT="$("$PYTHON" - "$1" "$TAKEN" <<'EOF'
import socket, sys
preferred, taken = int(sys.argv[1]), set(sys.argv[2].split())
def free(p):
    with socket.socket() as s:
        # as the servers do: a port held only by closed connections (TIME_WAIT) is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return False
    return str(p) not in taken
if free(preferred):
    print(preferred)
else:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if str(p) not in taken:
            print(p)
            break
EOF
)"
  TAKEN+="$PORT "
}

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
wait_for() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "peer_stores.sh: $what did not answer within the time allowed" >&2
      return 1
    fi
    sleep 0.2
  done
}

run_redis() {
  pick_port 6379
  local rport="$PORT"
  mkdir -p "$WORK/redis"
  local persistence=(--appendonly no)
  [ "$REDIS_AOF" != no ] && persistence=(--appendonly yes --appendfsync "$REDIS_AOF")
  redis-server --bind 127.0.0.1 --port "$rport" --save '' "${persistence[@]}" \
    --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis.log" &
  PIDS+=($!)
  wait_for 15 "redis-server on port $rport" \
    sh -c "redis-cli -h 127.0.0.1 -p $rport ping | grep -q PONG"
  echo "== redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on" \
       "127.0.0.1:$rport, appendonly $REDIS_AOF" >&2
  local out=()
  [ -n "$REDIS_JSON" ] && out=(--json-out "$REDIS_JSON")
  "$PYTHON" "$HERE/peer_stores.py" redis --url "redis://127.0.0.1:$rport" "${out[@]}" "$@"
  redis-cli -h 127.0.0.1 -p "$rport" shutdown nosave >/dev/null 2>&1 || true
}

run_etcd() {
  local cports=() pports=() cluster="" endpoints="" i
  for i in 2379 22379 32379; do   # etcd's customary ports for a cluster on one host
    pick_port "$i"
    cports+=("$PORT")
    pick_port $((i + 1))
    pports+=("$PORT")
  done
  for i in 0 1 2; do
    cluster+="${cluster:+,}m$((i + 1))=http://127.0.0.1:${pports[$i]}"
    endpoints+="${endpoints:+,}127.0.0.1:${cports[$i]}"
  done
  for i in 0 1 2; do
    etcd --name "m$((i + 1))" --data-dir "$WORK/etcd-m$((i + 1))" \
      --listen-client-urls "http://127.0.0.1:${cports[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${cports[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${pports[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-token "peer-bench-$$" \
      --initial-cluster-state new \
      --logger zap --log-outputs "$WORK/etcd-m$((i + 1)).log" \
      2>"$WORK/etcd-m$((i + 1)).stderr.log" &
    PIDS+=($!)
  done
  export ETCDCTL_API=3
  wait_for 30 "the etcd cluster ($endpoints)" \
    etcdctl --endpoints="$endpoints" --dial-timeout=1s endpoint health
  # the leader: the member whose own id is the leader id it reports
  local leader=""
  wait_for 15 "an etcd leader" sh -c "etcdctl --endpoints=$endpoints endpoint status -w json \
    > '$WORK/status.json'"
  leader="$("$PYTHON" -c '
import json, sys
for e in json.load(open(sys.argv[1])):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]:
        print(e["Endpoint"])
' "$WORK/status.json")"
  [ -n "$leader" ] || { echo "peer_stores.sh: no etcd leader found" >&2; return 1; }
  echo "== etcd $(etcd --version | sed -n 's/^etcd Version: //p'), 3 members on" \
       "$endpoints; leader at $leader" >&2
  etcdctl --endpoints="$endpoints" endpoint status -w table 2>/dev/null >&2 || true
  local out=()
  [ -n "$ETCD_JSON" ] && out=(--json-out "$ETCD_JSON")
  "$PYTHON" "$HERE/peer_stores.py" etcd --url "http://$leader" "${out[@]}" "$@"
}

# (if, not ||: set -e does not reach into a function called on the left of || or &&)
if [ "$ONLY" != etcd ]; then
  run_redis "$@"
fi
if [ -z "$ONLY" ]; then
  echo >&2
fi
if [ "$ONLY" != redis ]; then
  run_etcd "$@"
fi
