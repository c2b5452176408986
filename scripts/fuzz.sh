#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 60), starting from
# the seed corpus in fuzz/corpus. A crash, or an input running over 10 s (a hang), fails the
# run; libFuzzer saves the input under fuzz/artifacts/TARGET/ and prints how to reproduce it.
#
#   bash scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
# cargo-fuzz passes sanitizer flags that are unstable; these machines have a stable
# toolchain only, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in rule catalog journal request; do
    mkdir -p "$work/$target"
    # New inputs go to the first directory; the committed seeds stay as they are.
    cargo fuzz run -O "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>"$work/$target.log" || {
        tail -40 "$work/$target.log"
        echo "fuzz target $target crashed" >&2
        exit 1
    }
    runs=$(grep -o 'Done [0-9]* runs' "$work/$target.log" | awk '{print $2}')
    echo "$target: $runs runs in ${seconds}s, no crash"
done
