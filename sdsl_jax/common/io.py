"""Files that survive a kill: atomic writes and append-only JSON Lines.

Every file the toolkit writes goes through here, so every writer keeps the
same two promises:

* :func:`atomic_write_text` (and :func:`write_json`, :func:`write_jsonl`)
  write a temporary file in the destination's folder, sync it, then rename it
  over the destination. A reader (or a rerun after kill -9) sees the old file
  or the new one, never a torn one, and a failed write leaves no temporary
  file behind.
* :func:`append_jsonl` appends one whole line and syncs it before returning,
  so a run killed between records loses nothing it reported as done.
  :func:`read_jsonl` drops the one line a kill can tear (the last, without
  its newline) and truncates it off the file, so the next append starts on a
  fresh line.

Errors are :class:`OSError` (the file system) or :class:`JsonlError` (a line
that is not a JSON object), with the file and line named; callers turn them
into their own messages.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable


class JsonlError(ValueError):
    """A line of a JSON Lines file that is not a JSON object; names the file and line."""

    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}: line {line} {reason}")
        self.path, self.line, self.reason = path, line, reason


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``text`` so that no reader ever sees a partial file."""
    atomic_write(path, lambda handle: handle.write(text), encoding=encoding)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], *, mode: str = "w",
                 encoding: str | None = "utf-8") -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary file lives in the destination's folder (a rename is atomic
    only within one file system) and is removed if ``write`` raises.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1) -> None:
    """Write ``data`` as strict JSON (no NaN), atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], *, ensure_ascii: bool = True) -> None:
    """Write ``records`` one per line, atomically (replacing the whole file)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in records))


def append_jsonl(path_or_handle, record: dict) -> None:
    """Append ``record`` as one line, flushed and synced before returning.

    Takes a path (opened and closed here) or an open text handle (kept open by
    a caller that appends many records).
    """
    if isinstance(path_or_handle, (str, os.PathLike)):
        with open(path_or_handle, "a", encoding="utf-8") as handle:
            append_jsonl(handle, record)
        return
    path_or_handle.write(json.dumps(record) + "\n")
    path_or_handle.flush()
    os.fsync(path_or_handle.fileno())


def read_jsonl(path: str | os.PathLike, *, repair: bool = True) -> list[dict]:
    """The records of an append-only JSON Lines file; [] if it does not exist.

    A last line without its newline was torn by a kill mid-append: it is left
    out and, with ``repair``, truncated off the file (its record is
    recomputed by whoever wrote it). Blank lines are skipped; any other line
    that is not a JSON object raises :class:`JsonlError`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data[:data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
    return parse_jsonl(complete, path)


def parse_jsonl(data: bytes | str, path: str = "<data>") -> list[dict]:
    """Every non-blank line of ``data`` as a JSON object, or :class:`JsonlError` naming the line."""
    if isinstance(data, bytes):
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[:err.start].count(b"\n") + 1
            raise JsonlError(path, line, "is not UTF-8 text") from None
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise JsonlError(path, number, f"is not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise JsonlError(path, number, "is not a JSON object")
        records.append(record)
    return records
