"""Summarises scripts/adaptive_proof.sh's runs: per policy the true value over the 28
days, the ratio to the best possible policy day by day, the recovery after the day-14
drift and the launch on day 7, and a chi-square check of the adaptive policy's logged
propensities. Exits 1 if a goal of docs/learning.md fails.

    python3 scripts/adaptive_summary.py WORKDIR
"""
import glob
import json
import math
import os
import sys

POLICIES = ["hand-written", "weekly", "gated", "adaptive"]
LAUNCH, DRIFT = 7, 14


def ratio(day):
    return day["expected_value"] / day["best_value"] if day["best_value"] > 0 else 0.0


def chi_square(path):
    """Bins every (event, action) by its logged probability; in each bin the number of
    events whose chosen action is in it against the sum of the probabilities."""
    edges = [0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 0.6, 0.9, 1.0000001]
    expected = [0.0] * (len(edges) - 1)
    observed = [0] * (len(edges) - 1)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            e = json.loads(line)
            for i, p in enumerate(e["p"]):
                b = next(k for k in range(len(edges) - 1) if edges[k] <= p < edges[k + 1])
                expected[b] += p
                if i == 0:  # the chosen action comes first
                    observed[b] += 1
    cells = [(o, x) for o, x in zip(observed, expected) if x >= 5]
    stat = sum((o - x) ** 2 / x for o, x in cells)
    return stat, len(cells) - 1, cells


def main(work):
    runs = {p: [] for p in POLICIES}
    for p in POLICIES:
        for path in sorted(glob.glob(os.path.join(work, f"*-{p}.json"))):
            runs[p].append(json.load(open(path, encoding="utf-8")))
    seeds = len(runs["adaptive"])
    failed = []
    print(f"== {seeds} seeds, {runs['adaptive'][0]['customers']} customers, {runs['adaptive'][0]['days']} days")
    print(f"{'policy':<14} {'true value':>11} {'per decision':>13} {'ratio to best':>14} {'retrains taken':>15}")
    totals = {}
    for p in POLICIES:
        value = [sum(d["expected_value"] for d in r["per_day"]) for r in runs[p]]
        best = [sum(d["best_value"] for d in r["per_day"]) for r in runs[p]]
        decisions = [r["decisions"] for r in runs[p]]
        taken = [sum(1 for a in r["retrains"] if a["taken"]) for r in runs[p]]
        totals[p] = value
        print(f"{p:<14} {sum(value) / seeds:>11.0f} {sum(value) / sum(decisions):>13.2f} "
              f"{sum(value) / sum(best):>14.3f} {sum(taken) / seeds:>15.1f}")
    wins = sum(1 for a, w in zip(totals["adaptive"], totals["weekly"]) if a >= w)
    mean_gain = sum(a / w - 1 for a, w in zip(totals["adaptive"], totals["weekly"])) / seeds
    print(f"adaptive earns at least weekly retraining's true value in {wins} of {seeds} seeds "
          f"(mean {100 * mean_gain:+.1f}%)")
    if sum(totals["adaptive"]) < sum(totals["weekly"]):
        failed.append("adaptive earned less true value than weekly retraining")

    print("\n== ratio to the best possible policy, by day (mean over seeds)")
    days = len(runs["adaptive"][0]["per_day"])
    print("day " + " ".join(f"{p:>13}" for p in POLICIES))
    mean_ratio = {p: [sum(ratio(r["per_day"][d]) for r in runs[p]) / seeds for d in range(days)] for p in POLICIES}
    for d in range(days):
        print(f"{d:>3} " + " ".join(f"{mean_ratio[p][d]:>13.3f}" for p in POLICIES))

    a = mean_ratio["adaptive"]
    before = sum(a[DRIFT - 4:DRIFT]) / 4
    recovered = next((d for d in range(DRIFT, days) if a[d] >= 0.9 * before), None)
    print(f"\nafter the drift on day {DRIFT}: the adaptive policy's ratio was {before:.3f} over days "
          f"{DRIFT - 4}-{DRIFT - 1}; back to 90% of it ({0.9 * before:.3f}) on day {recovered}")
    per_seed = []
    for r in runs["adaptive"]:
        rs = [ratio(d) for d in r["per_day"]]
        b = sum(rs[DRIFT - 4:DRIFT]) / 4
        per_seed.append(next((d for d in range(DRIFT, days) if rs[d] >= 0.9 * b), days) - DRIFT)
    print(f"  per seed, days to recover: {sorted(per_seed)}")
    if recovered is None or recovered > DRIFT + 3:
        failed.append("the adaptive policy did not recover within 3 days of the drift")

    launch = [sum(r["per_day"][d]["shown"].get("home_5g", 0) for r in runs["adaptive"]) / seeds for d in range(days)]
    hand = [sum(r["per_day"][d]["shown"].get("home_5g", 0) for r in runs["hand-written"]) / seeds for d in range(days)]
    fair = sum(launch[LAUNCH + 7:LAUNCH + 14]) / 7
    learned = next((d for d in range(LAUNCH, days) if launch[d] >= 0.9 * fair), None)
    print(f"\nthe offer launched on day {LAUNCH} (home_5g), impressions a day (mean over seeds):")
    print("  adaptive:     " + " ".join(f"{x:.0f}" for x in launch[LAUNCH - 1:LAUNCH + 8]))
    print("  hand-written: " + " ".join(f"{x:.0f}" for x in hand[LAUNCH - 1:LAUNCH + 8]))
    print(f"  (days {LAUNCH - 1} to {LAUNCH + 7}); its share in days {LAUNCH + 7}-{LAUNCH + 13}: {fair:.0f} a day; "
          f"the adaptive policy reaches 90% of it on day {learned}")
    if learned is None or learned > LAUNCH + 2:
        failed.append("the adaptive policy did not learn the launched offer within 2 days")

    print("\n== chi-square of the adaptive policy's logged propensities (seed 1, every event)")
    stat, dof, cells = chi_square(os.path.join(work, "1-adaptive.dsjson"))
    # The 0.1% critical values of chi-square for 1..10 degrees of freedom.
    if not 1 <= dof <= 10:
        sys.exit(f"the chi-square check needs 2 to 11 cells with 5 or more expected, found {dof + 1}")
    critical = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59][dof - 1]
    print(f"  {stat:.2f} over {dof} degrees of freedom (0.1% critical value {critical}); observed vs expected: "
          + ", ".join(f"{o}/{x:.0f}" for o, x in cells))
    if stat > critical:
        failed.append("the adaptive policy's logged propensities fail the chi-square check")

    for f in failed:
        print(f"FAILED: {f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1])
