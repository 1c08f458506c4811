#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the client decoder and of
# the reader's WebSocket frame pipeline, for a bounded time. Targets are in
# fuzz/fuzz_targets/ (see fuzz/src/lib.rs for what each one checks).
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh frames
#
# Each target starts from its committed seeds (fuzz/corpus/<target>), copied
# to target/fuzz/corpus/<target> so that nothing here dirties the tree. On a
# crash (panic, timeout, out of memory) the script goes on with the other
# targets, prints the input that crashed and exits 1. Replay one with
# `cargo fuzz run -s none <target> <input>`.
#
# Toolchain: this runs on stable Rust. cargo-fuzz's default sanitizer
# (address) needs `-Zsanitizer=address`, which stable rustc refuses ("the
# option `Z` is only accepted on the nightly compiler"). With
# `--sanitizer none` (`-s none`) cargo-fuzz passes no `-Z` flag at all: only
# the stable `-Cpasses=sancov-module` and `-Cllvm-args=-sanitizer-coverage-*`
# for libFuzzer's coverage, plus `--cfg fuzzing`; it builds in release mode
# with debug assertions and overflow checks (cargo-fuzz's default without
# `-O`). parlor has no `unsafe` code, so AddressSanitizer would add little
# for a 6x slowdown and a 3x longer build (measured). For a deeper local
# run, FUZZ_SANITIZER=address uses it anyway through RUSTC_BOOTSTRAP=1,
# which lets stable rustc accept `-Z` flags (std itself stays
# uninstrumented); its build goes to its own target directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
cargo_fuzz_version=0.13.2
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(decode frames fragments handshake)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

flags=(--sanitizer "$sanitizer")
env=()
if [ "$sanitizer" != none ]; then
    flags+=(--target-dir "fuzz/target/$sanitizer")
    env=(RUSTC_BOOTSTRAP=1)
fi

echo "fuzz: building ${targets[*]} with $(cargo fuzz --version), sanitizer $sanitizer"
for t in "${targets[@]}"; do
    env "${env[@]}" cargo fuzz build "${flags[@]}" "$t"
done

work=target/fuzz
mkdir -p "$work/logs"
failed=()
passed=0
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    log="$work/logs/$t.log"
    rm -rf "$artifacts"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "fuzz/corpus/$t" ]; then
        cp -R "fuzz/corpus/$t/." "$corpus/"
    fi
    echo "fuzz: $t for ${seconds}s (corpus $corpus, log $log)"
    # -timeout: an input slower than 10 s is a hang, and a crash;
    # the last -artifact_prefix wins over the one cargo-fuzz passes.
    if env "${env[@]}" cargo fuzz run "${flags[@]}" "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -dict=fuzz/parlor.dict \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        passed=$((passed + 1))
        # libFuzzer's last status line: runs, coverage, corpus, exec/s.
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | sed "s/^/fuzz: $t: /"
    else
        failed+=("$t")
        echo "fuzz: $t FAILED; the end of its log:"
        tail -n 60 "$log"
        grep -E 'Test unit written to|^Failing input:' -A2 "$log" | sed "s/^/fuzz: $t: /" || true
        for input in "$artifacts"/*; do
            [ -f "$input" ] || continue
            echo "fuzz: $t: crashing input $input, base64: $(base64 -w0 <"$input" | head -c 2000)"
        done
    fi
done

echo "fuzz: ${passed} passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]}"
    exit 1
fi
