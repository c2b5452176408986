"""Trains Vowpal Wabbit (--cb_explore_adf) on a nextbest dsjson export; fails on any
parse error (--strict_parse) or if VW did not learn from every line.

    python3 scripts/vw_train.py EXPORT.dsjson
"""
import sys

import vowpalwabbit


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        sys.exit(f"{path}: no events")
    vw = vowpalwabbit.Workspace(
        "--cb_explore_adf --dsjson --strict_parse --epsilon 0.1 --quiet"
    )
    learned = 0
    for number, line in enumerate(lines, 1):
        try:
            examples = vw.parse(line, vowpalwabbit.LabelType.CONTEXTUAL_BANDIT)
        except Exception as e:  # VW raises on any malformed line with --strict_parse
            sys.exit(f"{path}:{number}: VW could not parse the event: {e}")
        vw.learn(examples)
        vw.finish_example(examples)
        learned += 1
    examples = vw.get_weighted_examples()
    loss = vw.get_sum_loss() / max(examples, 1)
    vw.finish()
    if learned != len(lines):
        sys.exit(f"learned {learned} of {len(lines)} events")
    print(f"vw: learned from {learned} events ({examples:.0f} weighted), average loss {loss:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
