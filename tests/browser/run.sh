#!/usr/bin/env bash
# The browser test: parlor's web client in headless Chromium (see e2e.mjs).
#
#   tests/browser/run.sh [PATH/TO/parlor]     default: target/release/parlor, built here
#
# Installs what a clean machine lacks: Debian's chromium (apt) and the npm
# packages (npm ci). Screenshots and logs go to target/browser/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

if [[ $# -ge 1 ]]; then
    BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
    (cd "$ROOT" && cargo build --release --bin parlor)
    BIN="$ROOT/target/release/parlor"
fi
[[ -x "$BIN" ]] || { echo "run.sh: no parlor binary at $BIN" >&2; exit 1; }

if [[ ! -x /usr/bin/chromium ]]; then
    echo "run.sh: installing chromium with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update </dev/null
    # fonts-liberation is only a Recommends: without a font, screenshots show no text.
    apt-get install -y --no-install-recommends chromium fonts-liberation </dev/null
fi
command -v node >/dev/null || { echo "run.sh: node is required (Node.js 20 or newer)" >&2; exit 1; }
if [[ ! -d "$HERE/node_modules/playwright-core" ]]; then
    echo "run.sh: npm ci" >&2
    (cd "$HERE" && npm ci --no-audit --no-fund </dev/null)
fi

mkdir -p "$ROOT/target/browser"
PIDFILE="$(mktemp)"
cleanup() {
    # e2e.mjs kills the server itself; this covers the script being killed.
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$SECONDS
PARLOR_PIDFILE="$PIDFILE" timeout --kill-after=10 300 node "$HERE/e2e.mjs" "$BIN" </dev/null
echo "browser test passed in $((SECONDS - start))s; screenshots in target/browser/"
