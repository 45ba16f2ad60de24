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

Files a person wrote (a measurement set, a runs file) are read whole with
:func:`iter_jsonl`, which keeps a last line without its newline; their text
is decoded as :mod:`sdsl_jax.common.tables` decodes every input file (UTF-8,
a byte-order mark dropped, a clear error for Latin-1, UTF-16 or binary).

Errors are :class:`OSError` (the file system, naming the destination rather
than the temporary file) or :class:`JsonlError` (a line that is not a JSON
object, or text that is not UTF-8; an
:class:`~sdsl_jax.common.tables.InputFileError`), with the file and line
named; callers turn them into their own messages.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any, Callable, Iterable, Iterator

from sdsl_jax.common.tables import InputFileError, decode_text

_BOM = "\ufeff"


class JsonlError(InputFileError):
    """A line of a JSON Lines file that is not a JSON object; names the file and line.

    ``kind`` says what is wrong, for callers that word it their own way:
    "utf-8" (the bytes are not UTF-8 text: Latin-1, UTF-16, binary; ``detail``
    is what :func:`sdsl_jax.common.tables.decode_text` says, and is the whole
    message), "json" (not valid JSON; ``detail`` is the parser's message) or
    "object" (valid JSON but not an object; ``detail`` is the value's Python
    type name).
    """

    _WORDING = {"json": "not valid JSON ({})", "object": "expected a JSON object, got {}"}

    def __init__(self, path: str, line: int, kind: str, detail: str):
        message = detail if kind == "utf-8" else f"{path}: line {line}: {self._WORDING[kind].format(detail)}"
        super().__init__(message, path=path, line=line)
        self.kind, self.detail = kind, detail


# --------------------------------------------------------------------------
# Atomic writes.


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], *, mode: str = "w",
                 encoding: str | None = "utf-8", newline: str | None = None) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``mode`` is "w" (text, in ``encoding`` with ``newline`` as :func:`open`
    takes them) or "wb" (bytes).

    The temporary file lives in the destination's folder (a rename is atomic
    only within one file system) and is removed if ``write`` raises. It is
    created with the permissions ``open(path, "w")`` would give (0666 less the
    umask), not mkstemp's 0600, so replacing a file does not hide it from
    the other users who could read it before.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp, fd = _create_beside(path, directory)
    try:
        text = "b" not in mode
        with os.fdopen(fd, mode, encoding=encoding if text else None,
                       newline=newline if text else None) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise OSError(err.errno, err.strerror, path) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _create_beside(path: str, directory: str) -> tuple[str, int]:
    """(name, descriptor) of a new hidden file in ``directory``; OSError names ``path``."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            # The caller asked to write path; a message about a temporary name
            # it never chose would only confuse.
            raise OSError(err.errno, err.strerror, path) from None
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``text`` so that no reader ever sees a partial file."""
    atomic_write(path, lambda handle: handle.write(text), encoding=encoding)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1,
               sort_keys: bool = False, allow_nan: bool = False,
               default: Callable[[Any], Any] | None = None) -> None:
    """Write ``data`` as JSON and a newline, atomically.

    Strict JSON (no NaN or infinity) unless ``allow_nan``; ``indent``,
    ``sort_keys`` and ``default`` are :func:`json.dumps`'s. The text is built
    before the temporary file is opened, so data that cannot be written
    raises without touching the disk.
    """
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan,
                      default=default)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in ``path`` (UTF-8, a byte-order mark allowed), for files the
    toolkit wrote; a file a user gives is read with :func:`sdsl_jax.common.tables.read_json`,
    whose errors name the file, line and column."""
    with open(path, encoding="utf-8-sig") as handle:
        return json.load(handle)


# --------------------------------------------------------------------------
# JSON Lines.


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], *, ensure_ascii: bool = True) -> None:
    """Write ``records`` one per line, atomically (replacing the whole file)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in records))


def append_jsonl(path_or_handle, record: dict) -> None:
    """Append ``record`` as one line, flushed and synced before returning.

    Takes a path (opened and closed here) or an open text handle (kept open by
    a caller that appends many records). The line is written with a single
    write call, so a kill leaves at most that one line torn.
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
    return [record for _, record in iter_jsonl(data, path)]


def iter_jsonl(data: bytes | str, path: str = "<data>") -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line of ``data``, in order.

    Lines end at \\n, \\r\\n or \\r, as when a file is read in text mode; a
    U+2028 inside a string (which ``json.dumps(ensure_ascii=False)`` writes
    as is) does not end a line, unlike :meth:`str.splitlines`. A UTF-8
    byte-order mark is skipped. The records come one at a time, so a caller
    that checks each one reports the first problem in the file first.

    Raises:
      JsonlError: bytes that are not UTF-8 (naming the line of the first bad
        byte, or saying the file is UTF-16 or binary), or a line that is not
        valid JSON or not a JSON object.
    """
    if isinstance(data, bytes):
        try:
            data = decode_text(data, path)
        except InputFileError as err:
            # A byte-order mark of UTF-16 or UTF-32 is at the start: line 1.
            raise JsonlError(path, err.line or 1, "utf-8", str(err)) from None
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    for number, line in enumerate(io.StringIO(data, newline=None), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise JsonlError(path, number, "json", err.msg) from None
        except RecursionError:
            raise JsonlError(path, number, "json", "nested too deeply to read") from None
        if not isinstance(record, dict):
            raise JsonlError(path, number, "object", type(record).__name__)
        yield number, record
