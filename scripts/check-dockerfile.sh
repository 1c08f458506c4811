#!/usr/bin/env bash
# No Docker engine runs on CI machines, so check by reading: the Dockerfile
# must build the binary the way the README does and copy the file that build
# makes; that file must exist after `cargo build --release`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() { echo "check-dockerfile: $*" >&2; exit 1; }
grep -q 'cargo build --release --locked --bin parlor' Dockerfile || fail "Dockerfile does not build with cargo build --release --bin parlor"
copied=$(sed -n 's/.*cp \(target\/release\/[a-z-]*\) .*/\1/p' Dockerfile)
[[ "$copied" == target/release/parlor ]] || fail "Dockerfile copies '$copied', not target/release/parlor"
[[ -x "$copied" ]] || fail "$copied is missing: build it with cargo build --release first"
"$copied" --version >/dev/null || fail "$copied does not run"
grep -q '^USER parlor' Dockerfile || fail "runtime stage must not run as root"
grep -q '^VOLUME /data' Dockerfile || fail "history must live on the /data volume"
grep -q '^HEALTHCHECK' Dockerfile || fail "HEALTHCHECK missing"
grep -q '^EXPOSE 8080' Dockerfile || fail "EXPOSE 8080 missing"
echo "check-dockerfile: ok ($copied, $("$copied" --version))"
