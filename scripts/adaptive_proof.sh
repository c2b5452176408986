#!/usr/bin/env bash
# The adaptive models' proof (docs/learning.md, "Adaptive models"). For each seed, four
# policies on the same drifting world (scenarios/drift/scenario.yaml: 28 days, a product
# launched on day 7, two changes on day 14):
#   hand-written  the sample catalog as written by hand (constant and formula propensities)
#   weekly        the same, `train`ed on the last week and taken every 7 days
#   gated         the same, but a candidate is taken only if `evaluate`'s 95% lower bound
#                 beats the running catalog (`--retrain-every 7d --gate`)
#   adaptive      every propensity `adaptive('response')` from a cold start
#                 (scenarios/drift/models.yaml)
# Then scripts/adaptive_summary.py: true value, the ratio to the best possible policy day
# by day, recovery after the drift, the launch, a chi-square check of the adaptive
# policy's logged propensities, the adaptive learner against binned naive Bayes on each
# adaptive stream (examples/learners.rs), and the plots (docs/adaptive_proof.html); and
# Vowpal Wabbit's online learner on the adaptive run's stream (dsjson, in time order)
# beside it.
#
#     bash scripts/adaptive_proof.sh [SEEDS] [CUSTOMERS]    # default 20 and 2000
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-20}
customers=${2:-2000}
cargo build --release --quiet --bin nextbest --example learners
nextbest=${CARGO_TARGET_DIR:-target}/release/nextbest
learners=${CARGO_TARGET_DIR:-target}/release/examples/learners
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scenario=scenarios/drift/scenario.yaml

# The hand-written catalog: the sample's, its two adaptive offers given their constants
# back, plus the launched offer.
hand="$work/hand-written"
cp -r rules "$hand"
rm "$hand/models.yaml"
sed -i -e "0,/adaptive('cross_sell')/s//0.06/" -e "s/adaptive('cross_sell')/0.09/" \
    "$hand/offers/cross_sell.yaml"
cp scenarios/drift/launch.yaml "$hand/offers/launch.yaml"
# The adaptive catalog: every propensity read from the model, every context weight 1
# (the model reads the channel itself).
adaptive="$work/adaptive"
cp -r "$hand" "$adaptive"
cp scenarios/drift/models.yaml "$adaptive/models.yaml"
sed -i -e "s/^\( *\)propensity: .*/\1propensity: adaptive('response')/" \
    -e "s/^\( *\)context_weight: .*/\1context_weight: 1/" "$adaptive"/offers/*.yaml
"$nextbest" check --rules "$hand" >/dev/null
"$nextbest" check --rules "$adaptive" >/dev/null

run() {
    local seed=$1 name=$2
    shift 2
    "$nextbest" simulate --scenario "$scenario" --data "$work/$seed-$name" --seed "$seed" \
        --customers "$customers" --json "$@" >"$work/$seed-$name.json"
}
for seed in $(seq 1 "$seeds"); do
    run "$seed" hand-written --rules "$hand" &
    run "$seed" adaptive --rules "$adaptive" &
    wait
    run "$seed" weekly --rules "$hand" --retrain-every 7d &
    run "$seed" gated --rules "$hand" --retrain-every 7d --gate &
    wait
    "$nextbest" export --data "$work/$seed-adaptive" --format dsjson --reward value \
        --out "$work/$seed-adaptive.dsjson" >/dev/null
    "$learners" "$work/$seed-adaptive" "$adaptive" >"$work/$seed-learners.json"
    rm -rf "$work/$seed-hand-written" "$work/$seed-weekly" "$work/$seed-gated"
    [ "$seed" = 1 ] || rm -rf "$work/$seed-adaptive"
    echo "seed $seed done" >&2
done

python3 scripts/adaptive_summary.py "$work" docs/adaptive_proof.html

echo "== Vowpal Wabbit (--cb_explore_adf --epsilon 0.1, online, in time order) on seed 1's adaptive stream"
python3 scripts/vw_train.py "$work/1-adaptive.dsjson"
python3 - "$work/1-adaptive.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"nextbest adaptive on the same stream: {s['value'] / s['impressions']:.2f} realised value per shown slot "
      f"({s['expected_value'] / s['impressions']:.2f} expected), so VW's loss to compare is its minus")
PY
