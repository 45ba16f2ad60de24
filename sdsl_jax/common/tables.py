"""Reading the files a person gives the toolkit: text, JSON and CSV tables.

Every file the CLI reads (measurement sets, laws files, step times, latency
tables, runs files, prompt files, plan CSVs) comes through here, so that each
one keeps the same promises:

* UTF-8 text, with or without a byte-order mark (the mark is dropped), is
  read; anything else is refused with one line that says what the file is and
  what to do: UTF-16 or UTF-32 text ("save it as UTF-8"), Latin-1 or
  Windows-1252 text (the line and the first byte that is not UTF-8), a binary
  file (a NUL byte, or a spreadsheet or Parquet file given where text belongs),
  a folder, a missing or unreadable file.
* A CSV table's header is checked before any row: blank and duplicated
  column names, missing required columns, unknown columns (refused with a
  did-you-mean, or kept where the format keeps extra columns, unless the name
  is so close to a known one that it is most likely a typo).
* A row with more or fewer fields than the header names is refused with its
  row and line, and the column that has no header or no value.

Errors are :class:`InputFileError` (a :class:`ValueError`) whose message names
the file, and the row, line and column where there is one; the readers of each
format subclass or wrap it so that their callers keep catching their own
error classes.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import io
import json
import os
from typing import Any, Iterable, Literal, Sequence

# Checked longest first: the UTF-32 little-endian mark starts with UTF-16's.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
# What a careless user most often passes where a text file belongs.
_BINARY_MAGIC = ((b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook?)"),
                 (b"PAR1", "a Parquet file"),
                 (b"\xd0\xcf\x11\xe0", "an old Excel .xls or Office file"),
                 (b"\x1f\x8b", "a gzip-compressed file"),
                 (b"%PDF", "a PDF file"),
                 (b"\x89PNG", "a PNG image"))
# A difflib ratio this high between an unknown column and a known one is a typo
# ("target_param", "Target_Params"), not a column the user meant to add.
TYPO_CUTOFF = 0.8


class InputFileError(ValueError):
    """A file the user gave that cannot be read as what it should be.

    The message is one line that names the file (and the row, line and column
    where there is one) and says what to do. The parts are kept as attributes
    for callers that word their own messages; ``row`` is the 1-based data row
    (a CSV header is not a row), ``line`` the file's 1-based line.
    """

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 line: int | None = None, column: str | None = None):
        super().__init__(message)
        self.path, self.row, self.line, self.column = path, row, line, column


# --------------------------------------------------------------------------
# Text.


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, or an :class:`InputFileError` for a folder, a missing or unreadable file."""
    source = os.fspath(path)
    if os.path.isdir(source):
        raise InputFileError(f"{source} is a folder, expected a file", path=source)
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputFileError(f"{source}: cannot read it: no such file", path=source) from None
    except IsADirectoryError:
        raise InputFileError(f"{source} is a folder, expected a file", path=source) from None
    except OSError as err:
        raise InputFileError(f"{source}: cannot read it: {err.strerror or err}", path=source) from None


def read_text(path: str | os.PathLike) -> str:
    """The whole of ``path`` as text: UTF-8, a leading byte-order mark dropped.

    Line endings are kept as they are in the file (CSV needs them).

    Raises:
      InputFileError: a folder, a missing or unreadable file, or a file that
        is not UTF-8 text; the message says which and what to do.
    """
    return decode_text(read_bytes(path), os.fspath(path))


def decode_text(data: bytes, source: str = "<data>") -> str:
    """``data`` decoded as UTF-8 (a byte-order mark dropped), or an :class:`InputFileError` naming ``source``."""
    for bom, name in _WIDE_BOMS:
        if data.startswith(bom):
            raise InputFileError(f"{source} is {name} text; save it as UTF-8", path=source)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for magic, what in _BINARY_MAGIC:
        if data.startswith(magic):
            raise InputFileError(f"{source} looks like {what}, not a text file", path=source)
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        if _looks_like_utf16(data):
            raise InputFileError(f"{source} looks like UTF-16 text (without a byte-order mark); "
                                 "save it as UTF-8", path=source)
        raise InputFileError(f"{source}: line {line}: a NUL byte; this looks like a binary file, "
                             "not text", path=source, line=line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        byte = data[err.start]
        if _looks_binary(data):
            raise InputFileError(f"{source}: line {line}: byte 0x{byte:02X} is not UTF-8 and the "
                                 "file looks binary, not text", path=source, line=line) from None
        raise InputFileError(f"{source}: line {line}: not UTF-8 text (byte 0x{byte:02X}); "
                             "save it as UTF-8", path=source, line=line) from None


def _looks_binary(data: bytes) -> bool:
    # Text in a legacy encoding has a few bytes that are not UTF-8; a binary
    # file is full of them and of control characters.
    head = data[:4096].decode("utf-8", errors="replace")
    odd = sum(ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f") for ch in head)
    return odd > max(4, 0.1 * len(head))


def _looks_like_utf16(data: bytes) -> bool:
    # ASCII text in UTF-16 is printable bytes with a NUL beside each, all on one side.
    head = data[:512]
    if len(head) < 8:
        return False
    even, odd = head[0::2], head[1::2]
    printable = lambda side: sum(b in b"\t\n\r" or 32 <= b < 127 for b in side) >= 0.9 * len(side)
    zeros = lambda side: side.count(0) >= 0.9 * len(side)
    return (zeros(odd) and printable(even)) or (zeros(even) and printable(odd))


# --------------------------------------------------------------------------
# JSON.


def read_json(path: str | os.PathLike) -> Any:
    """The one JSON value in ``path`` (UTF-8, a byte-order mark allowed).

    Raises:
      InputFileError: the file cannot be read as text (see :func:`read_text`),
        is empty, is not valid JSON (naming the line and column), or has an
        object with a key given twice (JSON parsers keep the last silently).
    """
    source = os.fspath(path)
    text = read_text(source)
    if not text.strip():
        raise InputFileError(f"{source}: empty file, expected JSON", path=source)
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, source))
    except json.JSONDecodeError as err:
        raise InputFileError(f"{source}: line {err.lineno}, column {err.colno}: not valid JSON "
                             f"({err.msg})", path=source, line=err.lineno) from None
    except RecursionError:
        raise InputFileError(f"{source}: JSON nested too deeply to read", path=source) from None


def _unique_keys(pairs: list[tuple[str, Any]], source: str) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise InputFileError(f"{source}: the key {key!r} appears twice in one JSON object; "
                                 "keep one", path=source)
        out[key] = value
    return out


# --------------------------------------------------------------------------
# CSV tables.


@dataclasses.dataclass(frozen=True)
class CsvTable:
    """A CSV file whose header and row lengths have been checked.

    Attributes:
      path: the file, as given; every message names it.
      header: the column names, in the file's order (surrounding spaces
        stripped).
      rows: one list of str per data row, each as long as ``header``. Blank
        lines are not rows.
      row_numbers: the 1-based data row of each row (the header is not a row).
      line_numbers: the file line each row starts on.
    """

    path: str
    header: list[str]
    rows: list[list[str]]
    row_numbers: list[int]
    line_numbers: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str, default: str | None = None) -> list[str]:
        """The cells of column ``name``; ``default`` in every row if the file has no such column."""
        if name not in self.header:
            if default is None:
                raise KeyError(name)
            return [default] * len(self.rows)
        index = self.header.index(name)
        return [row[index] for row in self.rows]

    def records(self) -> list[dict[str, str]]:
        """One {column: cell} dict per row."""
        return [dict(zip(self.header, row)) for row in self.rows]

    def label(self, index: int) -> str:
        """'row R' for the row at 0-based ``index``, with ' (line L)' where blank lines or a
        multi-line cell make the file's line differ from R + 1."""
        row, line = self.row_numbers[index], self.line_numbers[index]
        return f"row {row}" + ("" if line == row + 1 else f" (line {line})")

    def where(self, index: int, column: str | None = None) -> str:
        """'FILE: row R (line L), column 'C'' for the row at 0-based ``index`` (see :meth:`label`)."""
        return _where(self.path, self.row_numbers[index], self.line_numbers[index], column)

    def error(self, index: int, column: str | None, problem: str) -> InputFileError:
        """An :class:`InputFileError` for the row at 0-based ``index``: 'FILE: row R, column 'C': problem'."""
        return InputFileError(f"{self.where(index, column)}: {problem}", path=self.path,
                              row=self.row_numbers[index], line=self.line_numbers[index],
                              column=column)


def read_csv_table(path: str | os.PathLike, *, required: Sequence[str], optional: Sequence[str] = (),
                   unknown: Literal["refuse", "keep"] = "refuse",
                   allow_empty: bool = False) -> CsvTable:
    """Read a CSV file (UTF-8, comma-separated, a header line first) and check its shape.

    Args:
      path: the file.
      required: columns the file must have.
      optional: columns it may have.
      unknown: "refuse" refuses any other column, naming the known ones and
        the closest one; "keep" keeps other columns (a format that carries
        extra columns through), but still refuses one whose name is a likely
        typo of a known column that the file lacks.
      allow_empty: accept a file with a header and no rows.

    Returns:
      a :class:`CsvTable`.

    Raises:
      InputFileError: the file cannot be read as text, is empty, has only a
        header (unless ``allow_empty``), a blank, duplicated, unknown or
        missing column, a row with more or fewer fields than the header, or
        broken quoting; the message names the file, row, line and column.
    """
    source = os.fspath(path)
    return parse_csv_table(read_text(source), source, required=required, optional=optional,
                           unknown=unknown, allow_empty=allow_empty)


def parse_csv_table(text: str, source: str, *, required: Sequence[str], optional: Sequence[str] = (),
                    unknown: Literal["refuse", "keep"] = "refuse",
                    allow_empty: bool = False) -> CsvTable:
    """:func:`read_csv_table` on text already read (``source`` names it in messages)."""
    if unknown not in ("refuse", "keep"):
        raise ValueError(f"unknown must be 'refuse' or 'keep', got {unknown!r}")
    known = list(dict.fromkeys([*required, *optional]))
    if text.startswith("\ufeff"):
        text = text[1:]
    # strict: a stray quote is an error, not a cell silently glued to the next line.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows, row_numbers, line_numbers = [], [], []
    try:
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line; a line of empty cells (",,") is a row
            if header is None:
                header = [name.strip() for name in record]
                _check_header(header, source, required, known, unknown)
                continue
            rows.append(record)
            row_numbers.append(len(rows))
            line_numbers.append(start)
            if len(record) != len(header):
                raise InputFileError(f"{_where(source, len(rows), start)}: {_ragged(record, header)}",
                                     path=source,
                                     row=len(rows), line=start)
    except csv.Error as err:
        raise InputFileError(f"{source}: line {reader.line_num}: not valid CSV ({err})",
                             path=source, line=reader.line_num) from None
    if header is None:
        raise InputFileError(f"{source}: empty file, expected a CSV table with the columns "
                             f"{', '.join(required) or ', '.join(known)}", path=source)
    if not rows and not allow_empty:
        raise InputFileError(f"{source}: no data rows (the file has only a header)", path=source)
    return CsvTable(source, header, rows, row_numbers, line_numbers)


def _where(source: str, row: int, line: int, column: str | None = None) -> str:
    text = f"{source}: row {row}" + ("" if line == row + 1 else f" (line {line})")
    return text + (f", column {column!r}" if column is not None else "")


def _ragged(record: list[str], header: list[str]) -> str:
    fields, columns = len(record), len(header)
    if fields > columns:
        extra = (f"column {columns + 1} has no header" if fields == columns + 1 else
                 f"columns {columns + 1} to {fields} have no header")
        return f"{fields} fields but the header names {columns} columns; {extra}"
    missing = header[fields:]
    names = ", ".join(repr(name) for name in missing)
    return (f"{fields} fields but the header names {columns} columns; "
            f"missing column{'s' if len(missing) > 1 else ''} {names}")


def _check_header(header: list[str], source: str, required: Sequence[str], known: Sequence[str],
                  unknown: str) -> None:
    for position, name in enumerate(header, 1):
        if not name:
            trailing = " (a comma at the end of the header?)" if position == len(header) else ""
            raise InputFileError(f"{source}: column {position} has no name{trailing}", path=source)
        first = header.index(name) + 1
        if first != position:
            raise InputFileError(f"{source}: column {name!r} appears twice (columns {first} and "
                                 f"{position}); keep one", path=source, column=name)
    check_column_names(header, source, required=required, known=known, unknown=unknown)


def check_column_names(names: Iterable[str], source: str, *, required: Sequence[str],
                       known: Sequence[str], unknown: Literal["refuse", "keep"] = "refuse") -> None:
    """Refuse unknown columns (or, with ``unknown="keep"``, likely typos of known ones) and missing ones.

    Shared by every tabular format (CSV, JSON Lines keys, Parquet columns), so
    that a misspelt column gets the same did-you-mean wherever it is read.
    ``known`` includes ``required``.
    """
    names = list(names)
    known = list(dict.fromkeys([*required, *known]))
    for name in names:
        if name in known:
            continue
        if unknown == "refuse":
            raise InputFileError(f"{source}: unknown column {name!r}{_did_you_mean(name, known, 0.6)}; "
                                 f"the columns are: {', '.join(known)}", path=source, column=name)
        absent = [k for k in known if k not in names]
        hint = _did_you_mean(name, absent, TYPO_CUTOFF)
        if hint:
            raise InputFileError(f"{source}: unknown column {name!r}{hint} (rename it; other "
                                 "columns are kept as they are, but this one looks like a typo)",
                                 path=source, column=name)
    for name in required:
        if name not in names:
            raise InputFileError(f"{source}: missing required column {name!r} (columns found: "
                                 f"{', '.join(names) or 'none'})", path=source, column=name)


def _did_you_mean(name: str, candidates: Sequence[str], cutoff: float) -> str:
    # Case-folded so that "Target_Params" is caught as readily as "target_param".
    folded = {candidate.casefold(): candidate for candidate in candidates}
    match = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=cutoff)
    return f" (did you mean {folded[match[0]]!r}?)" if match else ""
