#!/usr/bin/env bash
# Proves the exports are what the field's tools read: fills a demo journal on the sample
# catalog, exports it as dsjson and trains Vowpal Wabbit on it (no parse error allowed),
# and exports it for the Open Bandit Pipeline and checks the arrays and the IPW figure.
# Needs the packages in scripts/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --quiet --example journal_demo --bin nextbest
target=${CARGO_TARGET_DIR:-target}
"$target/debug/examples/journal_demo" "$work/data" 500 3000 7
nextbest="$target/debug/nextbest"

"$nextbest" export --data "$work/data" --format dsjson --out "$work/export.dsjson" >"$work/dsjson.json"
python3 scripts/vw_train.py "$work/export.dsjson"

"$nextbest" export --data "$work/data" --format obp --out "$work/export.npz" >"$work/obp.json"
python3 scripts/obp_check.py "$work/export.npz" "$work/obp.json"
