#!/usr/bin/env bash
# The whole test suite: unit and socket-level tests of every crate (the
# cluster tests with Redis servers of their own), then the Autobahn
# WebSocket conformance run and the browser end-to-end test against the
# release binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The cluster tests start their own Redis servers (single, and a 3-primary
# Redis Cluster) on free loopback ports: they need Debian's redis-server
# and redis-cli; the cluster's nginx config is checked with nginx. A system
# Redis or nginx the packages may start is stopped; nothing relies on them.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null \
   || ! command -v nginx >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server nginx
  for svc in redis-server nginx; do
    $sudo systemctl stop "$svc" 2>/dev/null || $sudo service "$svc" stop 2>/dev/null || true
  done
fi
# Here a missing Redis fails those tests instead of skipping them.
export PARLOR_REQUIRE_REDIS=1

cargo test --workspace --all-targets
cargo build --release --bin parlor
scripts/check-dockerfile.sh
scripts/check-cluster-compose.sh target/release/parlor target/debug/parlor-loadtest
scripts/autobahn.sh target/release/parlor
tests/browser/run.sh target/release/parlor
