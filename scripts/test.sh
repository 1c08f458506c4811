#!/usr/bin/env bash
# The whole test suite: unit and socket-level tests of every crate (the
# cluster tests with Redis servers of their own), then the Autobahn
# WebSocket conformance run and the browser end-to-end test against the
# release binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The cluster tests start their own Redis servers (single, and a 3-primary
# Redis Cluster) on free loopback ports: they need Debian's redis-server
# and redis-cli. A system Redis the package may start is stopped; nothing
# relies on it.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y redis-server
  $sudo systemctl stop redis-server 2>/dev/null || $sudo service redis-server stop 2>/dev/null || true
fi
# Here a missing Redis fails those tests instead of skipping them.
export PARLOR_REQUIRE_REDIS=1

cargo test --workspace --all-targets
cargo build --release --bin parlor
scripts/check-dockerfile.sh
scripts/autobahn.sh target/release/parlor
tests/browser/run.sh target/release/parlor
