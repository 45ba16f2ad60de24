"""Figure 3: acceptance against draft perplexity, one fitted line per target.

Within one target the target perplexity y is fixed, so the acceptance plane
alpha = A x + B y + C is a line in the draft perplexity x. Two sources of lines:

* a measurement set: each target's measured (x, alpha) points with their 95%
  intervals, and the per-target least-squares line alpha = A_t x + C_t
  (:func:`sdsl_jax.fitting.acceptance.fit_per_target`, weighted as ``sdsl fit``
  weights, its R^2 in the legend). With laws given as well, the plane's line at
  each target's measured y is drawn dashed beside it, to show what the single
  joint slope costs each target.
* laws alone: the plane's line for each target (M, D') in a list, at its
  predicted perplexity y = ppl(M, D'), with a band when the laws carry
  uncertainty.
"""

from __future__ import annotations

import jax
import numpy as np

from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.estimation.acceptance import wilson_interval
from sdsl_jax.fitting import acceptance as plane_fit
from sdsl_jax.fitting import data as fit_data
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.plots import bands, style
from sdsl_jax.common.quantities import format_count

ACCEPTANCE_LABEL = "acceptance rate alpha (accepted / drafted tokens)"
DRAFT_PERPLEXITY_LABEL = "draft perplexity x (on the prompts)"


def measured_intervals(measurements) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) 95% interval of each row's acceptance; NaN where the row has none.

    Counts give the Wilson interval (the counts are the primary data, as in
    :func:`sdsl_jax.fitting.data.acceptance_sigma`); otherwise the reported
    acceptance_low / acceptance_high.
    """
    cols = measurements.columns
    n = len(measurements)
    low, high = np.full(n, np.nan), np.full(n, np.nan)
    if "acceptance_low" in cols:
        low[:] = cols["acceptance_low"]
        high[:] = cols["acceptance_high"]
    counts = np.asarray(measurements.has_counts)
    if counts.any():
        lo, hi = wilson_interval(cols["accepted"][counts], cols["trials"][counts])
        low[counts], high[counts] = np.asarray(lo), np.asarray(hi)
    return low, high


def error_bars(values, low, high):
    """Non-negative (below, above) distances for matplotlib; 0 where no interval."""
    below = np.where(np.isfinite(low), values - low, 0.0)
    above = np.where(np.isfinite(high), high - values, 0.0)
    return np.vstack([np.clip(below, 0, None), np.clip(above, 0, None)])


@jax.jit
def _plane_line(vector, draft_perplexity, target_params, target_tokens):
    """alpha along x for a target (M, D') whose perplexity the pre-training law predicts."""
    pre, acc = laws_lib.laws_from_vector(vector)
    y = pretraining.perplexity(pre, target_params, target_tokens)
    return acceptance_lib.raw_acceptance(acc, draft_perplexity, y)


def plot_acceptance(measurements=None, laws: laws_lib.FittedLaws | None = None, *,
                    target_params=None, target_tokens=None, draft_perplexity_range=(8.0, 40.0),
                    weighting: str = "auto", interval: str = "auto", confidence: float = 0.95,
                    laws_source: str | None = None, title: str | None = None):
    """Acceptance against draft perplexity, one line per target.

    Args:
      measurements: a MeasurementSet, or None to draw the laws' lines only.
      laws: FittedLaws; with measurements, their plane is drawn dashed at each
        target's measured y; without, they give every line (required then).
      target_params, target_tokens: without measurements, the targets (M, D'):
        a sequence of M and one D' or one per target.
      draft_perplexity_range: the x range of the laws-only lines.
      weighting: the per-target fits' weighting ("auto", "interval", "equal").
      interval: the band for laws-only lines ("auto", "bootstrap", "delta", "none").
      laws_source: where the laws came from, for the title and legend.

    Returns:
      The Figure. Per target k its Axes holds the fitted line (gid "fit:k"),
      the measured points (gid "points:k") and, with laws and measurements,
      the plane's line (gid "plane:k"); laws only: the line gid "law:k".
    """
    if measurements is None and laws is None:
        raise ValueError("give a measurement set, laws, or both")
    fig, (ax,) = style.new_figure(width=11.5, height=5.4)
    if measurements is not None:
        _draw_measured(ax, measurements, laws, weighting, laws_source)
        source = f"{len(measurements)} measurements from {measurements.source}"
        if laws is not None:
            source += f"\ndashed: the plane of {laws_source or 'the given laws'}"
    else:
        _draw_laws(ax, laws, target_params, target_tokens, draft_perplexity_range, interval, confidence)
        source = f"predicted by {laws_source or 'the acceptance and pre-training laws'}"
    ax.set_xlabel(DRAFT_PERPLEXITY_LABEL)
    ax.set_ylabel(ACCEPTANCE_LABEL)
    style.grid(ax)
    # Beside the axes: with a line per target the legend would hide the points.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.set_title(title or f"Acceptance against draft perplexity, one line per target\n{source}",
                 fontsize=11)
    return fig


def _draw_measured(ax, measurements, laws, weighting, laws_source):
    rows, targets = fit_data.acceptance_rows(measurements, weighting)
    fit = plane_fit.fit_per_target(rows, len(targets))
    slope, intercept, r2 = (np.asarray(v, np.float64) for v in (fit.draft_coeff, fit.intercept, fit.r2))
    x_all = np.asarray(measurements.columns["draft_perplexity"], np.float64)
    y_all = np.asarray(measurements.columns["target_perplexity"], np.float64)
    alpha = np.asarray(measurements.acceptance, np.float64)
    low, high = measured_intervals(measurements)
    index = np.asarray(rows.target_index)
    palette = style.colors(len(targets))
    target_params = np.asarray(measurements.columns["target_params"], np.float64)
    # Legend entries from the smallest target to the largest; k stays the fit's index.
    by_size = sorted(range(len(targets)), key=lambda k: target_params[index == k][0])
    for k in by_size:
        name = targets[k]
        mine = index == k
        x, a = x_all[mine], alpha[mine]
        size = format_count(target_params[mine][0])
        # Names default to the size (MeasurementSet.target_names); do not say it twice.
        name = (f"M = {size}" if name == size else f"{name}, M = {size}") + \
            f", y = {np.mean(y_all[mine]):.3g}"
        points = ax.errorbar(x, a, yerr=error_bars(a, low[mine], high[mine]), fmt="o", ms=5,
                             color=palette[k], capsize=2.5, elinewidth=1, alpha=0.9)
        points.lines[0].set_gid(f"points:{k}")
        grid = np.linspace(x.min(), x.max(), 50) if x.size > 1 else x
        fitted_r2 = "" if not np.isfinite(r2[k]) else f", R^2 = {r2[k]:.2f}"
        (line,) = ax.plot(grid, slope[k] * grid + intercept[k], color=palette[k], lw=2,
                          label=f"{name}: fit {slope[k]:+.4f} x + {intercept[k]:.3f}{fitted_r2}")
        line.set_gid(f"fit:{k}")
        if laws is not None:
            y = float(np.mean(y_all[mine]))
            plane = acceptance_lib.raw_acceptance(laws.acceptance_law, grid, y)
            (dashed,) = ax.plot(grid, np.asarray(plane), color=palette[k], lw=1.3, ls="--")
            dashed.set_gid(f"plane:{k}")
    if laws is not None:
        ax.plot([], [], color="gray", ls="--", lw=1.3, label="the laws' plane A x + B y + C at the target's y")
    ax.plot([], [], "o", color="gray", label="measured, with 95% interval")


def _draw_laws(ax, laws, target_params, target_tokens, x_range, interval, confidence):
    if target_params is None or target_tokens is None:
        raise ValueError("without measurements, give target_params and target_tokens")
    target_params = np.atleast_1d(np.asarray(target_params, np.float64))
    target_tokens = np.broadcast_to(np.asarray(target_tokens, np.float64), target_params.shape)
    low_x, high_x = (float(v) for v in x_range)
    if not 0 < low_x < high_x:
        raise ValueError(f"draft perplexity range must satisfy 0 < low < high, got {x_range}")
    x = np.linspace(low_x, high_x, 100)
    kind = bands.interval_method(laws, interval)
    laws = bands.finite_samples(laws)
    if kind == "bootstrap" and laws.samples is None:
        kind = None
    palette = style.colors(target_params.size)
    for k, (m, tokens) in enumerate(zip(target_params, target_tokens)):
        quantity = lambda v: _plane_line(v, x, m, tokens)
        y = float(pretraining.perplexity(laws.pretraining_law, m, tokens))
        (line,) = ax.plot(x, np.asarray(quantity(laws.coefficients)), color=palette[k], lw=2,
                          label=f"M = {format_count(m)}, D' = {format_count(tokens)} "
                                f"(target perplexity y = {y:.3g})")
        line.set_gid(f"law:{k}")
        limits = bands.band(quantity, laws, kind, confidence)
        if limits is not None:
            style.band(ax, x, *limits, palette[k], gid=f"band:{k}")
    if kind is not None:
        ax.fill_between([], [], [], color="gray", alpha=0.3, label=bands.band_label(kind, laws, confidence))
    a, b, c = (float(getattr(laws.acceptance_law, f)) for f in laws_lib.ACCEPTANCE_FIELDS)
    ax.plot([], [], " ", label=f"alpha = {a:.4g} x + {b:.4g} y + {c:.4g}")
