"""The lookahead of a measured pair from its acceptance rate at each draft position.

Given the rates r_1..r_G at draft positions 1..G (as ``sdsl measure``
reports them) and the cost ratio c, :func:`plan_lookahead` finds the best
integer lookahead in 0..G under :mod:`sdsl_jax.laws.position_throughput`
and puts it beside the i.i.d. law's answer (:mod:`sdsl_jax.laws.throughput`)
for one alpha. That alpha is the loop's pooled estimate (accepted over
judged drafts) when it was measured, else :func:`implied_acceptance`: the
value that estimate tends to under the rates at lookahead G.

``sdsl plan --position-rates`` reads the rates from a file and prints the
plan (:mod:`sdsl_jax.cli.plan_positions`).
"""

from __future__ import annotations

from typing import Sequence


def implied_acceptance(rates: Sequence[float]) -> float:
    """What the loop's pooled estimate (accepted / judged drafts) tends to at lookahead
    G = len(rates) under these rates: sum_k P(K >= k) / sum_k P(K >= k - 1)."""
    import numpy as np
    surviving = np.cumprod(rates)
    return float(surviving.sum() / (1 + surviving[:-1].sum()))


def plan_lookahead(rates: Sequence[float], cost_ratio: float, acceptance: float) -> dict:
    """The best lookahead under the measured rates, and the i.i.d. law's at ``acceptance``.

    Returns plain numbers: "lookahead" (the first best gamma in 0..G),
    "speedup", "expected_tokens", "at_bound" (gamma = G, the longest
    measured), "speedups" (at every gamma in 0..G), and the i.i.d. law's
    "iid_lookahead", "iid_speedup", "iid_expected_tokens", with
    "iid_lookahead_measured_speedup": what serving at the i.i.d. law's
    choice gives under the measured rates (None beyond G).
    """
    import jax
    import numpy as np
    from sdsl_jax.laws import position_throughput as pt, throughput

    r = np.asarray(rates, np.float64)
    all_speedups = np.asarray(jax.jit(pt.speedups)(r, cost_ratio), np.float64)
    gamma = int(np.argmax(all_speedups))  # pt.optimal_lookahead: the first maximum
    # One compiled program rather than the Lambert W's many small eager ones.
    iid_gamma = float(jax.jit(throughput.optimal_integer_lookahead)(acceptance, cost_ratio))
    return {
        "lookahead": gamma, "speedup": float(all_speedups[gamma]),
        "expected_tokens": float(pt.expected_tokens(r, gamma)),
        "at_bound": gamma == len(rates), "speedups": all_speedups.tolist(),
        "iid_lookahead": iid_gamma,
        "iid_speedup": float(throughput.speedup(acceptance, iid_gamma, cost_ratio)),
        "iid_expected_tokens": float(throughput.expected_tokens(acceptance, iid_gamma)),
        "iid_lookahead_measured_speedup": (float(all_speedups[int(iid_gamma)])
                                           if iid_gamma <= len(rates) else None),
    }
