"""Figure 5: the optimal draft size N* (and N*/M) against M, D and D'.

Three columns, one per input of the planner varied over a log range while the
other two stay at a base configuration (a star marks it in every panel):

  the target size M,  the draft's training tokens D,  the target's training tokens D'.

The top row is N* in parameters, the bottom row the cost ratio N*/M. The
paper's summary rule N* ~= 2.71e-3 M + 87M is drawn beside the M column for
comparison. With fitted laws that carry uncertainty, N* gets its interval as a
band (:func:`sdsl_jax.fitting.uncertainty.draft_size_interval`). Where no draft
size makes speculation pay the curve has a gap.
"""

from __future__ import annotations

import numpy as np

from sdsl_jax.planning import linear_rule
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.plots import bands, style
from sdsl_jax.common.quantities import format_count

VARIED = ("target_params", "draft_tokens", "target_tokens")
AXIS_LABELS = {
    "target_params": "target size M (parameters)",
    "draft_tokens": "draft training tokens D",
    "target_tokens": "target training tokens D'",
}


def draft_size_grid(base: dict, ranges: dict, points: int):
    """Configurations for the three sweeps: (varied name, its values, M, D, D') per column."""
    sweeps = []
    for name in VARIED:
        values = np.geomspace(*ranges[name], points)
        config = {key: np.full(points, base[key]) for key in VARIED}
        config[name] = values
        sweeps.append((name, values, config["target_params"], config["draft_tokens"],
                       config["target_tokens"]))
    return sweeps


def plot_draft_size(laws: laws_lib.FittedLaws, *, target_params: float = 70e9,
                    target_tokens: float = 15e12, draft_tokens: float | None = None,
                    target_params_range=(1e9, 3e11), draft_tokens_range=(1e10, 1e14),
                    target_tokens_range=(1e10, 1e14), points: int = 40, interval: str = "auto",
                    confidence: float = 0.95, method: str = "bracket", show_rule: bool = True,
                    laws_source: str | None = None, title: str | None = None):
    """N* and N*/M against M, D and D' (2 x 3 panels).

    Args:
      laws: the laws; bands when they carry a covariance or bootstrap samples.
      target_params, target_tokens, draft_tokens: the base configuration
        (M, D', D); D defaults to D'.
      *_range: (low, high) of each sweep.
      points: configurations per sweep.
      interval: the band on N*: "auto", "bootstrap", "delta" or "none".
      method: the planner's, "bracket" or "gradient".
      show_rule: draw the paper's linear rule in the M column.
      laws_source: where the laws came from, for the title.

    Returns:
      The Figure. axes[j] (top row) holds N* for sweep j (gid "nstar") and
      axes[3 + j] N*/M (gid "ratio"), j in order M, D, D'; bands have gid "band".
    """
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    base = {"target_params": float(target_params), "target_tokens": float(target_tokens),
            "draft_tokens": float(target_tokens if draft_tokens is None else draft_tokens)}
    ranges = {"target_params": target_params_range, "draft_tokens": draft_tokens_range,
              "target_tokens": target_tokens_range}
    for name, (low, high) in ranges.items():
        if not 0 < low < high:
            raise ValueError(f"the range of {name} must satisfy 0 < low < high, got ({low}, {high})")
    kind = bands.interval_method(laws, interval)
    laws = bands.finite_samples(laws)
    if kind == "bootstrap" and laws.samples is None:
        kind = None
    sweeps = draft_size_grid(base, ranges, points)
    # All three sweeps and the base configuration in one planner call: one
    # compilation, one pass.
    stacked = [np.append(np.concatenate([sweep[k] for sweep in sweeps]), base[key])
               for k, key in ((2, "target_params"), (3, "draft_tokens"), (4, "target_tokens"))]
    plan, low, high = bands.plan_draft_sizes(laws, stacked[0], stacked[1], stacked[2],
                                             interval=kind, confidence=confidence, method=method)
    n_base = float(plan.draft_params[-1]) if plan.pays[-1] else np.nan

    fig, axes = style.new_figure(2, 3, width=15.5, height=8.4)
    for j, (name, values, m, _, _) in enumerate(sweeps):
        part = slice(j * points, (j + 1) * points)
        pays = plan.pays[part]
        n_star = np.where(pays, plan.draft_params[part], np.nan)
        top, bottom = axes[j], axes[3 + j]
        (line,) = top.plot(values, n_star, color="C0", lw=2, label="N* (planner)")
        line.set_gid("nstar")
        (ratio,) = bottom.plot(values, n_star / m, color="C1", lw=2, label="N* / M")
        ratio.set_gid("ratio")
        if low is not None:
            lo, hi = np.where(pays, low[part], np.nan), np.where(pays, high[part], np.nan)
            style.band(top, values, lo, hi, "C0", gid="band")
            style.band(bottom, values, lo / m, hi / m, "C1", gid="band")
        if show_rule and name == "target_params":
            top.plot(values, np.asarray(linear_rule.published_rule(values)), color="gray", ls="--",
                     lw=1.3, label="paper's rule 2.71e-3 M + 87M")
        base_x = base[name]
        for ax, y in ((top, n_base), (bottom, n_base / base["target_params"])):
            ax.plot([base_x], [y], "*", color="black", ms=12, zorder=5,
                    label=f"base: M = {format_count(base['target_params'])}, "
                          f"D = {format_count(base['draft_tokens'])}, "
                          f"D' = {format_count(base['target_tokens'])}")
        if not pays.all():
            top.text(0.02, 0.02, f"no draft pays at {np.count_nonzero(~pays)} of {points} points (gap)",
                     transform=top.transAxes, fontsize=8, color="firebrick")
        fixed = ", ".join(f"{key_label(key)} = {format_count(base[key])}" for key in VARIED if key != name)
        top.set_title(f"N* against {key_label(name)}  ({fixed})", fontsize=10)
        for ax in (top, bottom):
            ax.set_xscale("log")
            style.count_axis(ax.xaxis)
            ax.set_xlabel(AXIS_LABELS[name])
            style.grid(ax)
        # N* spans decades only as M varies; against D or D' it moves by percents,
        # where a log axis would show one tick label or none.
        scale = "log" if name == "target_params" else "linear"
        top.set_yscale(scale)
        style.count_axis(top.yaxis)
        top.set_ylabel("optimal draft size N* (parameters)")
        bottom.set_yscale(scale)
        style.plain_axis(bottom.yaxis)
        bottom.set_ylabel("cost ratio N* / M")
    if low is not None:
        axes[0].fill_between([], [], [], color="C0", alpha=0.3, label=bands.band_label(kind, laws, confidence))
    axes[0].legend(fontsize=8, loc="upper left")
    heading = ("Throughput-optimal draft size N* as the target size and the training data vary"
               "\n(top: N* in parameters; bottom: N* as a fraction of the target size M)"
               f"\nlaws: {laws_source or 'as given'}")
    if low is not None and np.any(low[:-1] == 0):
        # A resample under which no draft pays counts as N* = 0 (as in draft_size_interval).
        heading += "\nwhere a band reaches 0, some resampled laws find that no draft size pays there"
    fig.suptitle(title or heading, fontsize=12)
    return fig


def key_label(name: str) -> str:
    return {"target_params": "M", "draft_tokens": "D", "target_tokens": "D'"}[name]
