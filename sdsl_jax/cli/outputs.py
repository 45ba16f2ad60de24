"""Where a subcommand may write: every output path is checked before any work or write.

A refusal found after an hour of measuring loses the hour, and one found
after the first byte is written loses the file it replaced. So every
subcommand checks its outputs here first, before it reads a model or plans
a row:

* :func:`check_output_file` for a file (``--out``, ``--rows``,
  ``--summary``): its folder exists and is writable, it is not a folder,
  it is not one of the command's own inputs (not even with
  ``--overwrite``: replacing the measurements by the laws fitted to them
  would lose the data), and it does not exist unless the command was told
  it may replace or continue it.
* :func:`check_output_folder` for a run directory (``sdsl train --out``,
  ``sdsl reproduce --out``): its parent exists, it is not a file, and it
  can be written. It is not created here: the caller creates it after
  every other check has passed, so a refused command leaves no empty
  folder behind.

Every refusal is a :class:`~sdsl_jax.cli.options.UsageError` naming the
flag and the path.
"""

from __future__ import annotations

import os
from typing import Iterable

from sdsl_jax.cli.options import UsageError


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (through links and ``..``; False if
    either does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _check_name(where: str, path: str, folder: str) -> None:
    """A name longer than the file system allows is refused now, not after the work."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return
    name = os.path.basename(os.path.abspath(path))
    if len(os.fsencode(name)) > limit:
        raise UsageError(f"{where}: the name {name[:40]}... is longer than the {limit} bytes "
                         "a file name may have here")


def check_output_file(prog: str, flag: str, path: str, *, inputs: Iterable[str] = (),
                      overwrite: bool = False, resume: bool = False,
                      resumable: bool = False) -> None:
    """Refuse ``path`` as the output of ``flag`` before any work; see the module docstring.

    ``inputs`` are the files the command reads (a None among them is
    skipped); ``overwrite`` or ``resume`` allow an existing file (the
    caller checks that a file it resumes is its own output); ``resumable``
    says the command has ``--resume``, so the refusal offers it.
    """
    where = f"{prog}: argument {flag}"
    if not path:
        raise UsageError(f"{where}: the path is empty")
    if os.path.isdir(path):
        raise UsageError(f"{where}: {path} is a folder; name a file")
    folder = _parent(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{where}: cannot write {path}: {os.path.dirname(path)} is a file, "
                         "not a folder")
    if not os.path.isdir(folder):
        raise UsageError(f"{where}: the folder {os.path.dirname(path)} does not exist")
    _check_name(where, path, folder)
    for source in inputs:
        if source and same_file(path, source):
            raise UsageError(f"{where}: {path} is the input {source}; writing there would "
                             "replace the data it was made from: choose another file")
    if os.path.exists(path):
        if not (overwrite or resume):
            options = ("--resume to continue it, --overwrite to replace it,"
                       if resumable else "--overwrite to replace it")
            raise UsageError(f"{where}: {path} exists; pass {options} or choose another file")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{where}: {path} is not writable")
    # A new file is created in its folder, and an atomic replacement puts a
    # temporary file there first: either way the folder must be writable.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{where}: cannot write in the folder {folder} (permission denied)")


def check_output_folder(prog: str, flag: str, path: str) -> None:
    """Refuse ``path`` as a run directory before any work; see the module docstring."""
    where = f"{prog}: argument {flag}"
    if not path:
        raise UsageError(f"{where}: the path is empty")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{where}: {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{where}: cannot write in {path} (permission denied)")
        return
    parent = _parent(path)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UsageError(f"{where}: cannot create {path}: {os.path.dirname(path)} is a file, "
                         "not a folder")
    if not os.path.isdir(parent):
        raise UsageError(f"{where}: the folder {os.path.dirname(path)} does not exist; "
                         "create it first")
    _check_name(where, path, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{where}: cannot create {path} in {parent} (permission denied)")


def make_output_folder(prog: str, flag: str, path: str) -> None:
    """Create the run directory ``path`` (checked by :func:`check_output_folder`) once
    every other check has passed."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{prog}: argument {flag}: cannot create {path} "
                         f"({err.strerror or err})") from None


def check_outside(prog: str, flag: str, path: str, input_flag: str, inputs: Iterable[str]) -> None:
    """Refuse a run folder ``path`` that is, or lies inside, one of ``inputs`` (the text of
    ``--corpus``): its checkpoints would be written into the user's data, and read back as
    text by the next run."""
    target = os.path.realpath(path)
    for source in inputs:
        root = os.path.realpath(source)
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            raise UsageError(f"{prog}: argument {flag}: {path} is inside {input_flag} {source}; "
                             "write the run somewhere else")
