"""Measurement sets: the data an acceptance scaling law is fitted to.

A measurement set is a table with one row per measurement: a draft model
speculating for a target model on a set of prompts, with a lookahead gamma,
and the acceptance rate alpha that came out. The same table can be stored as
CSV (``.csv``), JSON Lines (``.jsonl`` or ``.ndjson``, one JSON object per line)
or Parquet (``.parquet``); the columns are the same in all three.

Required columns:

  draft_params, target_params          parameter counts N and M, > 0
  draft_tokens, target_tokens          training tokens D and D', > 0
  draft_perplexity, target_perplexity  perplexities x and y on the prompts, >= 1
                                       (a perplexity is exp(loss), loss >= 0)
  lookahead                            gamma, an integer >= 1 (4 or 4.0, not 4.5)

and the acceptance, in either of two forms (a row may use either; a row that
gives both must agree to within 1e-6):

  acceptance                           alpha in [0, 1]
  accepted, trials                     counts, 0 <= accepted <= trials, trials >= 1

Optional columns:

  acceptance_low, acceptance_high      a reported interval, both or neither,
                                       low <= alpha <= high (to within 1e-6)
  prompts                              number of prompts, an integer >= 1
  draft_model, target_model,           free text
  family, prompt_set

Any other column is kept as text, so a file round-trips through this module
without losing what it carries; but a column whose name is a near miss of a
known one that the file lacks (``target_param``, ``Trials``) is refused with
a did-you-mean, since its values would otherwise be silently ignored.

Files are read through :mod:`sdsl_jax.common.tables`: UTF-8 with or without
a byte-order mark; Latin-1, UTF-16 or binary files, duplicated or blank
column names and CSV rows with more or fewer fields than the header are
refused with the file, row and column named.

Sizes (``*_params``, ``*_tokens``) may be written ``70e9``, ``70B``, ``15T`` or
``125M`` (see :func:`sdsl_jax.common.quantities.parse_count`). An absent value is an
empty CSV cell, a JSON ``null`` or missing key, or a Parquet null; ``nan`` and
``inf`` written out are errors, not absences.

Every row either loads or raises :class:`MeasurementError`; nothing is dropped.
The error names the file, the row and the column, e.g.::

  measurements.csv: row 7, column 'draft_params': -3 is not a positive number

Rows are numbered from 1 over the data rows only (the CSV header is not a
row); when blank lines make the file's line number differ, it is added, as in
``row 3 (line 5)``.

In memory (:class:`MeasurementSet`) every number is a float64 array, NaN where
an optional value is absent, so the integer columns (lookahead, accepted,
trials, prompts) are float64 holding whole numbers; text columns are object
arrays of str, "" where absent. ``columns`` holds the columns the source had,
in its order.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sdsl_jax.common.io import atomic_write, iter_jsonl, write_jsonl
from sdsl_jax.common.quantities import format_count, parse_count
from sdsl_jax.common.tables import (InputFileError, check_column_names, decode_text,
                                    parse_csv_table, read_bytes)

SIZE_COLUMNS = ("draft_params", "target_params", "draft_tokens", "target_tokens")
REQUIRED_COLUMNS = SIZE_COLUMNS + ("draft_perplexity", "target_perplexity", "lookahead")
# Column -> rule. An int is the minimum of an integer column.
_RULES: dict[str, Any] = {
    **{name: "size" for name in SIZE_COLUMNS},
    "draft_perplexity": "perplexity", "target_perplexity": "perplexity",
    "acceptance": "fraction", "acceptance_low": "fraction", "acceptance_high": "fraction",
    "lookahead": 1, "accepted": 0, "trials": 1, "prompts": 1,
}
INTEGER_COLUMNS = tuple(name for name, rule in _RULES.items() if isinstance(rule, int))
# Reported numbers are rounded; 1e-6 forgives that and nothing a fit would notice.
TOLERANCE = 1e-6
_FORMATS = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "parquet": "parquet"}
TEXT_COLUMNS = ("draft_model", "target_model", "family", "prompt_set")
# Every column the format names; others are kept, unless they look like a typo of one of these.
KNOWN_COLUMNS = tuple(_RULES) + TEXT_COLUMNS


class MeasurementError(InputFileError):
    """A measurement file or table that does not follow the format."""


def _from_input(err: InputFileError) -> MeasurementError:
    """The reading layer's error as this module's (the message already names file, row, column)."""
    return MeasurementError(str(err), path=err.path, row=err.row, line=err.line, column=err.column)


class _Checked(dict):
    """Columns that passed validation (made only by _parse and select)."""


class _CellError(Exception):
    """A bad value; the caller adds the file, row and column."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MeasurementSet:
    """A validated measurement set; see the module docstring for the format.

    Attributes:
      columns: name -> array of length n: float64 for numbers (NaN = absent),
        object arrays of str for text ("" = absent). Arrays are read-only.
      source: where the set came from (a path), used in error messages.

    Constructing one validates ``columns`` as :meth:`from_columns` does.
    """

    columns: dict[str, np.ndarray]
    source: str | None = None

    def __post_init__(self):
        # Validating here, not only in the readers, means no code path can hold
        # a set that breaks the format's rules; columns that already passed
        # (from a reader or select) are not checked twice.
        if type(self.columns) is _Checked:
            return
        parsed = _parse(self.columns, self.source or "measurements", None, nan_is_absent=True)
        object.__setattr__(self, "columns", parsed)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Iterable] | None = None, /, *,
                     source: str | None = None, **arrays: Iterable) -> MeasurementSet:
        """A set from column arrays, by mapping or keyword; NaN or None = absent."""
        return cls({**(columns or {}), **arrays}, source)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]],
                     source: str | None = None) -> MeasurementSet:
        """A set from one mapping per row; a missing key, None or NaN = absent."""
        return cls(_records_to_columns(list(records), source or "measurements"), source)

    def __len__(self) -> int:
        return len(self.columns["lookahead"])

    def __repr__(self) -> str:
        return f"MeasurementSet({len(self)} rows, columns={list(self.columns)}, source={self.source!r})"

    @property
    def has_counts(self) -> np.ndarray:
        """Per row: whether accepted/trials counts are given."""
        if "trials" not in self.columns:
            return np.zeros(len(self), bool)
        return ~np.isnan(self.columns["trials"])

    @property
    def acceptance(self) -> np.ndarray:
        """alpha per row: accepted/trials where counts are given (they are exact),
        else the ``acceptance`` column."""
        alpha = np.array(self.columns.get("acceptance", np.full(len(self), np.nan)), np.float64)
        counts = self.has_counts
        if counts.any():
            alpha[counts] = self.columns["accepted"][counts] / self.columns["trials"][counts]
        return alpha

    @property
    def target_names(self) -> np.ndarray:
        """target_model where given, else the target's size, e.g. '70B'."""
        return self._names("target")

    @property
    def draft_names(self) -> np.ndarray:
        """draft_model where given, else the draft's size, e.g. '281M'."""
        return self._names("draft")

    def _names(self, role: str) -> np.ndarray:
        given = self.columns.get(f"{role}_model", np.full(len(self), "", object))
        params = self.columns[f"{role}_params"]
        return np.array([name or format_count(float(n)) for name, n in zip(given, params)], object)

    def select(self, rows) -> MeasurementSet:
        """The rows picked by a boolean mask of length n or by integer indices."""
        rows = np.asarray(rows)
        if rows.dtype == bool and rows.shape != (len(self),):
            raise ValueError(f"a boolean mask must have shape ({len(self)},), got {rows.shape}")
        picked = _Checked({name: values[rows] for name, values in self.columns.items()})
        for values in picked.values():
            values.setflags(write=False)
        return MeasurementSet(picked, self.source)


def read_measurements(path: str | os.PathLike, format: str | None = None) -> MeasurementSet:
    """Read and validate a measurement set from CSV, JSON Lines or Parquet.

    The format comes from the extension unless ``format`` ('csv', 'jsonl',
    'parquet') is given. Rows in error messages are 1-based data rows, the CSV
    header not counted.

    Raises:
      MeasurementError: the file breaks the format, or is missing, a folder,
        unreadable or not UTF-8 text; the message names the file, and the row
        and column where there is one.
    """
    source = os.fspath(path)
    kind = _format_of(source, format)
    try:
        data = read_bytes(source)
        if not data:
            raise MeasurementError(f"{source}: empty file, expected a {kind} measurement set",
                                   path=source)
        reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[kind]
        raw, labels = reader(data, source)
    except MeasurementError:
        raise
    except InputFileError as err:
        raise _from_input(err) from None
    return MeasurementSet(_parse(raw, source, labels, nan_is_absent=False), source)


def write_measurements(measurements: MeasurementSet, path: str | os.PathLike,
                       format: str | None = None) -> None:
    """Write a set so that :func:`read_measurements` gives back equal columns.

    Floats are written with repr (no precision lost), integer columns as
    integers, absent values as empty CSV cells, JSON nulls or Parquet nulls.
    The file is replaced atomically: an interrupted write leaves the old one.
    """
    kind = _format_of(os.fspath(path), format)
    {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}[kind](measurements, path)


def _format_of(source: str, format: str | None) -> str:
    if format is not None:
        if format not in _FORMATS:
            raise ValueError(f"unknown measurement format {format!r}; choose 'csv', 'jsonl' or 'parquet'")
        return _FORMATS[format]
    suffix = Path(source).suffix.lower()
    if suffix.lstrip(".") not in _FORMATS:
        # The CLI has no format option: the extension is what a user can change.
        raise MeasurementError(
            f"{source}: cannot tell the format from the extension {suffix or '(none)'!r}; name the "
            "file .csv, .jsonl, .ndjson or .parquet", path=source)
    return _FORMATS[suffix.lstrip(".")]


def _read_csv(data: bytes, source: str):
    # Required columns are checked here only as far as the header goes; which
    # acceptance columns a set needs is _check_columns' question.
    table = parse_csv_table(decode_text(data, source), source, required=REQUIRED_COLUMNS,
                            optional=KNOWN_COLUMNS, unknown="keep", allow_empty=True)
    if not table.rows:
        raise MeasurementError(f"{source}: no measurement rows (the file has only a header)",
                               path=source)
    columns = {name: table.column(name) for name in table.header}
    return columns, [table.label(i) for i in range(len(table))]


def _read_jsonl(data: bytes, source: str):
    records, labels = [], []
    # Its wording is this format's: "<file>: line <n>: not valid JSON (...)"
    # or "... expected a JSON object, got <type>".
    for line_number, record in iter_jsonl(decode_text(data, source), source):
        records.append(record)
        labels.append(f"row {len(records)}" if line_number == len(records)
                      else f"row {len(records)} (line {line_number})")
    if not records:
        raise MeasurementError(f"{source}: no measurement rows (only blank lines)", path=source)
    columns = _records_to_columns(records, source)
    check_column_names(columns, source, required=(), known=KNOWN_COLUMNS, unknown="keep")
    return columns, labels


def read_parquet_table(source: str):
    """The pyarrow Table in the Parquet file ``source``; :class:`InputFileError` if it is not one.

    Shared by every Parquet file the CLI reads. The file is opened by Arrow
    itself (``pa.OSFile``), never through a Python file object or bytes:
    Parquet's reader finishes on a thread of Arrow's pool, and when its last
    reference to a Python-backed buffer dropped there while the interpreter
    was exiting (after a refusal), that thread needed the GIL, was stopped
    inside a C++ destructor, and the process aborted ("terminate called
    without an active exception", exit status 134) in about one run in ten.
    """
    # Imported here so CSV and JSON Lines work where pyarrow is not installed.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pa.OSFile(source) as handle:
            return pq.read_table(handle, use_threads=False)
    except (pa.ArrowException, OSError) as e:
        raise InputFileError(f"{source}: not a readable Parquet file ({e})", path=source) from None


def _read_parquet(data: bytes, source: str):
    table = read_parquet_table(source)
    _check_names(table.column_names, source)
    check_column_names(table.column_names, source, required=(), known=KNOWN_COLUMNS, unknown="keep")
    if table.num_rows == 0:
        raise MeasurementError(f"{source}: no measurement rows", path=source)
    return {name: table.column(name).to_pylist() for name in table.column_names}, None


def _records_to_columns(records: list, source: str) -> dict[str, list]:
    names: dict[str, None] = {}  # an ordered set: columns in order of first appearance
    for row, record in enumerate(records, 1):
        if not isinstance(record, Mapping):
            raise MeasurementError(f"{source}: row {row}: expected a mapping, got {type(record).__name__}")
        names.update(dict.fromkeys(record))
    return {name: [record.get(name) for record in records] for name in names}


def _check_names(names: Sequence[str], source: str) -> None:
    if not names:
        raise MeasurementError(f"{source}: no columns")
    for position, name in enumerate(names, 1):
        if not name:
            raise MeasurementError(f"{source}: column {position} has no name")
        if names.index(name) != position - 1:
            raise MeasurementError(f"{source}: column {name!r} appears twice")


def _check_columns(names: Sequence[str], source: str) -> None:
    def missing(name, why=""):
        return MeasurementError(f"{source}: missing required column {name!r}{why} "
                                f"(columns found: {', '.join(names)})")

    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise missing(name)
    if "acceptance" not in names and "accepted" not in names and "trials" not in names:
        raise missing("acceptance", " (or both 'accepted' and 'trials')")
    for pair in (("accepted", "trials"), ("acceptance_low", "acceptance_high")):
        for name, other in (pair, pair[::-1]):
            if other in names and name not in names:
                raise missing(name, f" ({other!r} is given; give both or neither)")


def _parse(raw: Mapping[str, Iterable], source: str, labels: Sequence[str] | None,
           nan_is_absent: bool) -> _Checked:
    """Validate raw cells (str, numbers, None) into the in-memory columns."""
    if not isinstance(raw, Mapping):
        raise MeasurementError(f"{source}: columns must be a mapping of name -> values")
    cells = {}
    for name, values in raw.items():
        # Cells may themselves be lists (a JSON array in an extra column), so only
        # arrays get a shape check; np.ndim would choke on such ragged lists.
        flat = (values.ndim == 1 if isinstance(values, np.ndarray) else
                hasattr(values, "__iter__") and not isinstance(values, (str, bytes, Mapping)))
        if not isinstance(name, str) or not flat:
            raise MeasurementError(f"{source}: column {name!r} must be named by a str "
                                   "and hold a 1-D sequence of values")
        cells[name] = list(values)
    names = list(cells)
    _check_names(names, source)
    _check_columns(names, source)
    lengths = {name: len(values) for name, values in cells.items()}
    if len(set(lengths.values())) != 1:
        raise MeasurementError(f"{source}: columns differ in length: {lengths}")
    n = lengths[names[0]]
    if labels is None:
        labels = [f"row {i}" for i in range(1, n + 1)]

    numeric = [name for name in names if name in _RULES]
    out = {name: np.full(n, np.nan) if name in _RULES else np.full(n, "", object) for name in names}
    for i in range(n):
        for name in names:
            try:
                out[name][i] = (_number(cells[name][i], _RULES[name], nan_is_absent) if name in _RULES
                                else _text(cells[name][i], nan_is_absent))
            except _CellError as e:
                raise MeasurementError(f"{source}: {labels[i]}, column {name!r}: {e}") from None
        problem = _check_row({name: float(out[name][i]) for name in numeric})
        if problem:
            raise MeasurementError(f"{source}: {labels[i]}, column {problem[0]!r}: {problem[1]}")
    for values in out.values():
        values.setflags(write=False)
    return _Checked(out)


def _number(cell, rule, nan_is_absent: bool) -> float:
    """A checked float from one cell; NaN if the cell is absent."""
    if isinstance(cell, np.generic):
        cell = cell.item()
    if cell is None:
        return math.nan
    if isinstance(cell, str):
        shown = cell.strip()
        if not shown:
            return math.nan
        try:
            value = float(shown)
        except ValueError:
            if rule != "size":
                raise _CellError(f"{cell!r} is not a number") from None
            try:
                value = parse_count(shown)
            except ValueError:
                raise _CellError(f"{cell!r} is not a positive number "
                                 "(write e.g. 70e9, 70B or 15T)") from None
    elif isinstance(cell, numbers.Real) and not isinstance(cell, bool):
        value, shown = float(cell), repr(cell)
        if nan_is_absent and math.isnan(value):
            return math.nan
    else:
        raise _CellError(f"{cell!r} is not a number")

    if not math.isfinite(value):
        raise _CellError(f"{shown} is not a finite number")
    if rule == "size" and not value > 0:
        raise _CellError(f"{shown} is not a positive number")
    if rule == "perplexity" and not value >= 1:
        raise _CellError(f"{shown} is below 1; a perplexity is exp(loss) >= 1")
    if rule == "fraction" and not 0 <= value <= 1:
        raise _CellError(f"{shown} is not in [0, 1]")
    if isinstance(rule, int) and not (value == int(value) and value >= rule):
        raise _CellError(f"{shown} is not an integer >= {rule}")
    return value


def _text(cell, nan_is_absent: bool) -> str:
    if isinstance(cell, np.generic):
        cell = cell.item()
    if cell is None or (nan_is_absent and isinstance(cell, float) and math.isnan(cell)):
        return ""
    if isinstance(cell, str):
        return cell
    try:  # JSON spelling for JSON values (true, not True), so JSON Lines reads back alike
        return json.dumps(cell)
    except TypeError:
        return str(cell)


def _check_row(values: dict[str, float]) -> tuple[str, str] | None:
    """(column, problem) for the first rule a row breaks across its columns."""
    for name in REQUIRED_COLUMNS:
        if math.isnan(values[name]):
            return name, "missing value"
    nan = math.nan
    alpha = values.get("acceptance", nan)
    accepted, trials = values.get("accepted", nan), values.get("trials", nan)
    if math.isnan(accepted) != math.isnan(trials):
        name, other = ("accepted", "trials") if math.isnan(accepted) else ("trials", "accepted")
        return name, f"missing value ({other!r} is given; give both or neither)"
    if not math.isnan(trials):
        if accepted > trials:
            return "accepted", f"{accepted:.0f} is more than trials ({trials:.0f})"
        ratio = accepted / trials
        if not math.isnan(alpha) and abs(alpha - ratio) > TOLERANCE:
            return "acceptance", (f"{alpha!r} disagrees with accepted/trials = "
                                  f"{accepted:.0f}/{trials:.0f} = {ratio!r}")
        alpha = ratio
    elif math.isnan(alpha):
        return "acceptance", "missing value (give 'acceptance' or both 'accepted' and 'trials')"
    low, high = values.get("acceptance_low", nan), values.get("acceptance_high", nan)
    if math.isnan(low) != math.isnan(high):
        name, other = ("acceptance_low", "acceptance_high") if math.isnan(low) else (
            "acceptance_high", "acceptance_low")
        return name, f"missing value ({other!r} is given; give both or neither)"
    if low > alpha + TOLERANCE:
        return "acceptance_low", f"{low!r} is above the acceptance {alpha!r}"
    if high < alpha - TOLERANCE:
        return "acceptance_high", f"{high!r} is below the acceptance {alpha!r}"
    return None


def _cell_out(name: str, value) -> Any:
    """A column value as a plain Python value for writing; None where absent."""
    if name not in _RULES:
        return value or None
    if math.isnan(value):
        return None
    return int(value) if name in INTEGER_COLUMNS else float(value)


def _write_csv(measurements: MeasurementSet, path) -> None:
    names = list(measurements.columns)

    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(names)
        for i in range(len(measurements)):
            cells = (_cell_out(name, measurements.columns[name][i]) for name in names)
            # repr, not str or %g: the shortest text that reads back as the same float.
            writer.writerow("" if c is None else repr(c) if isinstance(c, float) else c for c in cells)

    atomic_write(path, write, newline="")


def _write_jsonl(measurements: MeasurementSet, path) -> None:
    names = list(measurements.columns)
    write_jsonl(path, ({name: _cell_out(name, measurements.columns[name][i]) for name in names}
                       for i in range(len(measurements))), ensure_ascii=False)


def _write_parquet(measurements: MeasurementSet, path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in measurements.columns.items():
        if name in INTEGER_COLUMNS:
            absent = np.isnan(values)
            arrays[name] = pa.array(np.where(absent, 0, values).astype(np.int64), mask=absent)
        elif name in _RULES:
            arrays[name] = pa.array(values, pa.float64(), mask=np.isnan(values))
        else:
            arrays[name] = pa.array([value or None for value in values], pa.string())
    table = pa.table(arrays)
    atomic_write(path, lambda f: pq.write_table(table, f), mode="wb")
