#!/usr/bin/env bash
# Side-by-side load benchmark, in one run: the machine's ceiling (`limit`,
# ../shared/limit: a featureless fan-out server), parlor (memory store;
# redb store with each durability; cluster mode: one and three nodes on one
# Redis), optionally the previous parlor build (PARLOR_BASELINE), and the
# two teaching servers (../shared/peers: seed-ts, seed-py). The same
# scenarios against each; writes BENCHMARKS.md and one chart per scenario
# (docs/bench/*.svg).
#
# Cluster mode (`parlor-cluster1`, `parlor-cluster3`): a redis-server of its
# own (AOF appendfsync always, a temp dir, a free port) and 1 or 3 parlor
# nodes with --cluster; the harness spreads members over the nodes, the
# server CPU is every node's plus Redis's, and Redis calls per message
# come from the nodes' /metrics. They run fanout-3k, paced-3k and
# rooms-100x10, beside parlor-memory and parlor-redb-immediate. On 2 shared
# cores this shows the cost per message, not scaling.
#
#   scripts/bench.sh                 # everything (~20-25 min on 2 cores)
#   SERVERS="limit parlor-memory" scripts/bench.sh       # a subset
#   CLUSTER_ONLY=1 scripts/bench.sh  # cluster mode beside one node only (~6 min);
#                                    # writes target/bench/BENCHMARKS.md
#   QUICK=1 scripts/bench.sh         # small sizes, to try the script (~4 min);
#                                    # writes target/bench/BENCHMARKS.md, not ./BENCHMARKS.md
#   PARLOR_BASELINE=/path/to/old/parlor scripts/bench.sh # adds parlor-before-memory
#                                    # and parlor-before-redb-immediate: that binary, same flags
#   REPORT_ONLY=1 scripts/bench.sh   # rewrite the page and charts from $OUT
#
# Environment: SHARED (default ../shared next to the repo, else
# /work/shared; holds peers/ and limit/), PEERS (default $SHARED/peers),
# OUT (results dir, default target/bench), SERVERS, SCENARIOS (a subset
# of: fanout-1k rooms-100x10 fanout-19k durable-64 paced-10 paced-1
# reconnect rooms-1kx10 join-storm idle-19k fanout-3k paced-3k), REPEAT (runs of each short
# burst scenario, of paced-10 and of join-storm per server, the page gives medians; default 3, QUICK 1;
# the seeds run REPEAT_SEEDS times, default 1),
# LIMIT_WORKERS (limit's threads, default 2), MD (the page to write),
# CHARTS (the charts' dir), BENCH_NOTE (a sentence on the machine's state
# during the run, printed on the page).
# Every server is started fresh for every run (clean RSS baseline, CPU
# counted from /proc/<pid>), on a free port, and stopped by its PID. The
# loop is scenario-major (every server runs a scenario before the next
# scenario starts), so drift on a shared machine hits all servers alike.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

SHARED=${SHARED:-}
if [ -z "$SHARED" ]; then
  for d in "$ROOT/../shared" /work/shared; do
    [ -d "$d/limit" ] || [ -d "$d/peers" ] || continue
    SHARED=$(cd "$d" && pwd) && break
  done
fi
PEERS=${PEERS:-}
if [ -z "$PEERS" ]; then
  for d in "$ROOT/../shared/peers" /work/shared/peers; do
    [ -x "$d/run-seed-ts.sh" ] && PEERS=$(cd "$d" && pwd) && break
  done
fi
QUICK=${QUICK:-0}
OUT=${OUT:-$ROOT/target/bench}
PARLOR_BASELINE=${PARLOR_BASELINE:-}
BEFORE=""
[ -n "$PARLOR_BASELINE" ] && BEFORE="parlor-before-memory parlor-before-redb-immediate"
CLUSTER=""
command -v redis-server >/dev/null && CLUSTER="parlor-cluster1 parlor-cluster3"
# CLUSTER_ONLY=1: only the cluster comparison — one node (memory, redb
# immediate) beside one and three nodes on Redis, in fanout-3k, paced-3k
# and rooms-100x10 — with its page under $OUT (the full page is untouched).
if [ "${CLUSTER_ONLY:-0}" = 1 ]; then
  SERVERS=${SERVERS:-"parlor-memory parlor-redb-immediate parlor-cluster1 parlor-cluster3"}
  SCENARIOS=${SCENARIOS:-"fanout-3k paced-3k rooms-100x10"}
  MD=${MD:-$OUT/BENCHMARKS.md}; CHARTS=${CHARTS:-$OUT/charts}
fi
SERVERS=${SERVERS:-"limit parlor-memory parlor-redb-immediate $BEFORE parlor-redb-batched parlor-redb-none $CLUSTER seed-ts seed-py"}
# `parlor-before` alone means both baseline variants.
SERVERS=$(echo "$SERVERS" | sed "s/\bparlor-before\b\( \|$\)/parlor-before-memory parlor-before-redb-immediate\1/")
SERVERS=$(echo $SERVERS)
case " $SERVERS " in
  *" parlor-before-"*) [ -x "$PARLOR_BASELINE" ] || { echo "parlor-before-* needs PARLOR_BASELINE=/path/to/parlor (got '$PARLOR_BASELINE')" >&2; exit 2; } ;;
esac
REPEAT=${REPEAT:-3}
[ "$QUICK" = 1 ] && REPEAT=${REPEAT_QUICK:-1}
REPEAT_SEEDS=${REPEAT_SEEDS:-1}
ALL_SCENARIOS="fanout-1k rooms-100x10 fanout-19k durable-64 paced-10 paced-1 reconnect rooms-1kx10 join-storm idle-19k fanout-3k paced-3k"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
if [ "$QUICK" = 1 ]; then
  MD=${MD:-$OUT/BENCHMARKS.md}; CHARTS=${CHARTS:-$OUT/charts}
else
  MD=${MD:-$ROOT/BENCHMARKS.md}; CHARTS=${CHARTS:-$ROOT/docs/bench}
fi
# REPORT_ONLY=1: rewrite BENCHMARKS.md and the charts from the results in $OUT.
REPORT_ONLY=${REPORT_ONLY:-0}
if [ "$REPORT_ONLY" != 1 ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"

# The fd limit: as high as this process may go (servers inherit it). Each
# side needs one fd per connection; the hard limit here is 20 000 per
# process (no CAP_SYS_RESOURCE to raise it), so the big scenarios hold
# 19 000 connections.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FDLIM=$(ulimit -n)
BIG=19000
if [ "$FDLIM" -lt $((BIG + 500)) ]; then BIG=$(( (FDLIM - 1000) / 100 * 100 )); fi
# Sizes. The seeds' join is O(room size) (a `system` announcement to every
# member: M(M+1)/2 frames to fill a room), so their big room is capped and
# they sit out the join storm; the table says so.
FAN=1000; PACED_S=5; IDLE_HOLD=16; RC_MEMBERS=1000; RC_DROP=500; RC_SECS=6; DUR_MSGS=300; FAN3=3000
# rooms-100x10's burst: 60 000 messages, ≈ 0.6 s of server CPU, so that the
# 10 ms resolution of /proc's CPU times is ≈ 2 % of the figure (at 100
# messages per sender a run moved by ±10 %, more than the changes measured).
ROOMS_MSGS=300
SEED_TS_BIG=2000; SEED_PY_BIG=1000
if [ "$QUICK" = 1 ]; then
  BIG=1900; FAN=200; PACED_S=2; IDLE_HOLD=2; RC_MEMBERS=200; RC_DROP=100; RC_SECS=3; DUR_MSGS=50; FAN3=600; ROOMS_MSGS=100
  SEED_TS_BIG=200; SEED_PY_BIG=100
fi

LT_BIN="$OUT/bin/parlor-loadtest"
if [ "$REPORT_ONLY" != 1 ]; then
echo "building release binaries..." >&2
cargo build --release -p parlor --bin parlor >&2
cargo build --release -p parlor-loadtest >&2
# Copies, so a rebuild by someone else mid-run changes nothing here.
BIN="$OUT/bin" && mkdir -p "$BIN"
cp target/release/parlor target/release/parlor-loadtest "$BIN/"
case " $SERVERS " in
  *" limit "*)
    [ -f "$SHARED/limit/Cargo.toml" ] || { echo "limit: no $SHARED/limit/Cargo.toml (set SHARED)" >&2; exit 2; }
    # ../shared is read-only in CI: build into a target dir of our own.
    cargo build --release --locked --manifest-path "$SHARED/limit/Cargo.toml" --target-dir target/limit >&2
    cp target/limit/release/limit "$BIN/" ;;
esac
[ -n "$PARLOR_BASELINE" ] && cp "$PARLOR_BASELINE" "$BIN/parlor-before"
PARLOR="$BIN/parlor"
LT="$BIN/parlor-loadtest"

# A free listening port below the ephemeral range (the harness's client
# sockets take ephemeral ports on 127.0.0.1-254, and a seed listens on ::).
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(1000):
    p = random.randint(20000, 32000)
    try:
        for fam, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
            s = socket.socket(fam); s.bind((addr, p)); s.close()
        print(p); break
    except OSError:
        continue
PY
}

SERVER_PID=""
PORT=""
DATA=""
# Cluster mode: every process of the server (nodes, then Redis), the
# nodes' WebSocket and metrics URLs.
CLUSTER_PIDS=""
CLUSTER_URLS=""
CLUSTER_METRICS=""
wait_port() { # port
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
start_cluster() { # nodes log-prefix
  local n=$1 log=$2 rport i port
  rport=$(free_port)
  mkdir -p "$DATA/redis"
  redis-server --port "$rport" --bind 127.0.0.1 --dir "$DATA/redis" --appendonly yes \
    --appendfsync always --save "" --logfile "$log.redis" >/dev/null 2>&1 &
  local rpid=$!
  wait_port "$rport" || { echo "redis-server did not start" >&2; return 1; }
  CLUSTER_PIDS="" CLUSTER_URLS="" CLUSTER_METRICS=""
  for i in $(seq 1 "$n"); do
    port=$(free_port)
    RUST_LOG=warn "$PARLOR" serve --addr "127.0.0.1:$port" --rate-per-sec 1000000 --rate-burst 1000000 \
      --log-format text --cluster "redis://127.0.0.1:$rport" >"$log.node$i" 2>&1 &
    CLUSTER_PIDS="$CLUSTER_PIDS,$!"
    wait_port "$port" || { echo "node $i did not start" >&2; return 1; }
    CLUSTER_URLS="$CLUSTER_URLS,ws://127.0.0.1:$port/ws"
    CLUSTER_METRICS="$CLUSTER_METRICS,http://127.0.0.1:$port/metrics"
    [ "$i" = 1 ] && PORT=$port
  done
  CLUSTER_PIDS="${CLUSTER_PIDS#,},$rpid" CLUSTER_URLS=${CLUSTER_URLS#,} CLUSTER_METRICS=${CLUSTER_METRICS#,}
  SERVER_PID=${CLUSTER_PIDS%%,*}
}
start_server() { # name
  local name=$1
  PORT=$(free_port)
  DATA=$(mktemp -d /tmp/parlor-bench.XXXXXX)
  local log="$OUT/logs/$name.$PORT.log"
  mkdir -p "$OUT/logs"
  CLUSTER_PIDS=""
  case $name in
    parlor-cluster1) start_cluster 1 "$log"; return ;;
    parlor-cluster3) start_cluster 3 "$log"; return ;;
  esac
  local common=(serve --addr "127.0.0.1:$PORT" --rate-per-sec 1000000 --rate-burst 1000000 --log-format text)
  local bin=$PARLOR kind=${name#parlor-}
  case $name in parlor-before-*) bin="$BIN/parlor-before"; kind=${name#parlor-before-} ;; esac
  case $name in
    limit) LIMIT_WORKERS=${LIMIT_WORKERS:-2} "$BIN/limit" "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
    parlor-*)
      case $kind in
        memory) RUST_LOG=warn "$bin" "${common[@]}" --store memory >"$log" 2>&1 & ;;
        redb-*) RUST_LOG=warn "$bin" "${common[@]}" --store redb --data-dir "$DATA" \
                  --durability "${kind#redb-}" >"$log" 2>&1 & ;;
        *) echo "unknown server $name" >&2; return 1 ;;
      esac ;;
    seed-ts) SEED_DATA_DIR=$DATA "$PEERS/run-seed-ts.sh" "$PORT" >"$log" 2>&1 & ;;
    seed-py) SEED_DATA_DIR=$DATA "$PEERS/run-seed-py.sh" "$PORT" >"$log" 2>&1 & ;;
    *) echo "unknown server $name" >&2; return 1 ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$name did not start; see $log" >&2
  return 1
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pids=$SERVER_PID p
  [ -n "$CLUSTER_PIDS" ] && pids=$(echo "$CLUSTER_PIDS" | tr , ' ')
  for p in $pids; do
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  SERVER_PID=""
  CLUSTER_PIDS=""
  rm -rf "$DATA"
}
trap stop_server EXIT

COMMANDS="$OUT/commands.txt"
: >"$COMMANDS"
run_one() { # server scenario-name run-number loadtest-args...
  local server=$1 scen=$2 rep=$3; shift 3
  local kind=parlor url path=/ws deadline=60 extra=()
  case $server in
    seed-*) kind=seed; path=/; deadline=150 ;;
    # limit has no ack: like the seeds, the sender's own copy is its ack.
    limit) kind=seed ;;
  esac
  # 19 000 joins into one room take parlor ~30 s here: room for that.
  case $scen in fanout-19k|join-storm) deadline=150 ;; esac
  start_server "$server" || { echo "$server $scen: did not start" >>"$OUT/notes.txt"; stop_server; return 0; }
  url="ws://127.0.0.1:$PORT$path"
  local pids=$SERVER_PID
  # Store commits per message from parlor's /metrics, before and after.
  case $server:$scen in parlor-*:durable-64) extra=(--metrics-url "http://127.0.0.1:$PORT/metrics") ;; esac
  # Cluster mode: members spread over the nodes; CPU of every node and of
  # Redis; Redis calls per message from every node's /metrics.
  if [ -n "$CLUSTER_PIDS" ]; then
    url=$CLUSTER_URLS pids=$CLUSTER_PIDS
    extra=(--metrics-url "$CLUSTER_METRICS")
  fi
  local cmd=("$LT" --url "$url" --target-kind "$kind" --server-pid "$pids" --json --no-progress
             --deadline "$deadline" --label "$server" "${extra[@]}" "$@")
  if [ "$rep" = 1 ]; then
    echo "$server $scen: parlor-loadtest ${cmd[*]:1}" | sed "s#ws://127.0.0.1:[0-9]*#ws://127.0.0.1:PORT#g; s#http://127.0.0.1:[0-9]*#http://127.0.0.1:PORT#g; s#--server-pid [0-9,]*#--server-pid PID#" >>"$COMMANDS"
  fi
  echo "== $server / $scen #$rep" >&2
  local t0=$SECONDS f="$OUT/$server.$scen.$rep"
  if "${cmd[@]}" >"$f.json" 2>"$f.txt"; then
    grep -E "deliveries |throughput|latency|steady|joins|server |idle memory|store|redis|stopped|conn errors" "$f.txt" >&2 || true
  else
    echo "   loadtest failed (see $f.txt)" >&2
    rm -f "$f.json"
  fi
  # What became of the server (seed-py may drop senders; a crash shows here).
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "   server exited during the run" >&2; echo "$server $scen: server exited" >>"$OUT/notes.txt"; fi
  stop_server
  echo "   ($((SECONDS - t0)) s)" >&2
}

is_parlor() { case $1 in parlor-*) return 0 ;; esac; return 1; }
is_seed() { case $1 in seed-*) return 0 ;; esac; return 1; }
big_for() { case $1 in seed-ts) echo $SEED_TS_BIG ;; seed-py) echo $SEED_PY_BIG ;; *) echo $BIG ;; esac; }

BENCH_START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$SECONDS
scenario() { # name repeats: runs "$name" for every server its filter admits
  local scen=$1 reps=$2 t0=$SECONDS
  case " $SCENARIOS " in *" $scen "*) ;; *) return 0 ;; esac
  for rep in $(seq 1 "$reps"); do
    for s in $SERVERS; do
      admit "$scen" "$s" || continue
      # The seeds are 30-100× off parlor: one run each is enough, and
      # repeating them would double the script's time.
      if is_seed "$s" && [ "$rep" -gt "$REPEAT_SEEDS" ]; then continue; fi
      run_one "$s" "$scen" "$rep" $(args_for "$scen" "$s")
    done
  done
  echo "$scen $((SECONDS - t0))" >>"$OUT/scenario-secs"
}
# Who runs what: limit has no acks, history, replay or durability; the
# seeds have no replay with `since`, and a 19 000-member join storm would
# take them ~10^8 announcement frames.
# parlor-redb-batched / -none differ from -immediate only in when the store
# syncs: they run the scenarios that stress the store, not the 19 000-
# connection ones (which would add ~4 min).
admit() { # scenario server
  case $2:$1 in
    parlor-redb-batched:*|parlor-redb-none:*)
      case $1 in fanout-19k|join-storm|idle-19k|reconnect) return 1 ;; esac ;;
    # Cluster mode runs its three scenarios only; its two scenarios run
    # beside the two single-node parlors.
    parlor-cluster*:fanout-3k|parlor-cluster*:paced-3k|parlor-cluster*:rooms-100x10) return 0 ;;
    parlor-cluster*:*) return 1 ;;
    parlor-memory:fanout-3k|parlor-memory:paced-3k) return 0 ;;
    parlor-redb-immediate:fanout-3k|parlor-redb-immediate:paced-3k) return 0 ;;
    *:fanout-3k|*:paced-3k) return 1 ;;
  esac
  case $1 in
    durable-64) [ "$2" != limit ] ;;
    reconnect) is_parlor "$2" ;;
    join-storm) ! is_seed "$2" ;;
    *) true ;;
  esac
}
args_for() { # scenario server
  case $1 in
    idle-19k) echo "idle --connections $BIG --members 10 --hold $IDLE_HOLD" ;;
    join-storm) echo "join-storm --connections $BIG" ;;
    rooms-100x10) echo "rooms --rooms 100 --members 10 --senders 2 --messages $ROOMS_MSGS --payload 64" ;;
    rooms-1kx10) echo "rooms --rooms 1000 --members 10 --senders 1 --messages 10 --payload 64" ;;
    paced-1) echo "fanout --rooms 1 --members $FAN --senders 10 --messages $PACED_S --rate 1 --payload 64" ;;
    paced-10) echo "fanout --rooms 1 --members $FAN --senders 10 --messages $((PACED_S * 10)) --rate 10 --payload 64" ;;
    fanout-1k) echo "fanout --rooms 1 --members $FAN --senders 10 --messages 100 --payload 64" ;;
    fanout-3k) echo "fanout --rooms 1 --members $FAN3 --senders 10 --messages 100 --payload 64" ;;
    paced-3k) echo "fanout --rooms 1 --members $FAN3 --senders 10 --messages $((PACED_S * 10)) --rate 10 --payload 64" ;;
    fanout-19k) echo "fanout --rooms 1 --members $(big_for "$2") --senders 10 --messages 10 --payload 64" ;;
    durable-64) echo "fanout --rooms 64 --members 1 --senders 1 --messages $DUR_MSGS --window 1 --payload 64" ;;
    # Mass reconnect: half the room drops at once every 2 s and rejoins
    # with `since` while 10 senders keep 10 msg/s each going; the figure is
    # the p99 of the members that stay.
    reconnect) echo "reconnect --rooms 1 --members $RC_MEMBERS --senders 10 --messages $((RC_SECS * 10)) --rate 10 --droppers $RC_DROP --drop-every-ms 2000 --together --payload 64" ;;
  esac
}
# Order: the short, repeated bursts first; the ones that take long last.
# paced-10 and join-storm are repeated too: their ratios are targets, and
# one run of either ranged over ±20 % on the same code.
for scen in fanout-1k rooms-100x10 durable-64 fanout-3k paced-10 join-storm; do scenario $scen "$REPEAT"; done
for scen in fanout-19k paced-1 paced-3k reconnect rooms-1kx10 idle-19k; do scenario $scen 1; done
ELAPSED=$((SECONDS - T0))
echo "$BENCH_START $ELAPSED $REPEAT $BIG" >"$OUT/meta"
fi
read -r BENCH_START ELAPSED REPEAT BIG <"$OUT/meta"
# BENCH_NOTE: a sentence on the run's conditions for the page (kept in $OUT).
if [ -n "${BENCH_NOTE:-}" ]; then echo "$BENCH_NOTE" >"$OUT/note"; fi
# REPORT_ONLY: the charts come from the current build when there is one.
if [ "$REPORT_ONLY" = 1 ] && [ -x target/release/parlor-loadtest ]; then LT_BIN=target/release/parlor-loadtest; fi

# Charts: one per scenario, every server side by side (medians of the runs).
mkdir -p "$CHARTS"
chart() { # scenario title metrics...
  local scen=$1 title=$2; shift 2
  local files=("$OUT"/*."$scen".*.json)
  [ -e "${files[0]}" ] || return 0
  local m=() x
  for x in "$@"; do m+=(--metric "$x"); done
  "$LT_BIN" chart --in "${files[@]}" --out "$CHARTS/$scen.svg" --title "$title" \
    --order "$(echo "$SERVERS" | tr ' ' ,)" "${m[@]}" || echo "chart $scen failed" >&2
}
chart fanout-1k "fan-out burst: 1 room × $FAN members, 10 senders × 100 msgs" deliveries-per-sec cpu-us-per-delivery
chart fanout-19k "fan-out burst: 1 room × $BIG members (seed-ts, seed-py: fewer), 10 senders × 10 msgs" deliveries-per-sec cpu-us-per-delivery
chart rooms-100x10 "100 rooms × 10 members, 2 senders × $ROOMS_MSGS msgs each, burst" deliveries-per-sec cpu-us-per-delivery
chart rooms-1kx10 "1 000 rooms × 10 members, 1 sender × 10 msgs each, burst" deliveries-per-sec cpu-us-per-delivery
chart paced-10 "paced: 10 senders × 10 msg/s into 1 room × $FAN" p99-ms deliveries-per-sec cpu-us-per-delivery
chart paced-1 "paced: 10 senders × 1 msg/s into 1 room × $FAN" p99-ms deliveries-per-sec cpu-us-per-delivery
chart fanout-3k "fan-out burst: 1 room × $FAN3 members, 10 senders × 100 msgs (cluster: spread over the nodes)" deliveries-per-sec cpu-us-per-delivery
chart paced-3k "paced: 10 senders × 10 msg/s into 1 room × $FAN3 (cluster: spread over the nodes)" p99-ms cpu-us-per-delivery
chart durable-64 "durable appends: 64 publishers, each awaits its ack" acks-per-sec messages-per-commit cpu-us-per-delivery
chart reconnect "mass reconnect: $RC_DROP of 1 room × $RC_MEMBERS rejoin with since every 2 s, 10 × 10 msg/s" steady-p99-ms p99-ms cpu-us-per-delivery
chart join-storm "join storm: $BIG connections connect and join ONE room" join-secs kib-per-connection
chart idle-19k "$BIG idle connections in rooms of 10, heartbeats running" kib-per-connection

python3 - "$OUT" "$MD" "$CHARTS" "$BENCH_START" "$ELAPSED" "$FDLIM" "$BIG" "$SERVERS" "$REPEAT" "$QUICK" <<'PY'
import json, os, sys, glob, platform, statistics
out, md, charts, start, elapsed, fdlim, big, servers, repeat, quick = sys.argv[1:11]
servers = servers.split(); big = int(big); quick = quick == "1"
R = {}   # (server, scenario) -> [results]
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    parts = os.path.basename(f)[:-5].split(".")
    if len(parts) != 3: continue
    srv, scen, _ = parts
    try:
        R.setdefault((srv, scen), []).append(json.load(open(f)))
    except Exception:
        pass
cpu = "unknown"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip(); break
cores = os.cpu_count()
def g(r, *ks):
    for k in ks:
        if r is None: return None
        r = r.get(k) if isinstance(r, dict) else None
    return r
def human(v):
    if v is None: return "–"
    a = abs(v)
    if a >= 1e6: x, s = v / 1e6, " M"
    elif a >= 1e3: x, s = v / 1e3, " k"
    else:
        if a == 0: return "0"
        if a >= 100: return f"{v:.0f}"
        if a >= 10: return f"{v:.1f}"
        if a >= 1: return f"{v:.2f}"
        return f"{v:.3f}"
    return (f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}") + s
def f_bytes(b):
    if b is None: return "–"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= k: return f"{b/k:.1f} {unit}"
    return f"{b:.0f} B"
def f_ms(us): return "–" if us is None else f"{us/1000:.1f}" if us >= 1000 else f"{us/1000:.2f}"
def f_num(v, d=2): return "–" if v is None else f"{v:.{d}f}"
# Metrics of the summary: name -> (extract, unit, better)
M = {
 "deliveries/s": (lambda r: g(r, "deliveries", "per_sec") or None, "", "higher"),
 "server CPU µs/delivery": (lambda r: g(r, "server", "cpu_us_per_delivery"), " µs", "lower"),
 "p99 ms": (lambda r: (g(r, "latency", "p99_us") or 0) / 1000 if g(r, "latency") else None, " ms", "lower"),
 "steady members' p99 ms": (lambda r: g(r, "latency_steady", "p99_us") / 1000 if g(r, "latency_steady") else None, " ms", "lower"),
 "RSS KiB/connection": (lambda r: g(r, "idle", "rss_per_connection_bytes") / 1024 if g(r, "idle", "rss_per_connection_bytes") is not None else None, " KiB", "lower"),
 "seconds to connect+join": (lambda r: g(r, "timing", "join_secs") or g(r, "timing", "connect_secs"), " s", "lower"),
 "acks/s": (lambda r: g(r, "messages", "acks_per_sec") or None, "", "higher"),
 "messages per commit": (lambda r: g(r, "metrics", "messages_per_commit"), "", "higher"),
 "ms per commit": (lambda r: g(r, "metrics", "commit_ms_mean"), " ms", "lower"),
}
def stat(srv, scen, metric):
    """(median, min, max, n) of a metric over a server's runs of a scenario."""
    vals = [v for v in (M[metric][0](r) for r in R.get((srv, scen), [])) if v is not None]
    if not vals: return None
    return statistics.median(vals), min(vals), max(vals), len(vals)
def with_unit(v, unit):
    if unit == " ms" and v >= 1000: return f"{v/1000:.1f} s"
    return human(v) + unit
def cell(st, unit=""):
    if not st: return "–"
    m, lo, hi, n = st
    s = with_unit(m, unit)
    if n > 1 and hi > lo: s += f" <sub>({human(lo)}–{human(hi)})</sub>"
    return s
def ratio(a, b):
    if not a or not b or not b[0]: return "–"
    r = a[0] / b[0]
    return f"{r:.0f}×" if r >= 10 else f"{r:.2f}×" if r >= 0.1 else f"{r:.3f}×"
fan = 200 if quick else 1000
seed_caps = {"seed-ts": 200 if quick else 2000, "seed-py": 100 if quick else 1000}
scen_desc = {
 "idle-19k": f"{big} idle connections joined to rooms of 10, held {2 if quick else 16} s (parlor's heartbeat is every 15 s, so one heartbeat round has run; limit has no heartbeats, the seeds' is every 30 s)",
 "join-storm": f"join storm: {big} connections connect and join ONE room, 128 handshakes in flight; seconds from the first connect to the last `joined` (the seeds sit out: each join announces itself to every member, ~10⁸ frames)",
 "rooms-100x10": f"100 rooms × 10 members, 2 senders × {100 if quick else 300} msgs per room, burst (window 10)",
 "rooms-1kx10": "many rooms: 1 000 rooms × 10 members, 1 sender × 10 msgs per room",
 "paced-10": f"paced: 10 senders × 10 msg/s into 1 room × {fan} members ({fan*100//1000} k deliveries/s offered), {2 if quick else 5} s",
 "paced-1": f"paced: 10 senders × 1 msg/s into 1 room × {fan} members ({fan*10//1000} k deliveries/s offered), {2 if quick else 5} s",
 "fanout-1k": f"fan-out burst: 1 room × {fan} members, 10 senders × 100 msgs, 64 B, window 10",
 "fanout-19k": f"fan-out burst: 1 room × {big} members, 10 senders × 10 msgs (seed-ts: {seed_caps['seed-ts']} members, seed-py: {seed_caps['seed-py']})",
 "durable-64": "durable appends: 64 rooms × 1 member, each publisher awaits its ack (window 1); store figures from parlor's `/metrics` before and after",
 "fanout-3k": f"fan-out burst: 1 room × {600 if quick else 3000} members, 10 senders × 100 msgs, 64 B; cluster servers spread the members over their nodes",
 "paced-3k": f"paced: 10 senders × 10 msg/s into 1 room × {600 if quick else 3000} members, {2 if quick else 5} s; cluster servers spread the members over their nodes",
 "reconnect": f"mass reconnect: 1 room × {200 if quick else 1000} members, 10 senders × 10 msg/s; every 2 s {100 if quick else 500} members drop their TCP connection at once and rejoin with `since`; *steady p99* is the p99 of the members that never drop",
}
offered = {"paced-1": fan * 10, "paced-10": fan * 100, "paced-3k": (600 if quick else 3000) * 100}
# The summary: the issue's scenarios with the ceiling, parlor/limit.
summary = [
 ("idle-19k", "RSS KiB/connection"),
 ("join-storm", "seconds to connect+join"),
 ("rooms-100x10", "server CPU µs/delivery"),
 ("rooms-100x10", "deliveries/s"),
 ("paced-10", "p99 ms"),
 ("fanout-1k", "server CPU µs/delivery"),
 ("fanout-1k", "deliveries/s"),
 ("fanout-19k", "server CPU µs/delivery"),
 ("fanout-19k", "deliveries/s"),
 ("durable-64", "acks/s"),
 ("durable-64", "messages per commit"),
 ("durable-64", "ms per commit"),
 ("reconnect", "steady members' p99 ms"),
]
mdir = os.path.dirname(os.path.abspath(md))
L = []
L.append("# Benchmarks\n")
L.append(f"Generated by `scripts/bench.sh` on {start} (took {int(elapsed)//60} min {int(elapsed)%60} s{', QUICK sizes' if quick else ''}). "
         f"Machine: {cores} cores, {cpu}; Linux {platform.release()}. "
         "Server and harness share the machine, so besides throughput the tables give the "
         "server's own CPU time per delivery (from `/proc/<pid>/stat`), which the harness cannot distort.\n")
L.append("Servers: `limit` = the machine's ceiling, a featureless fan-out server (`../shared/limit`: join → joined, message → broadcast "
         "with a per-room sequence; no acks, history, presence, heartbeats or store), built with "
         "`cargo build --release --manifest-path ../shared/limit/Cargo.toml --target-dir target/limit` and run with 2 workers; "
         "`parlor-memory` = `parlor serve --store memory`; `parlor-redb-X` = `--store redb --durability X`; "
         "`parlor-before-…` = the same flags with the binary given as `PARLOR_BASELINE` (the previous build); "
         "`seed-ts` / `seed-py` = the teaching servers (`../shared/peers/run-seed-{ts,py}.sh`). parlor runs with "
         "`--rate-per-sec 1000000 --rate-burst 1000000` (the default per-connection rate limit would refuse a burst). "
         "Each server is started fresh for each run. Against limit and the seeds the harness runs with "
         "`--target-kind seed`: no ack exists, so a sender's window is freed by its own copy of the message.\n")
L.append(f"**Repeats and noise.** The short bursts (fanout-1k, rooms-100x10, durable-64, fanout-3k), paced-10 and join-storm ran {repeat}× per server "
         "(the seeds once: they are 30–100× off), interleaved (every server, then the next round); tables give the **median**, with the range in small print. "
         "The other scenarios ran once. Burst figures come from CPU seconds at 10 ms resolution over bursts of ~0.1–1 s: "
         "differences under ~15 % are noise (rooms-100x10, ≈ 0.6 s of server CPU: ~5 %).\n")
note_f = os.path.join(out, "note")
if os.path.exists(note_f) and open(note_f).read().strip():
    L.append(f"**Conditions of this run:** {open(note_f).read().strip()}\n")
if big < 19000:
    L.append(f"**Sizes:** the big scenarios hold {big} connections (fd limit {fdlim}{', QUICK run' if quick else ''}).\n")

L.append("\n## Ceiling: parlor as a fraction of `limit`\n")
L.append("Medians. *parlor ÷ limit*: parlor's figure divided by limit's, whatever the direction — for deliveries/s below 1× is worse, "
         "for costs (µs, KiB, seconds, ms) above 1× is worse. `limit` cannot serve acks, replay or durability, so it has no "
         "figure there. Caveat for the bursts: limit has no ack, so a sender's window (10 messages) is freed only when its own "
         "copy comes back through the fan-out, while parlor acks before fanning out. limit's senders are therefore held back "
         "more, its deliveries/s in a window-limited burst is not a ceiling, and it gets less write batching (hence "
         "fanout-19k, where limit's CPU per delivery can come out above parlor's). The paced, idle and join-storm rows do "
         "not have this bias.\n")
present = [s for s in servers if any(k[0] == s for k in R)]
pv = [s for s in ("parlor-memory", "parlor-redb-immediate") if s in present]
before = [(s, "parlor-before-" + s[len("parlor-"):]) for s in pv if "parlor-before-" + s[len("parlor-"):] in present]
hdr = ["scenario", "metric", "ceiling (limit)"] + [s for s in present if s != "limit"]
hdr += [f"{s} ÷ limit" for s in pv] + [f"{a} ÷ {b}" for a, b in before]
L.append("| " + " | ".join(hdr) + " |")
L.append("|" + "---|" * len(hdr))
for scen, metric in summary:
    if not any((s, scen) in R for s in present): continue
    unit = M[metric][1]
    lim = stat("limit", scen, metric)
    row = [f"[{scen}](#{scen})", f"{metric} ({M[metric][2]} is better)", cell(lim, unit)]
    row += [cell(stat(s, scen, metric), unit) for s in present if s != "limit"]
    row += [ratio(stat(s, scen, metric), lim) for s in pv]
    row += [ratio(stat(a, scen, metric), stat(b, scen, metric)) for a, b in before]
    L.append("| " + " | ".join(row) + " |")

def chart_ref(scen):
    p = os.path.join(charts, scen + ".svg")
    if os.path.exists(p):
        L.append(f"![{scen}: every server side by side]({os.path.relpath(p, mdir)})\n")

def attempted(s, scen):
    """The script ran it (a result or an error log exists)."""
    return bool(glob.glob(os.path.join(out, f"{s}.{scen}.*.txt")))

def median_run(runs, key):
    """The run whose `key` is the median (a real run, so its figures agree)."""
    rs = [r for r in runs if key(r) is not None] or runs
    rs = sorted(rs, key=lambda r: key(r) or 0)
    return rs[(len(rs) - 1) // 2], len(runs)

for scen in ["fanout-1k", "fanout-19k", "fanout-3k", "rooms-100x10", "rooms-1kx10", "paced-10", "paced-1", "paced-3k", "durable-64", "reconnect"]:
    rows = [(s, R.get((s, scen))) for s in servers]
    if not any(r for _, r in rows): continue
    L.append(f"\n## {scen}\n\n{scen_desc[scen]}\n")
    chart_ref(scen)
    L.append("| server | runs | conns ok/failed | sent / acked | deliveries/s | acks/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | gaps | dups | reorders | server CPU µs/delivery | server cores | harness cores | CPU-bound |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    extra = []
    for s, runs in rows:
        if not runs:
            if attempted(s, scen):
                L.append(f"| {s} | 0 | (no result: see target/bench/{s}.{scen}.1.txt) |" + " |" * 15)
            continue
        r, n = median_run(runs, lambda r: g(r, "server", "cpu_us_per_delivery"))
        c = r["connections"]; m = r["messages"]; d = r["deliveries"]; lat = r.get("latency") or {}
        sv = r.get("server") or {}; h = r.get("harness") or {}
        note = f" ⚠ {r['stopped_by']}" if r.get("stopped_by") else ""
        sc, hc = sv.get("cores_busy") or 0, h.get("cores_busy") or 0
        off = offered.get(scen)
        if off and d["per_sec"] >= 0.9 * off:
            bound = "neither (kept the offered rate)"
        elif s.startswith("seed"):
            bound = "server: its single event-loop thread"
        elif sc + hc >= 1.5:
            bound = "machine: both cores busy" + (", server most" if sc > hc else ", harness most")
        else:
            bound = "neither: waits (acks / store commits), not CPU"
        closed = f", {c['closed_by_server']} closed by server {c['close_reasons']}" if c["closed_by_server"] else ""
        lat_s = r.get("latency_steady")
        L.append(f"| {s} | {n} | {c['joined']}/{c['failed']+c['join_failed']}{closed} | {m['sent']} / {m['acked']} | "
                 f"{human(d['per_sec'])} | {human(m['acks_per_sec'])} | {f_ms(lat.get('p50_us'))} | {f_ms(lat.get('p99_us'))} | "
                 f"{f_ms(lat.get('p999_us'))} | {f_ms(lat.get('max_us'))} | {d['lost']} of {d['expected']} | {d['gaps']} | "
                 f"{d['duplicates']} | {d['reorders']} | {f_num(sv.get('cpu_us_per_delivery'), 3)} | "
                 f"{f_num(sv.get('cores_busy'))} | {f_num(h.get('cores_busy'))} | {bound}{note} |")
        if scen == "durable-64" and r.get("metrics"):
            mt = r["metrics"]
            if mt.get("error"):
                extra.append(f"| {s} | metrics not scraped: {mt['error']} | | | |")
            else:
                dl = mt.get("deltas", {})
                extra.append(f"| {s} | {f_num(mt.get('commits'), 0)} | {f_num(mt.get('messages_per_commit'), 1)} | "
                             f"{f_num(mt.get('commit_ms_mean'), 2)} | {f_num(dl.get('parlor_messages_stored_total'), 0)} |")
        if scen == "reconnect":
            cn = r["connections"]
            extra.append(f"| {s} | {cn['reconnects']} ({cn['reconnect_failed']} failed) | {d['replayed']} | "
                         f"{f_ms(g(lat_s, 'p50_us'))} | {f_ms(g(lat_s, 'p99_us'))} | {f_ms(g(lat_s, 'max_us'))} | "
                         f"{f_ms(lat.get('p99_us'))} |")
    if scen == "durable-64" and extra:
        L.append("\nStore, from `/metrics` (Δ of `parlor_store_batch_messages` and `parlor_store_commit_seconds` sum/count over the run, the median run):\n")
        L.append("| server | commits | messages per commit | ms per commit | messages stored |")
        L.append("|---|---|---|---|---|")
        L.extend(extra)
    if scen == "reconnect" and extra:
        L.append("\n| server | reconnects | messages replayed | steady p50 ms | steady p99 ms | steady max ms | all members p99 ms |")
        L.append("|---|---|---|---|---|---|---|")
        L.extend(extra)

for scen in ["join-storm", "idle-19k"]:
    rows = [(s, R.get((s, scen))) for s in servers]
    if not any(r for _, r in rows): continue
    L.append(f"\n## {scen}\n\n{scen_desc[scen]}\n")
    chart_ref(scen)
    L.append("| server | joined / failed | connect+join | joins/s | server RSS before → after | RSS per connection | server CPU s | bytes to the harness | heartbeats received |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for s, runs in rows:
        if not runs:
            if attempted(s, scen):
                L.append(f"| {s} | (no result: see target/bench/{s}.{scen}.1.txt) | | | | | | | |")
            continue
        # With repeats (join-storm), the run with the median time.
        r, _ = median_run(runs, lambda r: r["timing"].get("join_secs") or r["timing"]["connect_secs"])
        c = r["connections"]; i = r.get("idle") or {}; t = r["timing"]
        per = i.get("rss_per_connection_bytes")
        closed = f", {c['closed_by_server']} closed by server {c['close_reasons']}" if c["closed_by_server"] else ""
        L.append(f"| {s} | {c['joined']} / {c['failed']+c['join_failed']}{closed} | {t.get('join_secs') or t['connect_secs']:.2f} s | "
                 f"{human(c.get('joins_per_sec'))} | {i.get('rss_before_kib',0)//1024} → {i.get('rss_after_kib',0)//1024} MiB | "
                 f"{'–' if per is None else f'{per/1024:.1f} KiB'} | {f_num(g(r, 'server', 'cpu_secs'))} | "
                 f"{f_bytes(g(r, 'deliveries', 'bytes_read'))} | {g(r, 'deliveries', 'heartbeats') or 0} |")

# Cluster mode beside one node: the cost per message.
cl = [s for s in ("parlor-memory", "parlor-redb-immediate", "parlor-cluster1", "parlor-cluster3") if s in present]
if any(s.startswith("parlor-cluster") for s in cl):
    L.append("\n## Cluster mode: cost per message\n")
    L.append("`parlor-clusterN` = N parlor nodes (`--cluster redis://…`) on one `redis-server` with AOF `appendfsync always`, "
             "members spread round-robin over the nodes. *server CPU* is every node's plus Redis's. Redis calls are what the "
             "nodes sent (every command or script call, from `parlor_redis_calls_total`), per stored message; an *append* is one "
             "script call per room per batch (one round trip, the rooms of a batch in parallel). Medians of the runs; this "
             "2-core machine shares its cores between the nodes, Redis and the harness, so the figures show cost, not scaling.\n")
    L.append("| scenario | server | deliveries/s | server CPU µs/delivery | p50 ms | p99 ms | Redis calls / message | appends / message | ms per Redis call | gap fills | lost / gaps / dups |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for scen in ("fanout-3k", "paced-3k", "rooms-100x10"):
        for s in cl:
            runs = R.get((s, scen))
            if not runs: continue
            r, n = median_run(runs, lambda r: g(r, "server", "cpu_us_per_delivery"))
            d = r["deliveries"]; lat = r.get("latency") or {}; mt = r.get("metrics") or {}
            L.append(f"| {scen} | {s} | {human(d['per_sec'])} | {f_num(g(r, 'server', 'cpu_us_per_delivery'), 3)} | "
                     f"{f_ms(lat.get('p50_us'))} | {f_ms(lat.get('p99_us'))} | {f_num(mt.get('redis_calls_per_message'), 3)} | "
                     f"{f_num(mt.get('redis_appends_per_message'), 3)} | {f_num(mt.get('redis_ms_mean'), 3)} | "
                     f"{f_num(mt.get('gap_fills'), 0)} | {d['lost']} / {d['gaps']} / {d['duplicates']} |")

# parlor vs the teaching servers, as before.
peers = [p for p in ("seed-ts", "seed-py") if p in present]
if peers:
    L.append("\n## parlor / peer ratios\n")
    L.append("Deliveries/s ratio (higher is better for parlor) and server CPU per delivery ratio (peer / parlor: how many times less CPU parlor spends); medians.\n")
    hdr = ["scenario", "parlor variant"]
    for p in peers: hdr += [f"vs {p}: deliveries/s", f"vs {p}: CPU/delivery"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for scen in ["fanout-1k", "fanout-19k", "rooms-100x10", "rooms-1kx10"]:
        for p in [s for s in present if s.startswith("parlor")]:
            if (p, scen) not in R: continue
            cells = []
            for q in peers:
                cells.append(ratio(stat(p, scen, "deliveries/s"), stat(q, scen, "deliveries/s")))
                cells.append(ratio(stat(q, scen, "server CPU µs/delivery"), stat(p, scen, "server CPU µs/delivery")))
            L.append(f"| {scen} | {p} | " + " | ".join(cells) + " |")
    for p in [s for s in present if s.startswith("parlor")]:
        a = stat(p, "idle-19k", "RSS KiB/connection")
        if not a: continue
        cells = []
        for q in peers:
            b = stat(q, "idle-19k", "RSS KiB/connection")
            cells += ["–" if not b else f"RSS/conn: parlor {a[0]:.1f} KiB vs {b[0]:.1f} KiB ({a[0]/b[0]:.1f}×)", ""]
        L.append(f"| idle-19k | {p} | " + " | ".join(cells) + " |")

notes = open(os.path.join(out, "notes.txt")).read() if os.path.exists(os.path.join(out, "notes.txt")) else ""
L.append("\n## Notes written by the script\n")
L.append("- *deliveries/s* is counted over the delivery window (first to last delivery seen by any member); "
         "*lost* = expected − received, expected = messages the server accepted (parlor: acked; limit and seeds: sent) × members joined; "
         "*gaps* = missing sequences below the highest one a member saw; *reorders* = deliveries behind a higher sequence "
         "(expected for seed-ts, which sequences before an async write and publishes after it).")
L.append("- *server cores* / *harness cores* = CPU seconds / wall seconds of the send+deliver phase; on 2 cores the "
         "sum near 2.0 means the machine was saturated; a single-threaded seed at ~1.0 is CPU-bound on its one thread.")
L.append("- With repeats, the detail tables show the run with the median server CPU per delivery (one real run, so its "
         "columns agree with each other); the *runs* column says how many there were. The summary and the charts use per-metric medians.")
L.append("- Charts: `parlor-loadtest chart` (plotters), one bar per server, the median; a whisker spans min–max when a scenario ran more than once.")
secs = os.path.join(out, "scenario-secs")
if os.path.exists(secs):
    L.append("- Wall time per scenario (all servers, all repeats): " + ", ".join(
        f"{a} {int(b)//60}:{int(b)%60:02d}" for a, b in (l.split() for l in open(secs) if l.strip())) + ".")
for line in notes.splitlines():
    L.append(f"- {line}")
L.append("\n## Exact commands\n")
L.append("Run: `scripts/bench.sh` (all of it; `QUICK=1` for small sizes; `REPORT_ONLY=1 scripts/bench.sh` rewrites this page "
         "and the charts from `target/bench`). Servers, each started fresh per run on a free port P (a new temp dir D each time):\n")
L.append("```")
L.append("LIMIT_WORKERS=2 target/limit/release/limit 127.0.0.1:P")
L.append("parlor serve --addr 127.0.0.1:P --rate-per-sec 1000000 --rate-burst 1000000 --log-format text --store memory")
L.append("parlor serve --addr 127.0.0.1:P --rate-per-sec 1000000 --rate-burst 1000000 --log-format text --store redb --data-dir D --durability immediate|batched|none")
L.append("redis-server --port R --bind 127.0.0.1 --dir D/redis --appendonly yes --appendfsync always --save ''   # parlor-clusterN")
L.append("parlor serve --addr 127.0.0.1:P --rate-per-sec 1000000 --rate-burst 1000000 --log-format text --cluster redis://127.0.0.1:R   # × N nodes")
L.append("$PARLOR_BASELINE serve …   # parlor-before-memory / parlor-before-redb-immediate: the same flags")
L.append("SEED_DATA_DIR=D ../shared/peers/run-seed-ts.sh P")
L.append("SEED_DATA_DIR=D ../shared/peers/run-seed-py.sh P")
L.append("```\n")
L.append("Load (PID = the server's; repeats run the same command):\n")
L.append("```")
L.append(open(os.path.join(out, "commands.txt")).read().rstrip())
L.append("```\n")
L.append("Charts (one per scenario):\n")
L.append("```")
L.append("parlor-loadtest chart --in target/bench/*.fanout-1k.*.json --out docs/bench/fanout-1k.svg \\\n"
         "    --title '…' --order limit,parlor-memory,… --metric deliveries-per-sec --metric cpu-us-per-delivery")
L.append("```")
# A hand-written analysis below the marker survives regeneration.
marker = "<!-- analysis: kept by scripts/bench.sh -->"
kept = ""
if os.path.exists(md):
    old = open(md).read()
    if marker in old:
        kept = old[old.index(marker):]
L.append("")
L.append(kept.rstrip() if kept else marker)
open(md, "w").write("\n".join(L) + "\n")
print(f"wrote {md}", file=sys.stderr)
PY
