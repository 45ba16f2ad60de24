"""Figure 1: the fitted acceptance plane alpha = A x + B y + C over measured points.

Two panels. Left, in 3D: the plane over the range of the measured draft and
target perplexities (x, y), the measured (x, y, alpha) points, and a stem from
each point to the plane (its residual), coloured by sign. Right, the same fit
read off flat: measured acceptance (with its 95% interval) against the
plane's prediction at the point's (x, y), with the line of perfect agreement;
R^2 and the rms residual are printed on it. The plane is either given (a laws
file or a preset) or fitted to the points, as ``sdsl fit`` fits it.
"""

from __future__ import annotations

import numpy as np

from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.fitting import acceptance as plane_fit
from sdsl_jax.fitting import data as fit_data
from sdsl_jax.plots import style
from sdsl_jax.plots.acceptance_curves import error_bars, measured_intervals

ABOVE, BELOW = "#c0392b", "#2962a8"  # measured above / below the plane


def fit_plane(measurements, weighting: str = "auto") -> acceptance_lib.AcceptanceLaw:
    """The plane ``sdsl fit`` reports as 'acceptance plane on measured perplexities'."""
    rows, _ = fit_data.acceptance_rows(measurements, weighting)
    law = plane_fit.fit_acceptance_law(rows).law
    return acceptance_lib.AcceptanceLaw(**{k: float(v) for k, v in law.items()})


def plot_acceptance_plane(measurements, law: acceptance_lib.AcceptanceLaw | None = None, *,
                          law_source: str | None = None, weighting: str = "auto",
                          title: str | None = None):
    """The acceptance plane over the measured points.

    Args:
      measurements: a MeasurementSet (draft and target perplexities, acceptance).
      law: the plane to draw; None fits it to ``measurements`` (``weighting``
        as in ``sdsl fit``).
      law_source: how the law was obtained, for the title (e.g. a file name).

    Returns:
      The Figure: axes[0] the 3D view (surface gid "plane", points gid
      "points"), axes[1] the agreement panel whose points (gid "agreement")
      have x = the plane's prediction and y = the measured acceptance.
    """
    if law is None:
        law = fit_plane(measurements, weighting)
        law_source = law_source or "least-squares fit to these points"
    a, b, c = (float(law.draft_coeff), float(law.target_coeff), float(law.intercept))
    x = np.asarray(measurements.columns["draft_perplexity"], np.float64)
    y = np.asarray(measurements.columns["target_perplexity"], np.float64)
    alpha = np.asarray(measurements.acceptance, np.float64)
    predicted = a * x + b * y + c
    residual = alpha - predicted
    r2 = 1 - np.sum(residual**2) / np.sum((alpha - alpha.mean()) ** 2) if np.ptp(alpha) > 0 else np.nan
    rms = float(np.sqrt(np.mean(residual**2)))

    fig, (ax3, ax2) = style.new_figure(1, 2, width=12.5, height=5.6, projection=["3d", None])
    pad = lambda v: (v.min() - 0.05 * max(np.ptp(v), 1e-3), v.max() + 0.05 * max(np.ptp(v), 1e-3))
    gx, gy = np.meshgrid(np.linspace(*pad(x), 24), np.linspace(*pad(y), 24))
    surface = ax3.plot_surface(gx, gy, a * gx + b * gy + c, cmap="viridis", alpha=0.45,
                               linewidth=0.3, edgecolor="white", antialiased=True)
    surface.set_gid("plane")
    colour = np.where(residual >= 0, ABOVE, BELOW)
    for xi, yi, ai, pi, ci in zip(x, y, alpha, predicted, colour):
        ax3.plot([xi, xi], [yi, yi], [pi, ai], color=ci, lw=0.9, alpha=0.8)
    points = ax3.scatter(x, y, alpha, c=colour, s=18, depthshade=False, edgecolor="black", lw=0.3)
    points.set_gid("points")
    ax3.set_xlabel("draft perplexity x")
    ax3.set_ylabel("target perplexity y")
    ax3.set_zlabel("acceptance alpha")
    ax3.view_init(elev=22, azim=-58)
    ax3.set_title(f"alpha = {a:.4g} x + {b:.4g} y + {c:.4g}\n(stems: measured minus plane; "
                  "red above, blue below)", fontsize=10)

    low, high = measured_intervals(measurements)
    ax2.errorbar(predicted, alpha, yerr=error_bars(alpha, low, high), fmt="none",
                 ecolor="gray", elinewidth=0.8, capsize=2, alpha=0.7, zorder=1)
    agreement = ax2.scatter(predicted, alpha, c=colour, s=22, edgecolor="black", lw=0.3, zorder=2)
    agreement.set_gid("agreement")
    # The square view holds every point and every interval, so no bar is cut off.
    ends = np.concatenate([predicted, alpha, low[np.isfinite(low)], high[np.isfinite(high)]])
    span = np.array([ends.min(), ends.max()])
    span = span + np.array([-1, 1]) * 0.03 * max(np.ptp(span), 1e-3)
    ax2.plot(span, span, color="black", lw=1, ls="--", label="measured = plane")
    for colour_, side in ((ABOVE, "above"), (BELOW, "below")):
        ax2.scatter([], [], c=colour_, s=22, edgecolor="black", lw=0.3, label=f"measured {side} the plane")
    ax2.set_xlim(*span)
    ax2.set_ylim(*span)
    ax2.set_aspect("equal")
    ax2.set_xlabel("acceptance predicted by the plane")
    ax2.set_ylabel("measured acceptance (95% interval)")
    ax2.text(0.03, 0.97, f"{len(alpha)} measurements\nR^2 = {r2:.3f}\nrms residual = {rms:.4f}",
             transform=ax2.transAxes, va="top", fontsize=9,
             bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="lightgray"))
    style.grid(ax2)
    ax2.legend(loc="lower right", fontsize=8)
    ax2.set_title("measured against predicted acceptance", fontsize=10)
    fig.suptitle(title or f"The acceptance plane over {len(alpha)} measured (draft, target) pairs"
                 f"\nplane: {law_source or 'given'}; points: {measurements.source}", fontsize=11)
    return fig
