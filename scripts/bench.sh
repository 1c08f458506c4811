#!/usr/bin/env bash
# Side-by-side load benchmark: parlor (memory store; redb store with each
# durability) and the two teaching servers (../shared/peers: seed-ts,
# seed-py), the same scenarios against each, in one run; writes
# BENCHMARKS.md.
#
#   scripts/bench.sh                 # everything (~10-15 min on 2 cores)
#   SERVERS="parlor-memory seed-ts" scripts/bench.sh    # a subset
#   QUICK=1 scripts/bench.sh         # smaller sizes, for trying the script
#
# Environment: PEERS (default ../shared/peers next to the repo, else
# /work/shared/peers), OUT (results dir, default target/bench), SERVERS.
# Every server is started fresh for every scenario (clean RSS baseline,
# CPU counted from /proc/<pid>), on a free port, and stopped by its PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

PEERS=${PEERS:-}
if [ -z "$PEERS" ]; then
  for d in "$ROOT/../shared/peers" /work/shared/peers; do
    [ -x "$d/run-seed-ts.sh" ] && PEERS=$(cd "$d" && pwd) && break
  done
fi
OUT=${OUT:-$ROOT/target/bench}
SERVERS=${SERVERS:-"parlor-memory parlor-redb-immediate parlor-redb-batched parlor-redb-none seed-ts seed-py"}
QUICK=${QUICK:-0}
# REPORT_ONLY=1: rewrite BENCHMARKS.md from the results already in $OUT.
REPORT_ONLY=${REPORT_ONLY:-0}
if [ "$REPORT_ONLY" != 1 ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"

# The fd limit: as high as this process may go. Each side needs one fd per
# connection; where the hard limit cannot be raised (no CAP_SYS_RESOURCE),
# the idle scenario is sized below it and the report says so.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FDLIM=$(ulimit -n)
IDLE=20000
if [ "$FDLIM" -lt $((IDLE + 300)) ]; then IDLE=$(( (FDLIM - 500) / 100 * 100 )); fi
[ "$QUICK" = 1 ] && IDLE=2000

if [ "$REPORT_ONLY" != 1 ]; then
echo "building release binaries..." >&2
cargo build --release -p parlor --bin parlor >&2
cargo build --release -p parlor-loadtest >&2
# Copies, so a rebuild by someone else mid-run changes nothing here.
BIN="$OUT/bin" && mkdir -p "$BIN"
cp target/release/parlor target/release/parlor-loadtest "$BIN/"
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
start_server() { # name
  local name=$1
  PORT=$(free_port)
  DATA=$(mktemp -d /tmp/parlor-bench.XXXXXX)
  local log="$OUT/logs/$name.$PORT.log"
  mkdir -p "$OUT/logs"
  local common=(serve --addr "127.0.0.1:$PORT" --rate-per-sec 1000000 --rate-burst 1000000 --log-format text)
  case $name in
    parlor-memory) RUST_LOG=warn "$PARLOR" "${common[@]}" --store memory >"$log" 2>&1 & ;;
    parlor-redb-*) RUST_LOG=warn "$PARLOR" "${common[@]}" --store redb --data-dir "$DATA" \
                     --durability "${name#parlor-redb-}" >"$log" 2>&1 & ;;
    seed-ts) SEED_DATA_DIR=$DATA "$PEERS/run-seed-ts.sh" "$PORT" >"$log" 2>&1 & ;;
    seed-py) SEED_DATA_DIR=$DATA "$PEERS/run-seed-py.sh" "$PORT" >"$log" 2>&1 & ;;
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
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  rm -rf "$DATA"
}
trap stop_server EXIT

COMMANDS="$OUT/commands.txt"
: >"$COMMANDS"
run_one() { # server scenario-name loadtest-args...
  local server=$1 scen=$2; shift 2
  local kind=parlor url path=/ws deadline=60
  case $server in seed-*) kind=seed; path=/; deadline=150 ;; esac
  start_server "$server"
  url="ws://127.0.0.1:$PORT$path"
  local cmd=("$LT" --url "$url" --target-kind "$kind" --server-pid "$SERVER_PID" --json --no-progress
             --deadline "$deadline" --label "$server" "$@")
  echo "$server $scen: parlor-loadtest ${cmd[*]:1}" | sed "s#--url [^ ]*#--url ws://127.0.0.1:PORT$path#; s#--server-pid [0-9]*#--server-pid PID#" >>"$COMMANDS"
  echo "== $server / $scen" >&2
  local t0=$SECONDS
  if "${cmd[@]}" >"$OUT/$server.$scen.json" 2>"$OUT/$server.$scen.txt"; then
    grep -E "deliveries |throughput|latency|server |idle memory|stopped|conn errors|closed" "$OUT/$server.$scen.txt" >&2 || true
  else
    echo "   loadtest failed (see $OUT/$server.$scen.txt)" >&2
    rm -f "$OUT/$server.$scen.json"
  fi
  # What became of the server (seed-py may drop senders; a crash shows here).
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "   server exited during the run" >&2; echo "$server $scen: server exited" >>"$OUT/notes.txt"; fi
  stop_server
  echo "   ($((SECONDS - t0)) s)" >&2
}

BENCH_START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$SECONDS
for s in $SERVERS; do
  big=10000; big_msgs=10; fan=1000; paced_n=5
  case $s in
    # The seeds' join is O(room size) (a `system` announcement to every
    # member, so M(M+1)/2 frames to fill a room): 10 000 members would be
    # 50 M frames. Capped so the run ends; the table says so.
    seed-ts) big=2000 ;;
    seed-py) big=1000 ;;
  esac
  if [ "$QUICK" = 1 ]; then big=$((big / 10)); fan=200; paced_n=2; fi
  run_one "$s" fanout-1k    fanout --rooms 1 --members $fan --senders 10 --messages 100 --payload 64
  run_one "$s" fanout-10k   fanout --rooms 1 --members $big --senders 10 --messages $big_msgs --payload 64
  run_one "$s" rooms-1kx10  rooms --rooms 1000 --members 10 --senders 1 --messages 10 --payload 64
  run_one "$s" idle         idle --connections $IDLE --members 10 --hold 2
  run_one "$s" paced-1      fanout --rooms 1 --members $fan --senders 10 --messages $paced_n --rate 1 --payload 64
  run_one "$s" paced-10     fanout --rooms 1 --members $fan --senders 10 --messages $((paced_n * 6)) --rate 10 --payload 64
  run_one "$s" durable-64   fanout --rooms 64 --members 1 --senders 1 --messages 300 --window 1 --payload 64
done
ELAPSED=$((SECONDS - T0))
echo "$BENCH_START $ELAPSED" >"$OUT/meta"
fi
read -r BENCH_START ELAPSED <"$OUT/meta"

python3 - "$OUT" "$ROOT/BENCHMARKS.md" "$BENCH_START" "$ELAPSED" "$FDLIM" "$IDLE" "$SERVERS" <<'PY'
import json, os, sys, glob, platform, subprocess
out, md, start, elapsed, fdlim, idle, servers = sys.argv[1:8]
servers = servers.split()
R = {}
for f in glob.glob(os.path.join(out, "*.json")):
    srv, scen = os.path.basename(f)[:-5].split(".", 1)
    try:
        R[(srv, scen)] = json.load(open(f))
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
def f_rate(v): return "–" if not v else (f"{v/1e6:.2f} M" if v >= 1e6 else f"{v/1e3:.1f} k" if v >= 1e3 else f"{v:.0f}")
def f_ms(us): return "–" if us is None else f"{us/1000:.1f}" if us >= 1000 else f"{us/1000:.2f}"
def f_num(v, d=2): return "–" if v is None else f"{v:.{d}f}"
def ratio(a, b): return "–" if not a or not b else f"{a/b:.1f}×"
scen_desc = {
 "fanout-1k": "fan-out burst: 1 room × 1 000 members, 10 senders × 100 msgs, 64 B, window 10",
 "fanout-10k": "fan-out burst: 1 room × 10 000 members, 10 senders × 10 msgs (seed-ts: 2 000 members, seed-py: 1 000)",
 "rooms-1kx10": "many rooms: 1 000 rooms × 10 members, 1 sender × 10 msgs per room",
 "idle": f"{idle} idle connections joined to rooms of 10, held 2 s",
 "paced-1": "paced: 10 senders × 1 msg/s into 1 room × 1 000 members (10 k deliveries/s), 5 s",
 "paced-10": "paced: 10 senders × 10 msg/s into 1 room × 1 000 members (100 k deliveries/s), 3 s",
 "durable-64": "durable appends: 64 rooms × 1 member, each publisher awaits its ack (window 1), 300 msgs each",
}
L = []
L.append("# Benchmarks\n")
L.append(f"Generated by `scripts/bench.sh` on {start} (took {int(elapsed)//60} min {int(elapsed)%60} s). "
         f"Machine: {cores} cores, {cpu}; Linux {platform.release()}. "
         "Server and harness share the machine, so besides throughput the tables give the "
         "server's own CPU time per delivery (from `/proc/<pid>/stat`), which the harness cannot distort.\n")
L.append("Servers: `parlor-memory` = `parlor serve --store memory`; `parlor-redb-X` = `--store redb --durability X`; "
         "`seed-ts` / `seed-py` = the teaching servers (`../shared/peers/run-seed-{ts,py}.sh`). parlor runs with "
         "`--rate-per-sec 1000000 --rate-burst 1000000` (the default per-connection rate limit would refuse a burst). "
         "Each server is started fresh for each scenario. Against the seeds the harness runs with "
         "`--target-kind seed`: no ack exists, so a sender's window is freed by its own copy of the message.\n")
if int(idle) < 20000:
    L.append(f"**fd limit:** this machine's hard `RLIMIT_NOFILE` is {fdlim} and cannot be raised here (even as root: "
             f"no CAP_SYS_RESOURCE), so the idle scenario holds {idle} connections instead of 20 000 "
             "(each side needs one descriptor per connection).\n")
for scen in ["fanout-1k", "fanout-10k", "rooms-1kx10", "paced-1", "paced-10", "durable-64"]:
    rows = [(s, R.get((s, scen))) for s in servers]
    if not any(r for _, r in rows): continue
    L.append(f"\n## {scen}\n\n{scen_desc[scen]}\n")
    L.append("| server | conns ok/failed | sent / acked | deliveries/s | acks/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | gaps | dups | reorders | server CPU µs/delivery | server cores | harness cores | CPU-bound |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s, r in rows:
        if not r:
            L.append(f"| {s} | (no result) |" + " |" * 16); continue
        c = r["connections"]; m = r["messages"]; d = r["deliveries"]; lat = r.get("latency") or {}
        sv = r.get("server") or {}; h = r.get("harness") or {}
        note = f" ⚠ {r['stopped_by']}" if r.get("stopped_by") else ""
        sc, hc = sv.get("cores_busy") or 0, h.get("cores_busy") or 0
        offered = {"paced-1": 10_000, "paced-10": 100_000}.get(scen)
        if offered and d["per_sec"] >= 0.9 * offered and not s.startswith("seed-py"):
            bound = "neither (kept the offered rate)"
        elif offered and d["per_sec"] >= 0.9 * offered:
            bound = "neither (kept the offered rate)"
        elif s.startswith("seed"):
            bound = "server: its single event-loop thread"
        elif sc + hc >= 1.5:
            bound = "machine: both cores busy" + (", server most" if sc > hc else ", harness most")
        else:
            bound = "neither: waits (acks / store commits), not CPU"
        closed = f", {c['closed_by_server']} closed by server {c['close_reasons']}" if c["closed_by_server"] else ""
        L.append(f"| {s} | {c['joined']}/{c['failed']+c['join_failed']}{closed} | {m['sent']} / {m['acked']} | "
                 f"{f_rate(d['per_sec'])} | {f_rate(m['acks_per_sec'])} | {f_ms(lat.get('p50_us'))} | {f_ms(lat.get('p99_us'))} | "
                 f"{f_ms(lat.get('p999_us'))} | {f_ms(lat.get('max_us'))} | {d['lost']} of {d['expected']} | {d['gaps']} | "
                 f"{d['duplicates']} | {d['reorders']} | {f_num(sv.get('cpu_us_per_delivery'), 3)} | "
                 f"{f_num(sv.get('cores_busy'))} | {f_num(h.get('cores_busy'))} | {bound}{note} |")
# idle
rows = [(s, R.get((s, "idle"))) for s in servers]
if any(r for _, r in rows):
    L.append(f"\n## idle\n\n{scen_desc['idle']}\n")
    L.append("| server | joined / failed | server RSS before → after | RSS per connection | connect time |")
    L.append("|---|---|---|---|---|")
    for s, r in rows:
        if not r: L.append(f"| {s} | (no result) | | | |"); continue
        c = r["connections"]; i = r.get("idle") or {}
        per = i.get("rss_per_connection_bytes")
        L.append(f"| {s} | {c['joined']} / {c['failed']+c['join_failed']} | {i.get('rss_before_kib',0)//1024} → {i.get('rss_after_kib',0)//1024} MiB | "
                 f"{'–' if per is None else f'{per/1024:.1f} KiB'} | {r['timing']['connect_secs']:.1f} s |")
# ratios
L.append("\n## parlor / peer ratios\n")
L.append("Deliveries/s ratio (higher is better for parlor) and server CPU per delivery ratio (peer / parlor: how many times less CPU parlor spends).\n")
L.append("| scenario | parlor variant | vs seed-ts: deliveries/s | vs seed-ts: CPU/delivery | vs seed-py: deliveries/s | vs seed-py: CPU/delivery |")
L.append("|---|---|---|---|---|---|")
for scen in ["fanout-1k", "fanout-10k", "rooms-1kx10"]:
    for p in [s for s in servers if s.startswith("parlor")]:
        pr = R.get((p, scen))
        if not pr: continue
        cells = []
        for peer in ["seed-ts", "seed-py"]:
            q = R.get((peer, scen))
            cells.append(ratio(g(pr, "deliveries", "per_sec"), g(q, "deliveries", "per_sec")))
            cells.append(ratio(g(q, "server", "cpu_us_per_delivery"), g(pr, "server", "cpu_us_per_delivery")))
        L.append(f"| {scen} | {p} | " + " | ".join(cells) + " |")
for p in [s for s in servers if s.startswith("parlor")]:
    pr = R.get((p, "idle"))
    if not pr: continue
    cells = []
    for peer in ["seed-ts", "seed-py"]:
        q = R.get((peer, "idle"))
        a = g(pr, "idle", "rss_per_connection_bytes"); b = g(q, "idle", "rss_per_connection_bytes")
        cells.append("–" if not a or not b else f"parlor {a/1024:.1f} KiB vs {b/1024:.1f} KiB ({a/b:.1f}×)")
    L.append(f"| idle | {p} | " + " | ".join(cells[:1]) + " | | " + cells[1] + " | |")
notes = open(os.path.join(out, "notes.txt")).read() if os.path.exists(os.path.join(out, "notes.txt")) else ""
L.append("\n## Notes written by the script\n")
L.append("- *deliveries/s* is counted over the delivery window (first to last delivery seen by any member); "
         "*lost* = expected − received, expected = messages the server accepted (parlor: acked; seeds: sent) × members joined; "
         "*gaps* = missing sequences below the highest one a member saw; *reorders* = deliveries behind a higher sequence "
         "(expected for seed-ts, which sequences before an async write and publishes after it).")
L.append("- *server cores* / *harness cores* = CPU seconds / wall seconds of the send+deliver phase; on 2 cores the "
         "sum near 2.0 means the machine was saturated; a single-threaded seed at ~1.0 is CPU-bound on its one thread.")
for line in notes.splitlines():
    L.append(f"- {line}")
L.append("\n## Exact commands\n")
L.append("Run: `scripts/bench.sh` (all of it; `REPORT_ONLY=1 scripts/bench.sh` rewrites this page from `target/bench`). "
         "Servers, each started fresh per scenario on a free port P (a new temp dir D each time):\n")
L.append("```")
L.append("parlor serve --addr 127.0.0.1:P --rate-per-sec 1000000 --rate-burst 1000000 --log-format text --store memory")
L.append("parlor serve --addr 127.0.0.1:P --rate-per-sec 1000000 --rate-burst 1000000 --log-format text --store redb --data-dir D --durability immediate|batched|none")
L.append("SEED_DATA_DIR=D ../shared/peers/run-seed-ts.sh P")
L.append("SEED_DATA_DIR=D ../shared/peers/run-seed-py.sh P")
L.append("```\n")
L.append("Load (PID = the server's):\n")
L.append("```")
L.append(open(os.path.join(out, "commands.txt")).read().rstrip())
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
