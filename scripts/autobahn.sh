#!/usr/bin/env bash
# WebSocket conformance run: the Autobahn fuzzingclient cases (via kosoku,
# a Rust runner of Autobahn's own case files, from PyPI) against parlor's
# echo endpoint.
#
# Usage: scripts/autobahn.sh [path-to-parlor-binary] [extra kosoku args...]
#   default binary: target/release/parlor
#   extra args go to kosoku, e.g. -i '1.*' to run a subset.
#
# Reports: target/autobahn/index.json (+ index.html, one .json/.html per case),
#          target/autobahn/kosoku.log, target/autobahn/server.log
# Exit status: non-zero if kosoku failed or any case did not pass.
set -euo pipefail

KOSOKU_VERSION="0.1.0"
HEALTH_DEADLINE_S=30
KOSOKU_TIMEOUT_S=900
MAX_BYTES=16777216

BIN="${1:-target/release/parlor}"
[[ $# -gt 0 ]] && shift
EXTRA_ARGS=("$@")

# Resolve the binary against the caller's cwd, then work from the repo root.
if [[ "$BIN" != /* ]]; then BIN="$PWD/$BIN"; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ ! -x "$BIN" ]]; then
    echo "autobahn: parlor binary not found or not executable: $BIN" >&2
    echo "autobahn: build it first (cargo build --release) or pass its path" >&2
    exit 2
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "autobahn: kosoku needs Python >= 3.10; $PY is $("$PY" -V 2>&1)" >&2
    exit 2
fi

# ---- kosoku in a venv under target/ --------------------------------------
VENV="$ROOT/target/autobahn-venv"
KOSOKU="$VENV/bin/kosoku"

make_venv() {
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
}

if ! "$KOSOKU" --help >/dev/null 2>&1; then
    mkdir -p "$ROOT/target"
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        if ! make_venv; then
            # Debian's python3 ships venv/ensurepip separately (python3-venv).
            if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
                pyver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
                echo "autobahn: python3 -m venv failed; installing python3-venv via apt-get" >&2
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -qq
                apt-get install -y -qq python3-venv "python${pyver}-venv" </dev/null \
                    || apt-get install -y -qq python3-venv </dev/null
                make_venv
            else
                echo "autobahn: '$PY -m venv' failed (install python3-venv)" >&2
                exit 2
            fi
        fi
    fi
    echo "autobahn: installing kosoku==$KOSOKU_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kosoku==$KOSOKU_VERSION" </dev/null
    "$KOSOKU" --help >/dev/null
fi

# ---- start the server ------------------------------------------------------
OUT="$ROOT/target/autobahn"
rm -rf "$OUT"
mkdir -p "$OUT"

PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"

SERVER_PID=""
KOSOKU_PID=""
cleanup() {
    if [[ -n "$KOSOKU_PID" ]]; then
        kill "$KOSOKU_PID" 2>/dev/null || true  # timeout(1) passes it on to kosoku
        wait "$KOSOKU_PID" 2>/dev/null || true
    fi
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$BIN" serve --store memory --addr "127.0.0.1:$PORT" --enable-echo \
    --max-frame-bytes "$MAX_BYTES" --max-content-bytes "$MAX_BYTES" \
    >"$OUT/server.log" 2>&1 </dev/null &
SERVER_PID=$!

healthy=0
deadline=$((SECONDS + HEALTH_DEADLINE_S))
while ((SECONDS < deadline)); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "autobahn: server exited before becoming healthy; its log:" >&2
        tail -n 50 "$OUT/server.log" >&2 || true
        exit 1
    fi
    if "$PY" - "$PORT" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
    then
        healthy=1
        break
    fi
    sleep 0.2
done
if ((healthy == 0)); then
    echo "autobahn: /healthz did not answer 200 within ${HEALTH_DEADLINE_S}s; server log:" >&2
    tail -n 50 "$OUT/server.log" >&2 || true
    exit 1
fi

# ---- run the suite -----------------------------------------------------------
URL="ws://127.0.0.1:$PORT/echo"
echo "autobahn: server up (pid $SERVER_PID), running kosoku $KOSOKU_VERSION against $URL" >&2
started=$SECONDS
# kosoku prints nothing until it finishes, so log to a file and show it after.
# Run in the background and `wait`, so INT/TERM traps fire at once (bash defers
# traps while a foreground command runs) and cleanup can stop kosoku too.
timeout "$KOSOKU_TIMEOUT_S" "$KOSOKU" -m fuzzingclient -x '12.*' -x '13.*' \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} -o "$OUT" "$URL" >"$OUT/kosoku.log" 2>&1 </dev/null &
KOSOKU_PID=$!
set +e
wait "$KOSOKU_PID"
krc=$?
set -e
KOSOKU_PID=""
cat "$OUT/kosoku.log"
elapsed=$((SECONDS - started))

server_alive=1
kill -0 "$SERVER_PID" 2>/dev/null || server_alive=0

# ---- summary -----------------------------------------------------------------
set +e
"$PY" - "$OUT/index.json" "$krc" "$elapsed" <<'EOF'
import json, sys
from collections import Counter

path, krc, elapsed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with open(path) as f:
        index = json.load(f)
except (OSError, ValueError) as e:
    print(f"autobahn: no usable report at {path} ({e}); kosoku exit {krc}")
    sys.exit(1)

cases = [c for agent in index.values() for c in agent.values()]
ids = [cid for agent in index.values() for cid in agent]
beh = Counter(c["behavior"] for c in cases)
# Same rule as kosoku's CaseResult.passed: both verdicts must be acceptable.
ok = {"OK", "NON-STRICT", "INFORMATIONAL"}
bad = [cid for cid, c in zip(ids, cases)
       if c["behavior"] not in ok or c["behaviorClose"] not in ok]
close_bad = sum(1 for c in cases if c["behaviorClose"] not in ok)
order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]
parts = [f"{k} {beh.get(k, 0)}" for k in order]
parts += [f"{k} {v}" for k, v in sorted(beh.items()) if k not in order]
line = (f"autobahn summary: {len(cases)} cases in {elapsed}s: " + ", ".join(parts)
        + f"; bad close {close_bad}; kosoku exit {krc}")
if bad:
    shown = " ".join(bad[:20]) + (" ..." if len(bad) > 20 else "")
    line += f"; not passed: {shown}"
print(line)
print(f"autobahn: {len(cases) - len(bad)} passed, {len(bad)} failed")
sys.exit(1 if (bad or not cases) else 0)
EOF
src=$?
set -e

if ((server_alive == 0)); then
    echo "autobahn: the server exited during the run; see $OUT/server.log" >&2
fi
if ((krc == 124)); then
    echo "autobahn: kosoku timed out after ${KOSOKU_TIMEOUT_S}s" >&2
fi
echo "autobahn: reports in $OUT/index.html" >&2
if ((krc != 0 || src != 0 || server_alive == 0)); then
    exit 1
fi
exit 0
