"""Summarises scripts/adaptive_proof.sh's runs: per policy the true value over the 28
days, the ratio to the best possible policy day by day, the recovery after the day-14
drift and the launch on day 7, and a chi-square check of the adaptive policy's logged
propensities; the adaptive learner against binned naive Bayes on the same streams
(examples/learners.rs); and a page of plots (value and ratio per day of the four
policies) written to HTML. Exits 1 if a goal of docs/learning.md fails.

    python3 scripts/adaptive_summary.py WORKDIR [HTML]
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


def main(work, html=None):
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

    learners = [json.load(open(path, encoding="utf-8"))
                for path in sorted(glob.glob(os.path.join(work, "*-learners.json")))]
    if learners:
        print(f"\n== the adaptive learner against binned naive Bayes, each response scored before "
              f"either learns it (mean over {len(learners)} seeds' adaptive streams)")
        print(f"{'learner':<12} {'responses':>10} {'log loss':>9} {'AUC':>7} {'calibration':>12}")
        for name in ["probit", "naive_bayes"]:
            rows = [l[name] for l in learners]
            mean = lambda k: sum(r[k] for r in rows) / len(rows)
            print(f"{name:<12} {mean('responses'):>10.0f} {mean('log_loss'):>9.4f} {mean('auc'):>7.4f} "
                  f"{mean('calibration'):>12.3f}")
        better = sum(1 for l in learners if l["probit"]["log_loss"] < l["naive_bayes"]["log_loss"])
        auc = sum(1 for l in learners if l["probit"]["auc"] > l["naive_bayes"]["auc"])
        print(f"  probit's log loss is lower in {better} of {len(learners)} seeds, its AUC higher in {auc}")

    if html:
        write_html(html, mean_ratio, {p: [sum(r["per_day"][d]["expected_value"] for r in runs[p]) / seeds
                                          for d in range(days)] for p in POLICIES}, seeds)
        print(f"\nplots: {html}")

    for f in failed:
        print(f"FAILED: {f}")
    sys.exit(1 if failed else 0)


COLOURS = {"hand-written": "#888888", "weekly": "#1f77b4", "gated": "#2ca02c", "adaptive": "#d62728"}


def line_chart(title, ylabel, series, lo=None):
    """An SVG line chart of day -> value, one line per policy, with a legend."""
    w, h, left, right, top, bottom = 760, 360, 70, 150, 40, 45
    days = len(next(iter(series.values())))
    values = [v for s in series.values() for v in s]
    y0 = min(values) * 0.95 if lo is None else lo
    y1 = max(values) * 1.05
    x = lambda d: left + (w - left - right) * d / max(days - 1, 1)
    y = lambda v: top + (h - top - bottom) * (1 - (v - y0) / (y1 - y0))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="16">{title}</text>']
    for i in range(6):
        v = y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for d in range(0, days, 7):
        out.append(f'<line x1="{x(d):.1f}" x2="{x(d):.1f}" y1="{top}" y2="{h - bottom}" stroke="#eee"/>')
        out.append(f'<text x="{x(d):.1f}" y="{h - bottom + 16}" text-anchor="middle">{d}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 8}" text-anchor="middle">day</text>')
    out.append(f'<text transform="translate(16,{(top + h - bottom) / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    for k, (name, s) in enumerate(series.items()):
        points = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in enumerate(s))
        out.append(f'<polyline fill="none" stroke="{COLOURS[name]}" stroke-width="2" points="{points}"/>')
        ly = top + 10 + 18 * k
        out.append(f'<line x1="{w - right + 10}" x2="{w - right + 30}" y1="{ly}" y2="{ly}" stroke="{COLOURS[name]}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 35}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_html(path, mean_ratio, mean_value, seeds):
    page = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>nextbest: adaptive models on a drifting world</title></head>',
            '<body style="font-family:sans-serif;margin:2em;max-width:900px">',
            "<h1>Four policies on a drifting world</h1>",
            f"<p>scripts/adaptive_proof.sh: mean over {seeds} seeds of scenarios/drift/scenario.yaml "
            "(a product launched on day 7, the world changes on day 14). See docs/learning.md.</p>",
            line_chart("True value per day", "true expected value", mean_value, lo=0),
            line_chart("Ratio to the best possible policy, per day", "ratio", mean_ratio),
            "</body></html>"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(page) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
