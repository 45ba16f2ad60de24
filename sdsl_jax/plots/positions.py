"""Acceptance by draft position: measured rates against the i.i.d. (truncated geometric) model.

The throughput law treats every drafted token as accepted with one rate alpha,
so the accepted count K of an iteration is a truncated geometric. This figure
checks that on runs of ``sdsl measure`` (sdsl_jax.estimation.positions has the math):

* left, the acceptance rate at draft position i = 1..gamma,
  #(K >= i) / #(K >= i - 1), with its 95% interval (prompts as
  clusters: ``cluster_interval``), and the fitted i.i.d. model: one rate, the MLE
  alpha_hat, at every position (dashed);
* right, the share of iterations that accepted K = 0..gamma drafts against
  the truncated geometric at alpha_hat, with the likelihood-ratio fit test's
  p-value in the legend.

Several runs files (e.g. one pair at lookahead 2, 4 and 8) are drawn side by
side: under the i.i.d. model their rates lie on one level whatever the
lookahead.

A runs file is JSON Lines, one object per prompt, with ``lookahead`` (gamma,
the same on every line) and ``accepted_per_iteration`` (K of each iteration,
integers in [0, gamma]); ``prompt_id``, ``draft_model`` and ``target_model``
are used when present. ``sdsl measure --out`` writes such files. The file is
UTF-8 text (a byte-order mark is dropped); a Latin-1, UTF-16 or binary file,
a folder or a missing file is one :class:`RunsError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from sdsl_jax.common.io import JsonlError, iter_jsonl
from sdsl_jax.common.tables import InputFileError, read_text
from sdsl_jax.common.validation import is_int


class RunsError(InputFileError):
    """A runs file that cannot be drawn; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class PositionRuns:
    """One runs file as arrays (iterations padded per prompt).

    Attributes:
      accepted: int32[P, I], K per iteration (0 beyond a prompt's iterations).
      mask: bool[P, I], False on the padding.
      prompt_ids: int32[P, I], the prompt (0..P-1) of each iteration.
      lookahead: gamma.
      label: what the legend calls the run.
      source: the file.
    """

    accepted: np.ndarray
    mask: np.ndarray
    prompt_ids: np.ndarray
    lookahead: int
    label: str
    source: str


def read_runs(path: str | os.PathLike) -> PositionRuns:
    """Read a runs file (module docstring); every mistake raises :class:`RunsError`."""
    source = os.fspath(path)
    rows, lookahead, first = [], None, None
    for number, record in _records(source):
        where = f"{source}: line {number}"
        for key in ("lookahead", "accepted_per_iteration"):
            if key not in record:
                raise RunsError(f"{where}: no {key!r} (is this a runs file of `sdsl "
                                "measure --out`?)")
        gamma = record["lookahead"]
        if not is_int(gamma) or gamma < 1:
            raise RunsError(f"{where}: lookahead must be an integer >= 1, got {gamma!r}")
        if lookahead is None:
            lookahead, first = gamma, record
        elif gamma != lookahead:
            raise RunsError(f"{where}: lookahead {gamma} differs from {lookahead} on the "
                            "first line; draw each lookahead from its own file")
        k = record["accepted_per_iteration"]
        if not isinstance(k, list) or not all(is_int(x) and 0 <= x <= gamma for x in k):
            raise RunsError(f"{where}: accepted_per_iteration must be a list of integers "
                            f"in [0, {gamma}]")
        rows.append(k)
    if not rows or not any(rows):
        raise RunsError(f"{source}: no iterations to count")
    width = max(len(k) for k in rows)
    accepted = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, k in enumerate(rows):
        accepted[i, :len(k)] = k
        mask[i, :len(k)] = True
    ids = np.broadcast_to(np.arange(len(rows), dtype=np.int32)[:, None], accepted.shape).copy()
    pair = ""
    if first.get("draft_model") and first.get("target_model"):
        pair = f"{first['draft_model']} -> {first['target_model']}, "
    return PositionRuns(accepted=accepted, mask=mask, prompt_ids=ids, lookahead=lookahead,
                        label=f"{pair}lookahead {lookahead}", source=source)


def _records(source: str):
    """(line number, record) of each non-blank line; RunsError for a file that cannot be read
    as JSON Lines or a line that is not an object."""
    try:
        yield from iter_jsonl(read_text(source), source)
    except JsonlError as err:
        if err.kind == "object":
            raise RunsError(f"{source}: line {err.line}: expected a JSON object",
                            path=source, line=err.line) from None
        raise RunsError(str(err), path=source, line=err.line) from None
    except InputFileError as err:
        raise RunsError(str(err), path=source, line=err.line) from None


def plot_positions(runs: Sequence[PositionRuns], *, confidence: float = 0.95,
                   num_resamples: int = 1000, seed: int = 0, title: str | None = None):
    """Rates per draft position against the i.i.d. model, and the K distribution.

    Args:
      runs: one or more :class:`PositionRuns` (see :func:`read_runs`).
      confidence: level of the interval bars.
      num_resamples: bootstrap resamples of prompts.
      seed: the bootstrap's key.

    Returns:
      The Figure, two Axes. Run s draws, in the left Axes, gid "rates:s"
      (x the position 1..gamma, y the rate) and "model:s" (a level line at
      alpha_hat across the positions); in the right, "observed:s" (x K = 0..gamma, y the
      share of iterations) and "expected:s" (the truncated geometric).
    """
    import jax

    from sdsl_jax.plots import style
    from sdsl_jax.estimation.positions import summarize_positions

    if not runs:
        raise ValueError("no runs to draw")
    fig, (rates_ax, counts_ax) = style.new_figure(1, 2, width=12.0, height=4.8)
    palette = style.colors(len(runs))
    width = 0.6 / len(runs)  # runs side by side around each position
    level = f"{confidence:.0%}"
    for s, run in enumerate(runs):
        summary = summarize_positions(run.accepted, run.lookahead, run.prompt_ids,
                                      mask=run.mask, confidence=confidence,
                                      num_resamples=num_resamples,
                                      key=jax.random.fold_in(jax.random.PRNGKey(seed), s))
        gamma, color = run.lookahead, palette[s]
        offset = (s - (len(runs) - 1) / 2) * width
        position = np.arange(1, gamma + 1)
        rate = np.array([np.nan if v is None else v for v in summary["position_rates"]])
        low = np.array([np.nan if v is None else v for v in summary["position_rates_low"]])
        high = np.array([np.nan if v is None else v for v in summary["position_rates_high"]])
        bars = rates_ax.errorbar(position + offset, rate,
                                 yerr=[np.nan_to_num(rate - low), np.nan_to_num(high - rate)],
                                 fmt="o", color=color, ms=5, capsize=3, elinewidth=1.1,
                                 label=f"{run.label}: measured, {level} interval")
        bars.lines[0].set_gid(f"rates:{s}")
        alpha = summary["geometric_acceptance"]
        (model,) = rates_ax.plot([1 - 0.4, gamma + 0.4], [alpha, alpha], ls="--", color=color,
                                 lw=1.3, label=f"i.i.d. model: alpha = {alpha:.3f}")
        model.set_gid(f"model:{s}")

        k = np.arange(gamma + 1)
        counts = np.bincount(run.accepted[run.mask], minlength=gamma + 1)
        share = counts / counts.sum()
        # truncated_geometric_pmf, on the host: alpha^k (1 - alpha), k < gamma; alpha^gamma.
        expected = np.where(k < gamma, alpha ** k * (1 - alpha), alpha ** k)
        p = summary["geometric_fit_p_value"]
        fit = ("" if p is None else
               f", fit test G = {summary['geometric_fit_statistic']:.3g} "
               f"({summary['geometric_fit_df']} df), p = {p:.3g}")
        (observed,) = counts_ax.plot(k + offset, share, "o", color=color, ms=6,
                                     label=f"{run.label}: {counts.sum():,} iterations{fit}")
        observed.set_gid(f"observed:{s}")
        (geometric,) = counts_ax.plot(k + offset, expected, "_", color=color, ms=16, mew=2.2,
                                      label=f"truncated geometric at alpha = {alpha:.3f}")
        geometric.set_gid(f"expected:{s}")
    longest = max(run.lookahead for run in runs)
    rates_ax.set_xticks(np.arange(1, longest + 1))
    rates_ax.set_xlim(0.4, longest + 0.6)
    rates_ax.set_ylim(0.0, 1.05)
    rates_ax.set_xlabel("draft position i (1 = the first drafted token)")
    rates_ax.set_ylabel("acceptance rate at position i\n#(K >= i) / #(K >= i - 1)")
    rates_ax.set_title("acceptance by draft position", fontsize=10)
    counts_ax.set_xticks(np.arange(0, longest + 1))
    counts_ax.set_xlim(-0.6, longest + 0.6)
    counts_ax.set_ylim(bottom=0.0)
    counts_ax.set_xlabel("drafts accepted in an iteration, K")
    counts_ax.set_ylabel("share of iterations")
    counts_ax.set_title("accepted drafts per iteration", fontsize=10)
    for ax in (rates_ax, counts_ax):
        style.grid(ax)
        ax.legend(fontsize=7.5, loc="best")
    fig.suptitle(title or "Acceptance by draft position against the i.i.d. (truncated "
                 "geometric) model\nbars: 95% intervals, prompts as clusters; dashed: one rate "
                 "alpha_hat at every position, as the throughput law assumes", fontsize=11)
    return fig
