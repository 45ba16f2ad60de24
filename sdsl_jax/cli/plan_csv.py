"""``sdsl plan --csv FILE``: plan many configurations, one CSV row each, resumably.

The configurations are planned in chunks of :data:`CHUNK_ROWS` (the last
padded to a full chunk, so every chunk reuses one compilation) and each
chunk's rows are flushed as they are produced: with ``--out FILE
--resume``, a run killed midway continues after the rows it had written.
"""

from __future__ import annotations

import csv
import math
import os
import sys

from sdsl_jax.cli.options import UsageError, planner_laws
from sdsl_jax.cli.outputs import check_output_file
from sdsl_jax.common.io import atomic_write
from sdsl_jax.cli.plan import INPUT_KEYS, PLAN_KEYS, plan_records

CHUNK_ROWS = 65536


def run(args) -> int:
    """Plan every row of ``args.csv``; write to ``args.out`` or stdout."""
    import numpy as np
    from tqdm import tqdm
    from sdsl_jax.planning import flop as planner

    if args.resume and args.overwrite:
        raise UsageError("sdsl plan: --resume continues --out and --overwrite replaces it; "
                         "choose one")
    if args.out:
        check_output_file("sdsl plan", "--out", args.out, inputs=(args.csv, args.laws),
                          overwrite=args.overwrite, resume=args.resume, resumable=True)
    elif args.resume or args.overwrite:
        raise UsageError("sdsl plan: --resume and --overwrite go with --out FILE")
    # Everything is read and checked before the first row is written.
    columns = _read_configs(args.csv, args.draft_tokens)
    laws = planner_laws(args)
    total = len(columns["target_params"])
    fields = list(INPUT_KEYS) + list(PLAN_KEYS)
    done, complete = 0, None
    if args.out and args.resume and os.path.exists(args.out):
        done, complete = _rows_already_written(args.out, fields, columns)
    arrays = {key: np.asarray(values, np.float64) for key, values in columns.items()}

    def plan_rows(handle, first: bool) -> None:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        if first:
            writer.writeheader()
        with tqdm(total=total, initial=done, unit="config", disable=None,
                  file=sys.stderr) as bar:
            for start in range(done, total, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, total)
                # Pad the last chunk to a full one so every chunk reuses one compilation.
                chunk = {key: np.resize(values[start:stop], CHUNK_ROWS)
                         for key, values in arrays.items()}
                plan = planner.optimal_draft_size(chunk["target_params"], chunk["draft_tokens"],
                                                  chunk["target_tokens"], **laws)
                records = plan_records(plan, chunk)[: stop - start]
                writer.writerows({k: ("" if v is None else v) for k, v in r.items()}
                                 for r in records)
                handle.flush()  # results land as they are produced; a kill loses one chunk at most
                bar.update(stop - start)

    if not args.out:
        plan_rows(sys.stdout, first=True)
        return 0
    try:
        if os.path.exists(args.out) and not args.resume:
            # --overwrite: the old file stays whole until the new one is complete.
            atomic_write(args.out, lambda handle: plan_rows(handle, first=True), newline="")
        else:
            has_header = bool(complete)
            if complete is not None:
                # A row cut off mid-write by a kill has no newline yet: drop it and plan it again.
                with open(args.out, "r+b") as handle:
                    handle.truncate(complete)
            with open(args.out, "a" if has_header else "w", encoding="utf-8",
                      newline="") as handle:
                plan_rows(handle, first=not has_header)
    except OSError as err:
        raise UsageError(f"sdsl plan: argument --out: cannot write {args.out} "
                         f"({err.strerror or err})") from None
    print(f"wrote {total} configurations to {args.out}", file=sys.stderr)
    return 0


def _read_configs(path: str, default_draft_tokens):
    """The columns of :data:`INPUT_KEYS` as parsed numbers, each error naming file, row and
    column (rows counted from the first data row, as in every table the CLI reads)."""
    from sdsl_jax.common.quantities import parse_count
    from sdsl_jax.common.tables import InputFileError, read_csv_table
    try:
        table = read_csv_table(path, required=INPUT_KEYS[:2], optional=INPUT_KEYS[2:])
    except InputFileError as err:
        raise UsageError(f"sdsl plan: --csv: {err}") from None
    columns = {key: [] for key in INPUT_KEYS}
    for index, row in enumerate(table.records()):
        for key in INPUT_KEYS:
            text = row.get(key, "").strip()
            if key == "draft_tokens" and not text:
                # No draft_tokens: --draft-tokens, else the target's.
                value = default_draft_tokens if default_draft_tokens else columns["target_tokens"][-1]
            else:
                try:
                    value = parse_count(text) if text else None
                except ValueError as err:
                    raise UsageError(f"sdsl plan: --csv: {table.where(index, key)}: {err}") from None
                if value is None:
                    raise UsageError(f"sdsl plan: --csv: {table.where(index, key)}: no value")
                if value < 1:
                    unit = "parameter" if key.endswith("params") else "token"
                    raise UsageError(f"sdsl plan: --csv: {table.where(index, key)}: {text} is "
                                     f"less than one {unit}")
            columns[key].append(value)
    return columns


def _rows_already_written(path: str, fields: list[str], columns: dict) -> tuple[int, int]:
    """(rows already planned, bytes of them) in ``path``, an output of an earlier run of
    this very command; anything else is refused before a byte of it changes.

    The file must start with this command's header, and each complete row must
    plan the configuration on the same row of the input: a file written by
    another command, or for another input, is not resumed.
    """
    from sdsl_jax.common.tables import InputFileError, read_bytes
    try:
        data = read_bytes(path)
    except InputFileError as err:
        raise UsageError(f"sdsl plan: argument --out: cannot resume: {err}") from None
    refuse = (f"sdsl plan: argument --out: {path} is not an output of this `sdsl plan --csv` "
              "run, so --resume leaves it alone")
    # A row cut off mid-write by a kill has no newline yet.
    complete = data[: data.rfind(b"\n") + 1]
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{refuse} (it is not UTF-8 text)") from None
    lines = [line.rstrip("\r") for line in text.split("\n")[:-1]]
    if not lines:
        if data and not b",".join(f.encode() for f in fields).startswith(data):
            raise UsageError(f"{refuse} (its first line is not this command's header)")
        return 0, 0
    if next(csv.reader([lines[0]]), None) != fields:
        raise UsageError(f"{refuse} (its first line is not this command's header)")
    rows = list(csv.reader(lines[1:]))
    total = len(columns["target_params"])
    if len(rows) > total:
        raise UsageError(f"{refuse} (it has {len(rows)} rows, the input {total})")
    for number, row in enumerate(rows, 1):
        if len(row) != len(fields):
            raise UsageError(f"{refuse} (row {number} has {len(row)} fields, not {len(fields)})")
        for key in INPUT_KEYS:
            try:
                written = float(row[fields.index(key)])
            except ValueError:
                written = math.nan
            if not written == columns[key][number - 1]:
                raise UsageError(f"{refuse} (row {number} planned {key} = "
                                 f"{row[fields.index(key)]!r}, the input's row {number} has "
                                 f"{columns[key][number - 1]:g}); pass --overwrite to replace it")
    return len(rows), len(complete)
