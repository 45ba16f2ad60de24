"""Figure 2: predicted throughput against draft size, one curve per target, N* marked.

For a target of M parameters trained on D' tokens and drafts trained on D
tokens, each draft size N on a log grid goes through the chain

    x = ppl(N, D),  y = ppl(M, D'),  alpha = A x + B y + C (clipped),
    S(N) = max over real lookahead of the speedup at cost ratio N / M,

and the curve is S(N) (or the throughput S / (2M) in tokens per FLOP). The
marker on each curve is the planner's N* with its speedup, so the picture
checks the planner: the marker must sit on the curve's peak. With fitted laws
that carry uncertainty, the curve gets a band and N* a horizontal interval
(:func:`sdsl_jax.fitting.uncertainty.draft_size_interval`).
"""

from __future__ import annotations

import jax
import numpy as np

from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.laws import throughput
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.plots import bands, style
from sdsl_jax.common.quantities import format_count

METRICS = ("speedup", "tokens-per-flop")


@jax.jit
def speedup_from_vector(vector, draft_params, target_params, draft_tokens, target_tokens):
    """S*(N) at the optimal lookahead, under the coefficient vector ``vector`` (8,).

    Jitted: one compilation serves every target and every band evaluation
    (eagerly, each of the chain's few dozen operations would compile on its own).
    """
    pre, acc = laws_lib.laws_from_vector(vector)
    x = pretraining.perplexity(pre, draft_params, draft_tokens)
    y = pretraining.perplexity(pre, target_params, target_tokens)
    alpha = acceptance_lib.acceptance(acc, x, y)
    return throughput.optimal_speedup(alpha, draft_params / target_params)


def _per_target(name, values, count):
    values = np.atleast_1d(np.asarray(values, np.float64))
    if values.size == 1:
        return np.full(count, values[0])
    if values.size != count:
        raise ValueError(f"{name}: give one value or one per target ({count}), got {values.size}")
    return values


def default_draft_grid(plan_draft_params, target_params, points: int) -> np.ndarray:
    """A log grid of N spanning 1/30 to 30 times every N* (at most up to the largest M)."""
    n_star = np.asarray(plan_draft_params, np.float64)
    n_star = n_star[n_star > 0]
    if n_star.size:
        low, high = n_star.min() / 30, min(n_star.max() * 30, np.max(target_params))
    else:  # nothing pays: show the range where one would look
        low, high = np.min(target_params) * 1e-5, np.max(target_params) * 0.1
    return np.geomspace(low, high, points)


def plot_throughput(laws: laws_lib.FittedLaws, target_params, target_tokens, draft_tokens=None, *,
                    draft_params=None, metric: str = "speedup", interval: str = "auto",
                    confidence: float = 0.95, method: str = "bracket", points: int = 200,
                    laws_source: str | None = None, title: str | None = None):
    """Predicted speedup (or tokens per FLOP) against draft size N, one curve per target.

    Args:
      laws: the pre-training and acceptance laws; bands are drawn when they
        carry a covariance or bootstrap samples (see :mod:`sdsl_jax.plots.bands`).
      target_params: M for each target (a sequence).
      target_tokens: D', one value or one per target.
      draft_tokens: D, one value or one per target (default: D').
      draft_params: the draft sizes to evaluate (default: a log grid around every N*).
      metric: "speedup" (x over the target alone) or "tokens-per-flop".
      interval: "auto", "bootstrap", "delta" or "none".
      method: the planner's, "bracket" or "gradient".
      points: size of the default grid.
      laws_source: where the laws came from, for the title.

    Returns:
      The matplotlib Figure. Its one Axes holds, per target k, a curve with
      gid "curve:k" and the N* marker with gid "nstar:k" (x = N*, y = the
      planner's speedup or tokens per FLOP at N*).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    target_params = np.atleast_1d(np.asarray(target_params, np.float64))
    count = target_params.size
    target_tokens = _per_target("target_tokens", target_tokens, count)
    draft_tokens = target_tokens if draft_tokens is None else _per_target("draft_tokens", draft_tokens, count)
    kind = bands.interval_method(laws, interval)
    laws = bands.finite_samples(laws)
    if kind == "bootstrap" and laws.samples is None:
        kind = None

    plan, n_low, n_high = bands.plan_draft_sizes(laws, target_params, draft_tokens, target_tokens,
                                                 interval=kind, confidence=confidence, method=method)
    n_star = np.asarray(plan.draft_params, np.float64)
    pays = np.asarray(plan.pays)
    grid = (default_draft_grid(n_star, target_params, points) if draft_params is None
            else np.sort(np.asarray(draft_params, np.float64)))

    fig, (ax,) = style.new_figure(width=7.5, height=5.2)
    palette = style.colors(count)
    per_flop = metric == "tokens-per-flop"
    for k in range(count):
        m = target_params[k]
        quantity = lambda v: speedup_from_vector(v, grid, m, draft_tokens[k], target_tokens[k])
        # A draft as large as the target has nothing to offer: no curve there.
        # (Masked afterwards so every target shares one compiled shape.)
        inside = grid < m
        n = grid[inside]
        curve = np.asarray(quantity(laws.coefficients), np.float64)[inside]
        scale = 1 / (2 * m) if per_flop else 1.0
        label = f"M = {format_count(m)}, D' = {format_count(target_tokens[k])}"
        if draft_tokens[k] != target_tokens[k]:
            label += f", D = {format_count(draft_tokens[k])}"
        (line,) = ax.plot(n, curve * scale, color=palette[k], lw=2)
        line.set_gid(f"curve:{k}")
        limits = bands.band(quantity, laws, kind, confidence, log=True)
        if limits is not None:
            style.band(ax, n, limits[0][inside] * scale, limits[1][inside] * scale, palette[k],
                       gid=f"band:{k}")
        if not pays[k]:
            line.set_label(f"{label}: no draft size pays")
            continue
        y_star = float(plan.tokens_per_flop[k] if per_flop else plan.speedup[k])
        label += f": N* = {format_count(n_star[k])}"
        xerr = None
        if n_low is not None:
            label += f" [{format_count(n_low[k])}, {format_count(n_high[k])}]"
            xerr = [[n_star[k] - n_low[k]], [n_high[k] - n_star[k]]]
        line.set_label(label)
        marker = ax.errorbar([n_star[k]], [y_star], xerr=xerr, fmt="o", ms=8, color=palette[k],
                             mec="black", mew=1.2, capsize=5, elinewidth=1.5, zorder=5)
        marker.lines[0].set_gid(f"nstar:{k}")
    ax.set_xscale("log")
    style.count_axis(ax.xaxis)
    ax.set_xlabel("draft size N (parameters)")
    if per_flop:
        ax.set_yscale("log")
        ax.set_ylabel("predicted throughput (tokens per FLOP)")
    else:
        ax.axhline(1.0, color="gray", ls=":", lw=1.2, label="target alone (1x)")
        ax.set_ylabel("predicted speedup over the target alone (x)")
    style.grid(ax)
    marker_label = "N* (planner)"
    if kind is not None:
        marker_label += f" with its {confidence:.0%} interval [low, high]"
        ax.fill_between([], [], [], color="gray", alpha=0.3, label=bands.band_label(kind, laws, confidence))
    ax.plot([], [], "o", color="white", mec="black", mew=1.2, ms=8, label=marker_label)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_title(title or "Predicted throughput against draft size (speculative decoding)\n"
                 "marker: throughput-optimal draft size N* from the planner\n"
                 f"laws: {laws_source or 'as given'}", fontsize=11)
    return fig
