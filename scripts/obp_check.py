"""Checks a nextbest OBP export against the Open Bandit Pipeline's logged bandit feedback
(keys, shapes, dtypes, ranges) and recomputes the IPW estimate of the logging policy,
which must equal the figure nextbest printed in its export summary.

    python3 scripts/obp_check.py EXPORT.npz SUMMARY.json
"""
import json
import sys

import numpy as np

KEYS = {
    "n_rounds", "n_actions", "action", "position", "reward", "pscore", "context",
    "action_context",
}


def fail(message: str) -> None:
    sys.exit(f"obp_check: {message}")


def main(npz_path: str, summary_path: str) -> None:
    feedback = dict(np.load(npz_path))
    if set(feedback) != KEYS:
        fail(f"keys {sorted(feedback)} are not obp's {sorted(KEYS)}")
    n = int(feedback["n_rounds"])
    n_actions = int(feedback["n_actions"])
    action, position = feedback["action"], feedback["position"]
    reward, pscore = feedback["reward"], feedback["pscore"]
    context, action_context = feedback["context"], feedback["action_context"]
    for name, array, kind, shape in [
        ("action", action, "i", (n,)),
        ("position", position, "i", (n,)),
        ("reward", reward, "f", (n,)),
        ("pscore", pscore, "f", (n,)),
        ("context", context, "f", (n, context.shape[1] if context.ndim == 2 else -1)),
        ("action_context", action_context, "f", (n_actions, action_context.shape[1])),
    ]:
        if array.shape != shape:
            fail(f"{name} has shape {array.shape}, expected {shape}")
        if array.dtype.kind != kind:
            fail(f"{name} has dtype {array.dtype}, expected kind {kind!r}")
    if n == 0:
        fail("no rounds")
    if action.min() < 0 or action.max() >= n_actions:
        fail("an action is outside 0..n_actions")
    if position.min() < 0:
        fail("a negative position")
    if not ((pscore > 0) & (pscore <= 1)).all():
        fail("a pscore outside (0, 1]")
    if not np.isfinite(context).all():
        fail("a context value is not finite")

    # obp's IPW: mean(reward * action_dist[i, action_i, position_i] / pscore_i). The
    # logging policy gave each logged action exactly its pscore.
    len_list = int(position.max()) + 1
    action_dist = np.zeros((n, n_actions, len_list))
    action_dist[np.arange(n), action, position] = pscore
    rounds = np.arange(n)
    ipw = float(np.mean(reward * action_dist[rounds, action, position] / pscore))

    with open(summary_path, encoding="utf-8") as f:
        expected = json.load(f)["ipw_logging"]
    if not np.isclose(ipw, expected, rtol=1e-9, atol=1e-12):
        fail(f"IPW {ipw} differs from nextbest's {expected}")
    print(
        f"obp: {n} rounds, {n_actions} actions, context dim {context.shape[1]}, "
        f"IPW of the logging policy {ipw:.6f} = nextbest's {expected:.6f}"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
