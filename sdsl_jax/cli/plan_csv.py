"""``sdsl plan --csv FILE``: plan many configurations, one CSV row each, resumably.

The configurations are planned in chunks of :data:`CHUNK_ROWS` (the last
padded to a full chunk, so every chunk reuses one compilation) and each
chunk's rows are flushed as they are produced: with ``--out FILE
--resume``, a run killed midway continues after the rows it had written.
"""

from __future__ import annotations

import csv
import os
import sys

from sdsl_jax.cli.options import UsageError, planner_laws
from sdsl_jax.common.io import atomic_write_text
from sdsl_jax.cli.plan import INPUT_KEYS, PLAN_KEYS, plan_records

CHUNK_ROWS = 65536


def run(args) -> int:
    """Plan every row of ``args.csv``; write to ``args.out`` or stdout."""
    import numpy as np
    from tqdm import tqdm
    from sdsl_jax.planning import flop as planner

    columns = _read_configs(args.csv, args.draft_tokens)
    total = len(columns["target_params"])
    done = 0
    if args.out:
        if os.path.exists(args.out) and not (args.resume or args.overwrite):
            raise UsageError(f"sdsl plan: --out: {args.out} exists; pass --resume to continue it "
                             "or --overwrite to replace it")
        if args.resume and os.path.exists(args.out):
            done = _rows_already_written(args.out)
        handle = open(args.out, "a" if done else "w", newline="")
    else:
        handle = sys.stdout
    writer = csv.DictWriter(handle, fieldnames=list(INPUT_KEYS) + list(PLAN_KEYS))
    if not done:
        writer.writeheader()
    laws = planner_laws(args)
    arrays = {key: np.asarray(values, np.float64) for key, values in columns.items()}
    with tqdm(total=total, initial=done, unit="config", disable=None, file=sys.stderr) as bar:
        for start in range(done, total, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, total)
            # Pad the last chunk to a full one so every chunk reuses one compilation.
            chunk = {key: np.resize(values[start:stop], CHUNK_ROWS) for key, values in arrays.items()}
            plan = planner.optimal_draft_size(chunk["target_params"], chunk["draft_tokens"],
                                              chunk["target_tokens"], **laws)
            records = plan_records(plan, chunk)[: stop - start]
            writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
            handle.flush()  # results land as they are produced; a kill loses one chunk at most
            bar.update(stop - start)
    if handle is not sys.stdout:
        handle.close()
        print(f"wrote {total} configurations to {args.out}", file=sys.stderr)
    return 0


def _read_configs(path: str, default_draft_tokens):
    """The columns of :data:`INPUT_KEYS` as parsed numbers, each error naming file, row and
    column."""
    from sdsl_jax.common.quantities import parse_count
    try:
        handle = open(path, newline="")
    except OSError as err:
        raise UsageError(f"sdsl plan: --csv: cannot read {path}: {err.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for required in ("target_params", "target_tokens"):
            if required not in header:
                raise UsageError(f"{path}: missing column {required!r} (found {header})")
        columns = {key: [] for key in INPUT_KEYS}
        for line, row in enumerate(reader, start=2):
            for key in INPUT_KEYS:
                text = row.get(key)
                if key == "draft_tokens" and (text is None or text.strip() == ""):
                    value = default_draft_tokens if default_draft_tokens else columns["target_tokens"][-1]
                else:
                    if text is None:
                        raise UsageError(f"{path}: row {line}, column {key}: missing value")
                    try:
                        value = parse_count(text)
                    except ValueError as err:
                        raise UsageError(f"{path}: row {line}, column {key}: {err}") from None
                columns[key].append(value)
    if not columns["target_params"]:
        raise UsageError(f"{path}: no rows")
    return columns


def _rows_already_written(path: str) -> int:
    """Complete rows in an output file from an earlier, interrupted run."""
    with open(path, newline="") as handle:
        text = handle.read()
    # A row cut off mid-write has no newline yet: drop it and rewrite it.
    complete = text[: text.rfind("\n") + 1]
    atomic_write_text(path, complete)
    return max(0, complete.count("\n") - 1)
