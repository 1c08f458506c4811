#!/usr/bin/env bash
# The whole test suite: unit and socket-level tests of every crate, then the
# Autobahn WebSocket conformance run and the browser end-to-end test
# against the release binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo test --workspace --all-targets
cargo build --release --bin parlor
scripts/check-dockerfile.sh
scripts/autobahn.sh target/release/parlor
tests/browser/run.sh target/release/parlor
