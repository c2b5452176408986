#!/usr/bin/env bash
# The learning loop's proof (docs/learning.md). For each seed: simulate two weeks of the
# telco scenario on the sample catalog, train on the first week, and evaluate on the second
# week the trained catalog and two hand-edited candidates (flat propensities; three times
# the exploration) beside the logging policy, a uniformly random one and the champion
# alone, with the scenario's true values. Then: how often each 95% interval covered the
# truth, and what the trained catalog gained. Finally Vowpal Wabbit trains on the first
# seed's dsjson export and its own offline estimate is printed beside nextbest's.
#
#     bash scripts/learning_proof.sh [SEEDS]     # default 20; ~10 s per seed here
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-20}
cargo build --release --quiet --bin nextbest
nextbest=${CARGO_TARGET_DIR:-target}/release/nextbest
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
split=2026-11-09T00:00:00Z

# The logging catalog: the sample as written by hand, its two adaptive offers given
# constants (an adaptive logging policy learns as it goes; docs/learning.md's
# "Adaptive models" has its own proof).
rules="$work/hand-written"
cp -r rules "$rules"
rm "$rules/models.yaml"
# (tv_bundle's 0.06 comes first in the file, then streaming_addon's 0.09).
sed -i -e "0,/adaptive('cross_sell')/s//0.06/" -e "s/adaptive('cross_sell')/0.09/" \
    "$rules/offers/cross_sell.yaml"

# Two candidates that differ from the logging catalog in different ways.
cp -r "$rules" "$work/flat"
sed -i 's/^\( *\)propensity: .*/\1propensity: 0.1/' "$work"/flat/offers/*.yaml
cp -r "$rules" "$work/explore"
sed -i 's/^    epsilon: 0.1$/    epsilon: 0.3/' "$work/explore/experiments.yaml"

for seed in $(seq 1 "$seeds"); do
    d="$work/seed$seed"
    mkdir -p "$d"
    "$nextbest" simulate --scenario scenarios/telco.yaml --rules "$rules" --data "$d/data" \
        --seed "$seed"
    "$nextbest" train --data "$d/data" --rules "$rules" --out "$d/trained" --to "$split" --seed "$seed" \
        >"$d/train.txt"
    "$nextbest" evaluate --data "$d/data" --baseline "$rules" \
        --rules "$d/trained" --rules "$work/flat" --rules "$work/explore" \
        --reward value --from "$split" --seed "$seed" \
        --scenario scenarios/telco.yaml --json "$d/evaluation.json" >"$d/evaluation.txt"
done

echo
echo "== seed 1: train (first week)"
cat "$work/seed1/train.txt"
echo "== seed 1: evaluate (second week)"
sed -n '1,10p' "$work/seed1/evaluation.txt"
echo "== over $seeds seeds"
python3 scripts/learning_summary.py "$work"/seed*/evaluation.json

echo "== Vowpal Wabbit on seed 1's second week (reward: value; VW's loss is minus it)"
"$nextbest" export --data "$work/seed1/data" --format dsjson --reward value --from "$split" \
    --out "$work/seed1.dsjson" >/dev/null
python3 scripts/vw_train.py "$work/seed1.dsjson"
