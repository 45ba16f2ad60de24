"""Figure 4: measured latency against the distance from the predicted optimum, |N - N*| / M.

The paper's end-to-end check: if the planner's N* is right, the drafts whose
size is closest to it decode fastest, and latency rises with the distance.
Three panels share the x axis |N - N*| / M (draft size minus the predicted
optimum, in units of the target's size): time to first token, time per
output token and total time, each point with its 95% interval.

A latency table is CSV (``.csv``), JSON Lines (``.jsonl``/``.ndjson``) or
Parquet (``.parquet``), one row per measured (draft, target) pair, each value
the mean over the prompts.

Required columns:

  draft_params, target_params   N and M, parameters (70B, 125M or 1.25e8)
  at least one of:
    ttft    time to first token, seconds
    tpot    time per output token after the first, seconds per token
    ttot    total time for the whole response, seconds

Optional columns:

  ttft_low, ttft_high           the 95% interval of each mean, seconds (both
  tpot_low, tpot_high           or neither; a row may leave them empty: it
  ttot_low, ttot_high           is then drawn without a bar)
  optimal_draft_params          the predicted N* for the row's target; when
                                absent, N* is predicted with the laws from
  draft_tokens, target_tokens   D and D' (then required)
  draft_model, target_model     names, used in labels
  family                        draft family; points are coloured by it
  prompts                       how many prompts each mean is over

Other columns are ignored, except one whose name is a near miss of a column
above that the table lacks (``ttf``, ``TPOT``): it is refused with a
did-you-mean, since its values would otherwise be silently dropped. An empty
cell (CSV), null (JSON) or missing key is absent; a latency that is absent
leaves the point out of that panel.

Files are read through :mod:`sdsl_jax.common.tables`: UTF-8 with or without a
byte-order mark; other encodings, binary files, duplicated or blank column
names and CSV rows with more or fewer fields than the header are refused with
the file, row and column named.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from sdsl_jax.common.io import JsonlError, parse_jsonl
from sdsl_jax.common.quantities import format_count, parse_count
from sdsl_jax.common.tables import (InputFileError, check_column_names, decode_text,
                                    parse_csv_table, read_bytes)

METRICS = ("ttft", "tpot", "ttot")
REQUIRED_COLUMNS = ("draft_params", "target_params")
SIZE_COLUMNS = ("draft_params", "target_params", "draft_tokens", "target_tokens", "optimal_draft_params")
NUMBER_COLUMNS = SIZE_COLUMNS + METRICS + tuple(f"{m}_{end}" for m in METRICS for end in ("low", "high")) + (
    "prompts",)
TEXT_COLUMNS = ("draft_model", "target_model", "family")
KNOWN_COLUMNS = NUMBER_COLUMNS + TEXT_COLUMNS
# metric -> (panel title, unit label, scale from seconds)
PANELS = {
    "ttft": ("time to first token (TTFT)", "TTFT (ms)", 1e3),
    "tpot": ("time per output token (TPOT)", "TPOT (ms per token)", 1e3),
    "ttot": ("total time (TTOT)", "TTOT (s)", 1.0),
}
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Bounds are rounded when written; forgive that much when checking low <= mean <= high.
_TOLERANCE = 1e-9


class LatencyError(InputFileError):
    """A latency table that cannot be used; the message names the file, row and column."""


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """Validated latency rows: float64 arrays (NaN = absent) and str arrays ("" = absent)."""

    columns: dict
    source: str

    def __len__(self) -> int:
        return len(self.columns["draft_params"])

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for m in METRICS if m in self.columns)


def read_latency(path: str | os.PathLike) -> LatencyTable:
    """Read and validate a latency table (see the module docstring for the columns).

    Raises:
      LatencyError: a missing, unreadable or non-UTF-8 file, a missing
        required column, a misspelt one, or a bad value (file, row, column named).
    """
    source = os.fspath(path)
    kind = _FORMATS.get(Path(source).suffix.lower())
    if kind is None:
        raise LatencyError(f"{source}: cannot tell the format from the extension; "
                           "name the file .csv, .jsonl, .ndjson or .parquet", path=source)
    try:
        data = read_bytes(source)
        if not data:
            raise LatencyError(f"{source}: empty file, expected a latency table", path=source)
        records = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[kind](data, source)
        check_column_names(dict.fromkeys(name for record in records for name in record), source,
                           required=(), known=KNOWN_COLUMNS, unknown="keep")
    except LatencyError:
        raise
    except InputFileError as err:
        raise LatencyError(str(err), path=err.path, row=err.row, line=err.line,
                           column=err.column) from None
    return latency_table(records, source)


def latency_table(records: list[dict], source: str = "latency") -> LatencyTable:
    """A validated table from one mapping per row (values: numbers, strings or None)."""
    if not records:
        raise LatencyError(f"{source}: no rows")
    names = list(dict.fromkeys(name for record in records for name in record))
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if not any(m in names for m in METRICS):
        missing.append("one of ttft, tpot, ttot")
    if missing:
        raise LatencyError(f"{source}: missing required column(s): {', '.join(missing)} "
                           f"(columns found: {', '.join(names) or 'none'}; see `sdsl plot latency --help`)")
    for metric in METRICS:
        pair = [f"{metric}_low", f"{metric}_high"]
        given = [name in names for name in pair]
        if any(given) and not all(given):
            raise LatencyError(f"{source}: column {pair[given.index(False)]!r} is missing while "
                               f"{pair[given.index(True)]!r} is given; give both bounds or neither")
    columns = {}
    for name in names:
        if name in NUMBER_COLUMNS:
            columns[name] = np.array([_number(source, row, name, record.get(name))
                                      for row, record in enumerate(records, 1)], np.float64)
        elif name in TEXT_COLUMNS:
            columns[name] = np.array(["" if record.get(name) is None else str(record.get(name))
                                      for record in records], object)
    if "prompts" in columns:
        counts = columns["prompts"]
        bad = np.isfinite(counts) & ~((counts >= 1) & (counts == np.round(counts)))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise LatencyError(f"{source}: row {row + 1}, column 'prompts': must be a whole "
                               f"number >= 1, got {float(counts[row])!r}")
    for name in REQUIRED_COLUMNS:
        absent = ~np.isfinite(columns[name])
        if absent.any():
            raise LatencyError(f"{source}: row {int(np.flatnonzero(absent)[0]) + 1}, column {name!r}: "
                               "a value is required")
    for metric in METRICS:
        if metric not in columns or f"{metric}_low" not in columns:
            continue
        mean, low, high = columns[metric], columns[f"{metric}_low"], columns[f"{metric}_high"]
        for row in np.flatnonzero(np.isfinite(mean)):
            if np.isfinite(low[row]) != np.isfinite(high[row]):
                raise LatencyError(f"{source}: row {row + 1}: give both {metric}_low and "
                                   f"{metric}_high or neither")
            if np.isfinite(low[row]) and not low[row] - _TOLERANCE <= mean[row] <= high[row] + _TOLERANCE:
                raise LatencyError(f"{source}: row {row + 1}, column {metric!r}: "
                                   f"{float(mean[row])!r} lies outside its interval "
                                   f"[{float(low[row])!r}, {float(high[row])!r}]")
    return LatencyTable(columns=columns, source=source)


def _number(source, row, name, value) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    where = f"{source}: row {row}, column {name!r}"
    if name in SIZE_COLUMNS:
        try:
            return parse_count(value)
        except ValueError as err:
            raise LatencyError(f"{where}: {err}") from None
    if isinstance(value, bool):
        raise LatencyError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LatencyError(f"{where}: not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0 or (name in METRICS and number == 0):
        raise LatencyError(f"{where}: {value!r} is not a {'positive' if name in METRICS else 'non-negative'} "
                           "finite number")
    return number


def _read_csv(data: bytes, source: str) -> list[dict]:
    # Unknown columns are ignored (the module docstring), so "keep"; the
    # required ones are latency_table's to name, for every format alike.
    return parse_csv_table(decode_text(data, source), source, required=(), optional=KNOWN_COLUMNS,
                           unknown="keep").records()


def _read_jsonl(data: bytes, source: str) -> list[dict]:
    try:
        return parse_jsonl(decode_text(data, source), source)
    except JsonlError as err:
        if err.kind == "object":
            raise LatencyError(f"{source}: line {err.line}: expected a JSON object",
                               path=source, line=err.line) from None
        raise


def _read_parquet(data: bytes, source: str) -> list[dict]:
    # Opened by Arrow, not from ``data``: see read_parquet_table on exit status 134.
    from sdsl_jax.estimation.measurements import read_parquet_table
    return read_parquet_table(source).to_pylist()


def optimal_sizes(table: LatencyTable, laws, *, draft_tokens=None, method: str = "bracket") -> np.ndarray:
    """N* for every row: the optimal_draft_params column where given, else the planner's.

    The planner (``method``: "bracket" or "gradient") needs each row's
    target_tokens, and draft_tokens unless ``draft_tokens`` (one D for every
    row) is given.

    Raises:
      LatencyError: the columns the prediction needs are missing, or no
        draft size pays for a row's target under the laws.
    """
    from sdsl_jax.plots import bands

    cols = table.columns
    n_star = np.array(cols.get("optimal_draft_params", np.full(len(table), np.nan)), np.float64)
    need = ~np.isfinite(n_star)
    if not need.any():
        return n_star
    d = (np.full(len(table), float(draft_tokens)) if draft_tokens is not None
         else cols.get("draft_tokens", np.full(len(table), np.nan)))
    d_target = cols.get("target_tokens", np.full(len(table), np.nan))
    for name, values in (("target_tokens", d_target), ("draft_tokens", d)):
        bad = need & ~np.isfinite(values)
        if bad.any():
            raise LatencyError(
                f"{table.source}: row {int(np.flatnonzero(bad)[0]) + 1}: predicting N* needs column "
                f"{name!r} (or give N* itself in 'optimal_draft_params'"
                f"{'' if name == 'target_tokens' else ', or --draft-tokens'})")
    plan, _, _ = bands.plan_draft_sizes(laws, cols["target_params"][need], d[need], d_target[need],
                                        method=method)
    if not np.all(plan.pays):
        row = int(np.flatnonzero(need)[np.flatnonzero(~plan.pays)[0]]) + 1
        raise LatencyError(f"{table.source}: row {row}: no draft size pays for the target "
                           f"({format_count(cols['target_params'][row - 1])} parameters) under these laws, "
                           "so there is no N* to measure a distance from")
    n_star[need] = plan.draft_params
    return n_star


def plot_latency(table: LatencyTable, laws=None, *, draft_tokens=None, method: str = "bracket",
                 laws_source: str | None = None, title: str | None = None):
    """TTFT, TPOT and TTOT against |N - N*| / M, with 95% interval bars.

    Args:
      table: a :class:`LatencyTable` (see :func:`read_latency`).
      laws: FittedLaws to predict N* where the table does not give it
        (default: the published presets).
      draft_tokens: one D for every row, overriding the draft_tokens column.
      method: the planner's, "bracket" or "gradient".

    Returns:
      The Figure: one Axes per latency column present, in the order ttft,
      tpot, ttot; in each, group g's points have gid "points:g" (x the
      distance, y the latency in the panel's unit) and the measured minimum
      of each target is ringed (gid "minimum:t").
    """
    from sdsl_jax.plots import bands, style

    laws = bands.preset_laws() if laws is None else laws
    cols = table.columns
    n_star = optimal_sizes(table, laws, draft_tokens=draft_tokens, method=method)
    distance = np.abs(cols["draft_params"] - n_star) / cols["target_params"]
    targets = _names(cols, "target")
    drafts = _names(cols, "draft")
    by_family = "family" in cols and bool(np.any(cols["family"] != ""))
    groups = cols["family"] if by_family else targets
    group_names = list(dict.fromkeys(groups))
    target_names = list(dict.fromkeys(targets))
    palette = style.colors(len(group_names))
    markers = "osD^vP"
    metrics = table.metrics
    fig, axes = style.new_figure(1, len(metrics), width=5.0 * len(metrics) + 1.2, height=4.8)
    for ax, metric in zip(axes, metrics):
        heading, unit, scale = PANELS[metric]
        value = cols[metric] * scale
        low = cols.get(f"{metric}_low", np.full(len(table), np.nan)) * scale
        high = cols.get(f"{metric}_high", np.full(len(table), np.nan)) * scale
        present = np.isfinite(value)
        for g, group in enumerate(group_names):
            for t, target in enumerate(target_names):
                mine = present & (groups == group) & (targets == target)
                if not mine.any():
                    continue
                below = np.where(np.isfinite(low[mine]), value[mine] - low[mine], 0.0)
                above = np.where(np.isfinite(high[mine]), high[mine] - value[mine], 0.0)
                label = group if len(target_names) == 1 or not by_family else f"{group}, {target}"
                points = ax.errorbar(distance[mine], value[mine], yerr=[below, above],
                                     fmt=markers[t % len(markers)], color=palette[g], ms=6,
                                     capsize=3, elinewidth=1.1, label=label)
                points.lines[0].set_gid(f"points:{g}" if len(target_names) == 1 else f"points:{g}:{t}")
        for t, target in enumerate(target_names):
            mine = present & (targets == target)
            if not mine.any():
                continue
            best = np.flatnonzero(mine)[np.argmin(value[mine])]
            (ring,) = ax.plot([distance[best]], [value[best]], "o", ms=15, mfc="none", mec="black",
                              mew=1.5, label="measured minimum" if t == 0 else None)
            ring.set_gid(f"minimum:{t}")
        if ax is axes[0] and np.count_nonzero(present) <= 12:
            # Names once (the drafts are the same in every panel); neighbours in x
            # alternate above and below so close points do not print over each other.
            order = np.flatnonzero(present)[np.argsort(distance[present])]
            for j, i in enumerate(order):
                ax.annotate(drafts[i], (distance[i], value[i]), textcoords="offset points",
                            xytext=(6, 5 if j % 2 == 0 else -11), fontsize=7, color="dimgray")
        ax.set_xlim(left=-0.04 * max(distance.max(), 1e-3), right=1.18 * max(distance.max(), 1e-3))
        ax.axvline(0.0, color="black", ls=":", lw=1.2, label="predicted optimum N*")
        ax.set_xlabel("|N - N*| / M  (draft size's distance from N*,\nin units of the target size)")
        ax.set_ylabel(unit)
        ax.set_title(heading, fontsize=10)
        style.grid(ax)
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                    title="draft family" if by_family else "target", title_fontsize=8)
    prompts = cols.get("prompts")
    over = ""
    if prompts is not None and np.any(np.isfinite(prompts)):
        over = f", means over {int(np.nanmin(prompts))}" + (
            "" if np.nanmin(prompts) == np.nanmax(prompts) else f"-{int(np.nanmax(prompts))}") + " prompts"
    given = "optimal_draft_params" in cols and np.all(np.isfinite(cols["optimal_draft_params"]))
    optimum = {target: n_star[targets == target][0] for target in target_names}
    values = ", ".join(f"{format_count(v)} for {t}" for t, v in list(optimum.items())[:3])
    values += ", ..." if len(optimum) > 3 else ""
    predicted = (f"N* = {values} (given in the table)" if given
                 else f"N* = {values}, predicted by {laws_source or 'the laws'}")
    fig.suptitle(title or f"Measured latency against distance from the predicted optimal draft size"
                 f"\n{len(table)} (draft, target) pairs from {table.source}{over}; {predicted}; "
                 "bars: 95% intervals", fontsize=11)
    return fig


def _names(cols, role):
    given = cols.get(f"{role}_model", np.full(len(cols["draft_params"]), "", object))
    return np.array([name or format_count(float(n)) for name, n in zip(given, cols[f"{role}_params"])],
                    object)
