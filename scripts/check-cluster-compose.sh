#!/usr/bin/env bash
# No Docker engine runs on CI machines, so docker-compose.cluster.yml is
# checked by reading it, and its load balancer for real: deploy/nginx.conf
# (its upstreams pointed at three local parlor nodes on a local Redis)
# must pass `nginx -t`, and a chat run through it — WebSocket upgrades,
# members spread by nginx over the nodes — must deliver every message in
# order, once.
#
#   scripts/check-cluster-compose.sh [PARLOR_BIN] [LOADTEST_BIN]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PARLOR=${1:-target/release/parlor}
LOADTEST=${2:-target/debug/parlor-loadtest}
fail() { echo "check-cluster-compose: $*" >&2; exit 1; }

# 1. The compose file: Redis with AOF always, three nodes on it, nginx.
python3 - <<'PY' || fail "docker-compose.cluster.yml is not what the README describes"
import sys
try:
    import yaml
except ImportError:
    print("check-cluster-compose: no PyYAML, reading the file as text", file=sys.stderr)
    text = open("docker-compose.cluster.yml").read()
    for needle in ("appendfsync", "always", "PARLOR_CLUSTER", "parlor1: *parlor", "parlor3: *parlor",
                   "./deploy/nginx.conf:/etc/nginx/nginx.conf"):
        assert needle in text, needle
    sys.exit(0)
c = yaml.safe_load(open("docker-compose.cluster.yml"))
s = c["services"]
assert {"redis", "parlor1", "parlor2", "parlor3", "lb"} <= set(s), s.keys()
cmd = s["redis"]["command"]
assert cmd[cmd.index("--appendfsync") + 1] == "always", cmd
for n in ("parlor1", "parlor2", "parlor3"):
    env = s[n]["environment"]
    assert env["PARLOR_CLUSTER"].startswith("redis://redis:"), env
    assert s[n]["depends_on"]["redis"]["condition"] == "service_healthy"
assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in s["lb"]["volumes"]
assert any(p.endswith(":80") for p in s["lb"]["ports"])
PY

command -v nginx >/dev/null || { echo "check-cluster-compose: nginx is not installed; compose file checked, nginx.conf not"; exit 0; }
command -v redis-server >/dev/null || fail "redis-server is not installed"
[ -x "$PARLOR" ] || fail "$PARLOR is missing (cargo build --release)"
[ -x "$LOADTEST" ] || fail "$LOADTEST is missing (cargo build -p parlor-loadtest)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
TMP=$(mktemp -d /tmp/parlor-compose.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$TMP" --appendonly yes --appendfsync always \
  --save "" --logfile "$TMP/redis.log" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$RPORT" || fail "redis-server did not start"
conf="$TMP/nginx.conf"
cp deploy/nginx.conf "$conf"
for i in 1 2 3; do
  p=$(free_port)
  "$PARLOR" serve --addr "127.0.0.1:$p" --cluster "redis://127.0.0.1:$RPORT" \
    --rate-per-sec 100000 --rate-burst 100000 >"$TMP/node$i.log" 2>&1 &
  PIDS+=($!)
  wait_port "$p" || fail "parlor node $i did not start: $(cat "$TMP/node$i.log")"
  sed -i "s/server parlor$i:8080/server 127.0.0.1:$p/" "$conf"
done
LB=$(free_port)
sed -i "s/listen 80;/listen 127.0.0.1:$LB;/" "$conf"
# Paths of our own, so nginx runs as this user without touching /var.
sed -i "s#^http {#http {\n    client_body_temp_path $TMP/body;\n    proxy_temp_path $TMP/proxy;\n    access_log off;#" "$conf"
sed -i "s/^worker_rlimit_nofile .*/worker_rlimit_nofile 4096;/; s/worker_connections 65536;/worker_connections 2048;/" "$conf"
nginx -t -p "$TMP" -c "$conf" -g "pid $TMP/nginx.pid; error_log $TMP/nginx.err;" 2>"$TMP/nginx-t.log" \
  || fail "nginx -t refuses deploy/nginx.conf: $(cat "$TMP/nginx-t.log")"
nginx -p "$TMP" -c "$conf" -g "daemon off; pid $TMP/nginx.pid; error_log $TMP/nginx.err;" &
PIDS+=($!)
wait_port "$LB" || fail "nginx did not start: $(cat "$TMP/nginx.err")"
"$LOADTEST" --url "ws://127.0.0.1:$LB/ws" --no-progress --deadline 60 --source-addrs 0 \
  fanout --rooms 3 --members 30 --senders 3 --messages 30 --payload 32 >"$TMP/load.txt" 2>&1 \
  || fail "the chat through nginx failed: $(cat "$TMP/load.txt")"
grep -qE " 0 lost, 0 gaps, 0 duplicates, 0 reorders" "$TMP/load.txt" \
  && ! grep -qE "^ *deliveries +0 expected" "$TMP/load.txt" \
  || fail "the chat through nginx lost messages: $(cat "$TMP/load.txt")"
# nginx spread the sessions: every node served some.
for i in 1 2 3; do
  p=$(grep -o "server 127.0.0.1:[0-9]*" "$conf" | sed -n "${i}p" | cut -d: -f2)
  n=$(python3 - "$p" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("parlor_connections_total "))))
PY
)
  [ "$n" -gt 0 ] || fail "nginx sent no session to node $i"
done
echo "check-cluster-compose: ok (compose file; nginx -t; a chat through nginx over 3 nodes on Redis)"
