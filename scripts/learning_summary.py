"""Summarises `nextbest evaluate --json` files of simulated data (with true values):
how often each estimator's 95% interval covered the truth, per policy, and how the
first candidate of each file (the trained catalog) compares with the logging policy.
Exits 1 if SNIPS or DR covered the truth less than 90% of the time over the policies
other than the logging one, or if the trained catalog was not truly better.

    python3 scripts/learning_summary.py EVALUATION.json...
"""
import json
import sys


def main(paths):
    runs = [json.load(open(p, encoding="utf-8")) for p in paths]
    names = ["logging policy", "uniform random", "champion alone", "trained", "flat propensities", "3x exploration"]
    print(f"{'policy':<20} {'seeds':>5} {'mean true':>10} {'IPS cover':>10} {'SNIPS cover':>12} {'DR cover':>9} {'mean ESS':>9}")
    covered_all = {"snips": [0, 0], "dr": [0, 0]}
    for i, name in enumerate(names):
        rows = [r["policies"][i]["groups"][0] for r in runs if len(r["policies"]) > i]
        if not rows:
            continue
        cover = {}
        for est in ("ips", "snips", "dr"):
            hits = sum(1 for g in rows if g[est]["low"] <= g["truth"] <= g[est]["high"])
            cover[est] = hits / len(rows)
            if i > 0 and est in covered_all:
                covered_all[est][0] += hits
                covered_all[est][1] += len(rows)
        truth = sum(g["truth"] for g in rows) / len(rows)
        ess = sum(g["effective_samples"] for g in rows) / len(rows)
        print(f"{name:<20} {len(rows):>5} {truth:>10.3f} {cover['ips']:>10.0%} {cover['snips']:>12.0%} {cover['dr']:>9.0%} {ess:>9.0f}")
    failed = []
    for est, (hits, total) in covered_all.items():
        if hits < 0.9 * total:
            failed.append(f"{est.upper()} covered the truth in only {hits} of {total}")
        print(f"{est.upper()}: the 95% interval covered the true value in {hits} of {total} (policy, seed) pairs "
              f"other than the logging policy ({hits / max(total, 1):.1%})")

    gains, predicted, clear = [], [], 0
    for r in runs:
        logging, trained = r["policies"][0], r["policies"][3]["groups"][0]
        on = logging["on_policy"]
        gains.append(trained["truth"] / logging["groups"][0]["truth"] - 1)
        predicted.append(trained["snips"]["value"] / on["value"] - 1)
        clear += trained["snips"]["low"] > on["high"] and trained["dr"]["low"] > on["high"]
    n = len(runs)
    print(f"trained vs logging policy: true gain {100 * sum(gains) / n:+.1f}% on average "
          f"(min {100 * min(gains):+.1f}%), SNIPS predicted {100 * sum(predicted) / n:+.1f}%; "
          f"in {clear} of {n} seeds both SNIPS's and DR's intervals lay wholly above the logging policy's")
    if min(gains) <= 0:
        failed.append("the trained catalog was not better than the logging policy in every seed")
    if failed:
        sys.exit("; ".join(failed))


if __name__ == "__main__":
    main(sys.argv[1:])
