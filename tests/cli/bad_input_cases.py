"""Bad and edge input for every ``sdsl`` subcommand, and the promises a run must keep (issue 15).

Each :class:`Mode` is one subcommand in one of its modes, given as a valid
baseline command over files in a fresh folder. A :class:`Mutation` spoils the
baseline in one way: an option's value replaced by a bad or edge value, an
input file replaced by a corrupted version, a required option dropped, an
option added that does not belong to the mode, or an output that already
exists. :func:`mutations` lists every one a mode has (the property tests
draw from these lists), and :func:`run_case` runs a spoiled command
in-process and returns what it broke of the README's promise:

* the exit status is 0 or 2, no exception escapes ``main`` and no
  "Traceback" reaches stderr;
* every input file is byte-identical afterwards;
* exit 2 leaves nothing behind: no output created or changed, no new file
  or folder anywhere in the folder, and stderr is one line, ``error: ...``;
* exit 0 leaves only complete outputs (a CSV parses, JSON loads, a PNG and
  a PDF are whole) and ``--json`` prints JSON without NaN;
* what must be refused is refused, and what is valid (a UTF-8 BOM, CRLF
  line ends) is not.

With the environment variable ``SDSL_BAD_INPUT_REPORT`` naming a file, every
case appends one JSON line there; ``python tests/cli/bad_input_cases.py table
REPORT`` prints the table of refusals per subcommand from it, and
``python tests/cli/bad_input_cases.py run REPORT [MODE ...]`` runs every single
mutation once (the tests draw a few) and prints those that break a promise.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
MEASUREMENTS = REPO / "examples" / "data" / "measurements.csv"
REPORT_ENV = "SDSL_BAD_INPUT_REPORT"
# A case that runs longer than this is stuck (a huge loop or allocation), not slow:
# the slowest honest case compiles a calibration or trains one step, well under it.
CASE_SECONDS = 120

REFUSE, ACCEPT, EITHER = "refuse", "accept", "either"


# --------------------------------------------------------------------------
# The valid files every case starts from.

NOTES = b"my notes: not an output of sdsl, and must never be trimmed or replaced\n"

CONFIGS = b"target_params,target_tokens,draft_tokens\n70B,15T,\n7B,2T,1T\n13e9,3e12,3e12\n"

RATES = json.dumps({"position_rates": [0.82, 0.74, 0.66, 0.61], "acceptance": 0.71,
                    "cost_ratio": 0.05, "draft_model": "d", "target_model": "t",
                    "lookahead": 4}).encode()

STEP_RECORDS = [
    dict(draft_params="125M", target_params="7B", lookahead=4, batch=1, context=512,
         draft_step_seconds=2e-3, target_step_seconds=2.5e-2, baseline_step_seconds=2.2e-2),
    dict(draft_params="350M", target_params="13B", lookahead=3, batch=4, context=1024,
         draft_step_seconds=3e-3, target_step_seconds=4e-2, baseline_step_seconds=3.5e-2),
    dict(params="1B", seconds=4e-3),
    dict(params="70B", seconds=0.09, batch=8),
]
STEPS = "".join(json.dumps(r) + "\n" for r in STEP_RECORDS).encode()


def _latency_table() -> bytes:
    """Four drafts of one 13B target (sdsl_jax/plots/latency.py's columns)."""
    handle = io.StringIO()
    names = ["draft_model", "draft_params", "target_params", "draft_tokens", "target_tokens",
             "ttft", "ttft_low", "ttft_high", "tpot", "ttot", "prompts"]
    writer = csv.DictWriter(handle, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for k, n in enumerate([125e6, 350e6, 1.3e9, 2.7e9]):
        tpot, ttft = 0.03 / (1 + 0.1 * k), 0.05 + 0.01 * k
        writer.writerow(dict(draft_model=f"d{k}", draft_params=n, target_params="13B",
                             draft_tokens="300B", target_tokens="300B", ttft=ttft,
                             ttft_low=ttft - 0.002, ttft_high=ttft + 0.003, tpot=tpot,
                             ttot=ttft + 100 * tpot, prompts=20))
    return handle.getvalue().encode()


LATENCY = _latency_table()

# A runs file of `sdsl measure --out`: lookahead 3, four prompts.
RUNS = "".join(json.dumps(dict(prompt_id=i, lookahead=3, draft_model="d", target_model="t",
                               accepted_per_iteration=[3, 1, 0, 2, 3][i:] + [1, 2])) + "\n"
               for i in range(4)).encode()

PROMPTS = b"def add(a, b):\n    return a + b\nimport os\nclass Point:\n"


def base_files(laws: bytes | None) -> dict[str, bytes]:
    """Every valid input file by name (laws: the bytes of a laws file from `sdsl fit`)."""
    files = {"measurements.csv": MEASUREMENTS.read_bytes(), "configs.csv": CONFIGS,
             "rates.json": RATES, "steps.jsonl": STEPS, "latency.csv": LATENCY,
             "runs.jsonl": RUNS, "prompts.txt": PROMPTS, "notes.txt": NOTES}
    if laws is not None:
        files["laws.json"] = laws
    return files


# --------------------------------------------------------------------------
# Corrupted versions of a file.

def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8").splitlines()


def _csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def _csv_bytes(rows) -> bytes:
    handle = io.StringIO()
    csv.writer(handle, lineterminator="\n").writerows(rows)
    return handle.getvalue().encode()


def _set_cell(column: str, value: str, row: int = 1):
    def spoil(data):
        rows = _csv_rows(data)
        rows[row][rows[0].index(column)] = value
        return _csv_bytes(rows)
    return spoil


def _rename_column(old: str, new: str):
    def spoil(data):
        rows = _csv_rows(data)
        rows[0][rows[0].index(old)] = new
        return _csv_bytes(rows)
    return spoil


def _drop_column(column: str):
    def spoil(data):
        rows = _csv_rows(data)
        i = rows[0].index(column)
        return _csv_bytes([r[:i] + r[i + 1:] for r in rows])
    return spoil


def _duplicate_column(column: str):
    def spoil(data):
        rows = _csv_rows(data)
        i = rows[0].index(column)
        return _csv_bytes([r + [r[i]] for r in rows])
    return spoil


def _latin1(data: bytes) -> bytes:
    """The text with an accented letter written in Latin-1 (not UTF-8)."""
    text = data.decode("utf-8")
    if text.lstrip().startswith(("{", "[")) and '"' in text:
        i = text.index('"') + 1  # inside a JSON string, so only the encoding is wrong
    else:
        i = text.index("\n") + 1  # the first cell of the first row below the header
    return (text[:i] + "caf\u00e9" + text[i:]).encode("latin-1")


def _cut_mid_line(data: bytes) -> bytes:
    """The file cut off inside a line past its middle: after a CSV row's first cell, or
    inside a JSON value, so what is left cannot be a whole file."""
    middle = len(data) // 2
    newline = data.find(b"\n", middle)
    end = data.find(b"\n", newline + 1)
    if newline < 0 or end < 0:
        return data[:middle]
    comma = data.find(b",", newline + 1, end)
    return data[:comma + 1] if comma > 0 else data[:newline + 1 + (end - newline) // 2]


TEXT_CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "binary bytes": (lambda d: bytes(range(256)) * 4, REFUSE),
    "Latin-1 text": (_latin1, REFUSE),
    "UTF-16 text": (lambda d: d.decode("utf-8").encode("utf-16"), REFUSE),
    "a UTF-8 BOM": (lambda d: b"\xef\xbb\xbf" + d, ACCEPT),
    "CRLF line ends": (lambda d: d.replace(b"\n", b"\r\n"), ACCEPT),
    # NUL is valid UTF-8: a reader may refuse it or read it, but must not break on it.
    "NUL bytes": (lambda d: d[: len(d) // 2] + b"\x00\x00" + d[len(d) // 2:], EITHER),
    "an empty file": (lambda d: b"", REFUSE),
    "cut off mid-line": (_cut_mid_line, REFUSE),
}


def _csv_corruptions(required: tuple[str, ...], optional: tuple[str, ...],
                     cells: dict[str, tuple[str, ...]]) -> dict:
    out = {
        "the header line twice": (lambda d: d.split(b"\n", 1)[0] + b"\n" + d, REFUSE),
        "header only": (lambda d: d.split(b"\n", 1)[0] + b"\n", REFUSE),
        "a row longer than the header": (
            lambda d: _csv_bytes([r + ["7"] if i == 1 else r for i, r in enumerate(_csv_rows(d))]),
            REFUSE),
        "a row shorter than the header": (
            lambda d: _csv_bytes([r[:-1] if i == 1 else r for i, r in enumerate(_csv_rows(d))]),
            REFUSE),
    }
    for column in required:
        out[f"column {column} missing"] = (_drop_column(column), REFUSE)
        out[f"column {column} misspelled"] = (_rename_column(column, column[:-1]), REFUSE)
        out[f"column {column} twice"] = (_duplicate_column(column), REFUSE)
        out[f"an empty {column} cell"] = (_set_cell(column, ""), REFUSE)
    for column in optional:
        # A misspelled optional column is silently replaced by its default otherwise.
        out[f"optional column {column} misspelled"] = (_rename_column(column, column[:-1]), REFUSE)
        out[f"column {column} twice"] = (_duplicate_column(column), REFUSE)
    for column, values in cells.items():
        for value in values:
            out[f"{column} = {value!r}"] = (_set_cell(column, value), REFUSE)
    return out


def _json(value) -> Callable[[bytes], bytes]:
    text = value if isinstance(value, str) else json.dumps(value)
    return lambda d: text.encode()


def _json_edit(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def spoil(data):
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()
    return spoil


def _set_key(*path_and_value):
    *path, value = path_and_value

    def edit(document):
        for key in path[:-1]:
            document = document[key]
        document[path[-1]] = value
    return edit


def _del_key(*path):
    def edit(document):
        for key in path[:-1]:
            document = document[key]
        del document[path[-1]]
    return edit


def _non_psd(document):
    cov = [[0.0] * 8 for _ in range(8)]
    for i in range(8):
        cov[i][i] = 1e-4
    cov[0][1] = cov[1][0] = 1.0  # a 2x2 block with a negative eigenvalue
    document["covariance"] = cov


def _asymmetric(document):
    cov = [[0.0] * 8 for _ in range(8)]
    for i in range(8):
        cov[i][i] = 1e-4
    cov[0][1] = 5e-5
    document["covariance"] = cov


# Deeper than Python's JSON reader can recurse.
DEEP_JSON = (lambda d: b"[" * 100_000 + b"]" * 100_000, REFUSE)
# A file name longer than file systems allow (255 bytes).
LONG_NAME = "{dir}/" + "x" * 300

LAWS_CORRUPTIONS = {
    "JSON nested 100000 deep": DEEP_JSON,
    "a JSON list": (_json([1, 2, 3]), REFUSE),
    "a JSON string": (_json('"laws"'), REFUSE),
    "pretraining_law a list": (_json_edit(_set_key("pretraining_law", [1, 2, 3])), REFUSE),
    "no acceptance_law": (_json_edit(_del_key("acceptance_law")), REFUSE),
    "version 99": (_json_edit(_set_key("version", 99)), REFUSE),
    "version '2' (a string)": (_json_edit(_set_key("version", "2")), REFUSE),
    "format of another program": (_json_edit(_set_key("format", "someone else's laws")), REFUSE),
    "a coefficient as text": (_json_edit(_set_key("acceptance_law", "draft_coeff", "0.1")), REFUSE),
    "a coefficient null": (_json_edit(_set_key("pretraining_law", "param_exponent", None)), REFUSE),
    "a coefficient NaN": (lambda d: d.replace(b'"irreducible_loss": ', b'"irreducible_loss": NaN, "x": ', 1),
                          REFUSE),
    "a negative exponent": (_json_edit(_set_key("pretraining_law", "data_exponent", -0.3)), REFUSE),
    "a covariance that is not positive semi-definite": (_json_edit(_non_psd), REFUSE),
    "an asymmetric covariance": (_json_edit(_asymmetric), REFUSE),
    "a 3x3 covariance": (_json_edit(_set_key("covariance", [[1, 0, 0], [0, 1, 0], [0, 0, 1]])), REFUSE),
    "a covariance with Infinity": (
        lambda d: json.dumps(dict(json.loads(d), covariance=[[float("inf")] * 8] * 8)).encode(),
        REFUSE),
    "bootstrap samples of the wrong width": (
        _json_edit(_set_key("bootstrap_samples", [[1.0, 2.0], [3.0, 4.0]])), REFUSE),
    "covariance_df 0": (_json_edit(_set_key("covariance_df", 0)), REFUSE),
}

RATES_CORRUPTIONS = {
    "JSON nested 100000 deep": DEEP_JSON,
    "an empty object": (_json({}), REFUSE),
    "position_rates empty": (_json({"position_rates": [], "cost_ratio": 0.05}), REFUSE),
    "position_rates a string": (_json({"position_rates": "0.8", "cost_ratio": 0.05}), REFUSE),
    "a rate above 1": (_json([0.9, 1.5]), REFUSE),
    "a negative rate": (_json([0.9, -0.1]), REFUSE),
    "a rate NaN": (_json("[0.9, NaN]"), REFUSE),
    "a rate Infinity": (_json("[0.9, Infinity]"), REFUSE),
    "a rate as text": (_json(["0.8"]), REFUSE),
    "a rate true": (_json([True, 0.5]), REFUSE),
    "a nested list": (_json([[0.8, 0.7]]), REFUSE),
    "a bare number": (_json(0.8), REFUSE),
    "a reached position after an unreached one": (_json([0.8, None, 0.6]), REFUSE),
    "cost_ratio negative": (_json_edit(_set_key("cost_ratio", -1)), REFUSE),
    "cost_ratio as text": (_json_edit(_set_key("cost_ratio", "0.05")), REFUSE),
    "acceptance above 1": (_json_edit(_set_key("acceptance", 2.0)), REFUSE),
    "acceptance as text": (_json_edit(_set_key("acceptance", "high")), REFUSE),
    # Only a label: a reader may refuse the contradiction or plan the rates it holds.
    "lookahead 0 beside 4 rates": (_json_edit(_set_key("lookahead", 0)), EITHER),
}


def _jsonl(*records) -> Callable[[bytes], bytes]:
    return lambda d: "".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                             for r in records).encode()


def _replace_record(index: int, record) -> Callable[[bytes], bytes]:
    def spoil(data):
        lines = _lines(data)
        lines[index] = record if isinstance(record, str) else json.dumps(record)
        return ("\n".join(lines) + "\n").encode()
    return spoil


STEPS_CORRUPTIONS = {
    "JSON nested 100000 deep": DEEP_JSON,
    "a line that is a list": (_replace_record(1, "[1, 2]"), REFUSE),
    "a line that is a number": (_replace_record(1, "3"), REFUSE),
    "a line that is not JSON": (_replace_record(1, "{oops"), REFUSE),
    "negative seconds": (_replace_record(2, dict(params="1B", seconds=-4e-3)), REFUSE),
    "seconds NaN": (_replace_record(2, '{"params": "1B", "seconds": NaN}'), REFUSE),
    "seconds 1e400": (_replace_record(2, '{"params": "1B", "seconds": 1e400}'), REFUSE),
    "params as garbage": (_replace_record(2, dict(params="big", seconds=4e-3)), REFUSE),
    "params 0": (_replace_record(2, dict(params=0, seconds=4e-3)), REFUSE),
    "a verification time without lookahead": (
        _replace_record(0, dict(draft_params="125M", target_params="7B", target_step_seconds=0.02)),
        REFUSE),
    "batch 0": (_replace_record(3, dict(params="70B", seconds=0.09, batch=0)), REFUSE),
    "precision fp7": (_replace_record(2, dict(params="1B", seconds=4e-3, precision="fp7")), REFUSE),
    "blank lines only": (lambda d: b"\n\n\n", REFUSE),
    "a runs file instead": (lambda d: RUNS, REFUSE),
}

RUNS_CORRUPTIONS = {
    "JSON nested 100000 deep": DEEP_JSON,
    "a line that is a list": (_replace_record(1, "[3, 1]"), REFUSE),
    "a line that is not JSON": (_replace_record(1, "{oops"), REFUSE),
    "lookahead 0": (_jsonl(dict(lookahead=0, accepted_per_iteration=[0, 0])), REFUSE),
    "lookahead as text": (_jsonl(dict(lookahead="3", accepted_per_iteration=[1, 2])), REFUSE),
    "lookahead true": (_jsonl(dict(lookahead=True, accepted_per_iteration=[1, 0])), REFUSE),
    "a count above the lookahead": (_jsonl(dict(lookahead=3, accepted_per_iteration=[1, 4])), REFUSE),
    "a negative count": (_jsonl(dict(lookahead=3, accepted_per_iteration=[1, -1])), REFUSE),
    "a fractional count": (_jsonl(dict(lookahead=3, accepted_per_iteration=[1, 1.5])), REFUSE),
    "counts as text": (_jsonl(dict(lookahead=3, accepted_per_iteration="1,2")), REFUSE),
    "lookaheads that differ": (_replace_record(2, dict(lookahead=5, accepted_per_iteration=[5])),
                               REFUSE),
    "no accepted_per_iteration": (_replace_record(0, dict(lookahead=3)), REFUSE),
    "no iterations at all": (_jsonl(dict(lookahead=3, accepted_per_iteration=[])), REFUSE),
    "a steps file instead": (lambda d: STEPS, REFUSE),
}

def _acceptance_column(first: str):
    """An acceptance column beside accepted and trials, agreeing on every row but the first."""
    def spoil(data):
        rows = _csv_rows(data)
        a, t = rows[0].index("accepted"), rows[0].index("trials")
        return _csv_bytes([rows[0] + ["acceptance"], rows[1] + [first]]
                          + [r + [repr(int(r[a]) / int(r[t]))] for r in rows[2:]])
    return spoil


MEASUREMENT_CORRUPTIONS = _csv_corruptions(
    required=("draft_params", "target_perplexity", "accepted", "trials"), optional=(),
    cells={"draft_perplexity": ("0.5", "nan", "inf", "-3"), "target_perplexity": ("0.9",),
           "accepted": ("4001", "-1", "2.5"), "trials": ("0",), "draft_params": ("-5e8", "0"),
           "target_tokens": ("-1", "inf"), "lookahead": ("0", "-2", "garbage")})
MEASUREMENT_CORRUPTIONS.update({
    "an acceptance of 1.2": (_acceptance_column("1.2"), REFUSE),
    "an acceptance of -0.1": (_acceptance_column("-0.1"), REFUSE),
})

CONFIG_CORRUPTIONS = _csv_corruptions(
    required=("target_params", "target_tokens"), optional=("draft_tokens",),
    cells={"target_params": ("-70B", "0", "0.5", "nan", "inf", "1e400", "garbage"),
           "target_tokens": ("-1",), "draft_tokens": ("0", "-2T", "nan")})

LATENCY_CORRUPTIONS = _csv_corruptions(
    required=("draft_params", "target_params"), optional=("draft_tokens",),
    cells={"draft_params": ("-1", "0", "nan"), "ttft": ("-0.05", "inf", "garbage"),
           "tpot": ("nan",), "ttft_low": ("0.9",), "prompts": ("-3", "1.5"),
           "target_tokens": ("0",)})

# At least one of ttft, tpot and ttot; each alone is a valid table.
_LATENCY_COLUMNS = ("ttft", "ttft_low", "ttft_high", "tpot", "ttot")


def _keep_one_latency(keep: str | None):
    def spoil(data):
        for column in _LATENCY_COLUMNS:
            if column != keep and not (keep and column.startswith(keep + "_")):
                data = _drop_column(column)(data)
        return data
    return spoil


LATENCY_CORRUPTIONS.update({
    "no latency column at all": (_keep_one_latency(None), REFUSE),
    "tpot the only latency": (_keep_one_latency("tpot"), ACCEPT),
    "an empty tpot cell": (_set_cell("tpot", ""), ACCEPT),
    "ttft_low without ttft_high": (_drop_column("ttft_high"), REFUSE),
})

PROMPT_CORRUPTIONS = {
    "binary bytes": (lambda d: bytes(range(128, 256)) * 4, REFUSE),
    "Latin-1 text": (lambda d: "caf\u00e9 = 1\n".encode("latin-1"), REFUSE),
    "UTF-16 text": (lambda d: d.decode("utf-8").encode("utf-16"), REFUSE),
    "an empty file": (lambda d: b"", REFUSE),
    "blank lines only": (lambda d: b"\n  \n\n", REFUSE),
}

CORRUPTIONS = {
    "measurements": {**TEXT_CORRUPTIONS, **MEASUREMENT_CORRUPTIONS},
    "configs": {**TEXT_CORRUPTIONS, **CONFIG_CORRUPTIONS},
    "latency": {**TEXT_CORRUPTIONS, **LATENCY_CORRUPTIONS},
    "laws": {**TEXT_CORRUPTIONS, **LAWS_CORRUPTIONS},
    "rates": {**TEXT_CORRUPTIONS, **RATES_CORRUPTIONS},
    "steps": {**TEXT_CORRUPTIONS, **STEPS_CORRUPTIONS},
    "runs": {**TEXT_CORRUPTIONS, **RUNS_CORRUPTIONS},
    "prompts": PROMPT_CORRUPTIONS,
}


# --------------------------------------------------------------------------
# Bad and edge values of an option, by the kind of value it takes.

NUMBERS = ("-1", "0", "nan", "inf", "-inf", "1e400", "99999999999", "", "garbage")


def _numbers(*either: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Every value of NUMBERS (and ``extra``) must be refused but those in ``either``."""
    return {v: (EITHER if v in either else REFUSE) for v in NUMBERS + extra}


KINDS: dict[str, dict[str, str]] = {
    # A positive finite count (sizes, tokens): huge is a valid size.
    "count": _numbers("99999999999"),
    # A positive finite number where huge is still meaningful (a batch, a cost ratio).
    "positive": _numbers("99999999999"),
    # A level or a share strictly inside (0, 1).
    "unit": _numbers(extra=("1", "1.5")),
    # A KV fraction in (0, 1].
    "kv": _numbers(extra=("1.5",)),
    # A temperature: finite and >= 0.
    "temperature": _numbers("0", "99999999999"),
    # An integer >= 1 where a huge one is a long run, not a mistake.
    "int1": _numbers("99999999999", extra=("1.5",)),
    # An integer >= 1 that sizes an allocation: huge must be refused.
    "int1-bounded": _numbers(extra=("1.5",)),
    # An integer >= 0 (a seed, a number of resamples that may be 0).
    "int0": _numbers("0", "99999999999", extra=("1.5",)),
    # --bootstrap of fit: 0 is valid, huge is an allocation.
    "int0-bounded": _numbers("0", extra=("1.5",)),
    # A point count of a grid: bounded below and above.
    "points": _numbers(extra=("1", "1.5")),
    # --dpi: at least 10, and an image that fits in memory.
    "dpi": _numbers(extra=("9", "1.5")),
    # A perplexity: finite and at least 1.
    "perplexity": _numbers("99999999999", extra=("0.5",)),
    # A choice among names.
    "choice": {"garbage": REFUSE, "": REFUSE, "nan": REFUSE},
    # --dtype: float32, bfloat16 or float16, spelled out; other precisions are refused.
    "dtype": {"garbage": REFUSE, "": REFUSE, "nan": REFUSE, "fp8": REFUSE, "float64": REFUSE,
              "int8": REFUSE},
    # --top-k: an integer >= 1 (beyond any vocabulary is refused too).
    "top-k": _numbers(extra=("1.5",)),
    # --top-p: a probability in (0, 1].
    "top-p": _numbers(extra=("1.5", "1e-400")),
    # --devices: a count of at least 1 and no more than JAX sees, or "all".
    "devices": _numbers(extra=("999", "1.5", "al")),
    # A free name looked up in a table (hardware, precision, preset, size, stage).
    "name": {"garbage": REFUSE, "": REFUSE, "nan": REFUSE, "-1": REFUSE},
    # Free text (a title): anything is valid, nothing may break the run.
    "text": {"": EITHER, "$": EITHER, "$\\frac{": EITHER, "100%": EITHER, "a\nb": EITHER},
    # A file or folder that is read.
    "in": {"{dir}/sub": REFUSE, "{dir}/missing.csv": REFUSE, "{dir}/nofolder/x.csv": REFUSE,
           "": REFUSE, "{dir}/" + "x" * 300: REFUSE},
    # A model folder (measure --draft/--target).
    "model": {"{dir}/notes.txt": REFUSE, "{dir}/sub": REFUSE, "{dir}/missing": REFUSE,
              "{dir}/corpus": REFUSE, "": REFUSE},
}


# Options that take LOW HIGH: a bad LOW is given beside this HIGH (a bad value may make
# LOW > HIGH, so a huge one is either refused or valid).
PAIR_HIGH = {"--draft-range": "10B", "--target-params-range": "300B",
             "--draft-tokens-range": "1e14", "--draft-perplexity": "40"}


def _output_values(mode: "Mode", suffix: str) -> dict[str, str | Callable]:
    """Bad paths for an output option: a folder, a missing folder, an input, notes.txt, ''."""
    values: dict[str, str | Callable] = {
        "{dir}/sub": REFUSE, "{dir}/sub" + suffix: REFUSE,
        "{dir}/nofolder/out" + suffix: REFUSE, "": REFUSE, LONG_NAME + suffix: REFUSE,
        # Someone else's file: refused unless --overwrite asks to replace it, and a
        # resume file that is not this command's output is refused untouched.
        "{dir}/notes.txt": _refuse_unless_overwrite,
    }
    for name in mode.input_paths():
        values[name] = REFUSE
    return values


def _refuse_unless_overwrite(argv) -> str:
    if "--overwrite" in argv and "--resume" not in argv:
        return EITHER
    return REFUSE


# --------------------------------------------------------------------------
# Modes and mutations.

@dataclasses.dataclass(frozen=True, repr=False)
class Mode:
    """One subcommand in one mode: a valid baseline and what may be done to it.

    Attributes:
      name: the mode as the report names it, e.g. "plan --csv".
      command: the subcommand words, e.g. ("plot", "plane").
      positionals: positional arguments (templates with {dir}, {corpus}, {draft}, {target}).
      options: (flag, values) in order; a flag with no values is a switch.
      values: flag -> kind in KINDS (or "out", "out-stem", "out-dir") of what it takes.
      inputs: file name in the folder -> kind in CORRUPTIONS.
      required: flags whose absence must be refused.
      foreign: options (as argv pieces) that do not belong to the mode.
      switches: switches that may be added (valid, e.g. --overwrite).
      refusals_only: generate only what must be refused (the mode's runs do real work).
      corpus: the mode reads a copy of the corpus at {dir}/corpus.
      models: the mode reads the trained pair.
      default_outputs: outputs written without their option (fit's MEASUREMENTS.laws.json).
    """

    name: str
    command: tuple[str, ...]
    positionals: tuple[str, ...] = ()
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()
    values: dict = dataclasses.field(default_factory=dict)
    inputs: dict = dataclasses.field(default_factory=dict)
    required: tuple[str, ...] = ()
    foreign: tuple[tuple[str, ...], ...] = ()
    switches: tuple[str, ...] = ()
    refusals_only: bool = False
    corpus: bool = False
    models: bool = False
    default_outputs: tuple[str, ...] = ()

    def __repr__(self):
        return f"Mode({self.name!r})"

    @property
    def subcommand(self) -> str:
        return self.command[0]

    def input_paths(self) -> list[str]:
        paths = [f"{{dir}}/{name}" for name in self.inputs]
        return paths + (["{dir}/corpus"] if self.corpus else [])

    def output_kinds(self) -> dict[str, str]:
        return {flag: kind for flag, kind in self.values.items() if kind.startswith("out")}


def _opts(*pairs) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for pair in pairs:
        flag, *values = pair if isinstance(pair, tuple) else (pair,)
        out.append((flag, tuple(values)))
    return tuple(out)


PRESETS = {"--pretraining-law": "choice", "--acceptance-law": "choice", "--method": "choice"}
HARDWARE_ONLY = (("--step-times", "{dir}/steps.jsonl"), ("--batch", "4"), ("--kv-fraction", "0.5"),
                 ("--context", "4096"), ("--verify", "one_step"), ("--draft-precision", "fp8"))
PLOT = {"--out": "out-stem", "--dpi": "dpi", "--title": "text"}
CORPUS = ("--no-stdlib", ("--corpus", "{corpus}"))
TRAIN_FLAGS = (("--steps", "1"), ("--batch-size", "2"), ("--seq-len", "16"),
               ("--eval-tokens", "64"), ("--checkpoint-every", "1"), ("--progress", "never"))

MODES = (
    Mode("plan", ("plan",),
         options=_opts(("--target-params", "70B"), ("--target-tokens", "15T"),
                       ("--draft-tokens", "2T"), "--json"),
         values={"--target-params": "count", "--target-tokens": "count",
                 "--draft-tokens": "count", **PRESETS},
         required=("--target-params", "--target-tokens"),
         foreign=(("--out", "{dir}/plan.csv"), ("--resume",), ("--overwrite",),
                  ("--cost-ratio", "0.1"), ("--interval", "delta"), *HARDWARE_ONLY)),
    Mode("plan --laws", ("plan",),
         options=_opts(("--laws", "{dir}/laws.json"), ("--target-params", "70B"),
                       ("--target-tokens", "15T"), "--json"),
         values={"--laws": "in", "--target-params": "count", "--target-tokens": "count",
                 "--confidence": "unit", "--interval": "choice", "--method": "choice"},
         inputs={"laws.json": "laws"},
         foreign=(("--pretraining-law", "hoffmann2022"), ("--cost-ratio", "0.1"),
                  ("--step-times", "{dir}/steps.jsonl"))),
    Mode("plan --csv", ("plan",),
         options=_opts(("--csv", "{dir}/configs.csv"), ("--out", "{dir}/plan.csv")),
         values={"--csv": "in", "--out": "out", "--draft-tokens": "count", **PRESETS},
         inputs={"configs.csv": "configs"}, switches=("--resume", "--overwrite"),
         foreign=(("--target-params", "70B"), ("--hardware", "H100"), ("--cost-ratio", "0.1"),
                  *HARDWARE_ONLY)),
    Mode("plan --hardware", ("plan",),
         options=_opts(("--target-params", "70B"), ("--target-tokens", "15T"),
                       ("--hardware", "H100"), ("--step-times", "{dir}/steps.jsonl"), "--json"),
         values={"--hardware": "name", "--batch": "positive", "--context": "count",
                 "--kv-fraction": "kv", "--draft-precision": "name",
                 "--target-precision": "name", "--verify": "choice", "--step-times": "in",
                 "--target-params": "count"},
         inputs={"steps.jsonl": "steps"},
         foreign=(("--csv", "{dir}/configs.csv"), ("--position-rates", "{dir}/rates.json"),
                  ("--cost-ratio", "0.1"))),
    Mode("plan --position-rates", ("plan",),
         options=_opts(("--position-rates", "{dir}/rates.json"), ("--cost-ratio", "0.05"), "--json"),
         values={"--position-rates": "in", "--cost-ratio": "positive"},
         inputs={"rates.json": "rates"},
         foreign=(("--target-params", "70B"), ("--hardware", "H100"), ("--laws", "{dir}/laws.json"),
                  ("--out", "{dir}/plan.csv"), *HARDWARE_ONLY)),
    Mode("fit", ("fit",), positionals=("{dir}/measurements.csv",),
         options=_opts(("--bootstrap", "0"), ("--out", "{dir}/fit.laws.json"), "--json"),
         values={"--bootstrap": "int0-bounded", "--seed": "int0", "--confidence": "unit",
                 "--weighting": "choice", "--out": "out"},
         inputs={"measurements.csv": "measurements"}, switches=("--overwrite",),
         default_outputs=("{dir}/measurements.laws.json",)),
    Mode("train", ("train",),
         options=_opts(("--sizes", "10k"), *TRAIN_FLAGS, ("--out", "{dir}/run"), *CORPUS),
         values={"--sizes": "name", "--family": "name", "--steps": "int1",
                 "--batch-size": "int1-bounded", "--seq-len": "int1-bounded",
                 "--eval-tokens": "int1", "--checkpoint-every": "int1",
                 "--learning-rate": "positive", "--warmup-steps": "int0",
                 "--validation-fraction": "unit", "--progress": "choice", "--corpus": "in",
                 "--out": "out-dir", "--dtype": "dtype"},
         required=("--out", "--steps", "--sizes", "--corpus"),
         refusals_only=True, corpus=True),
    Mode("measure", ("measure",),
         options=_opts(("--draft", "{draft}"), ("--target", "{target}"), ("--lookahead", "2"),
                       ("--prompts", "1"), ("--max-new-tokens", "4"), ("--prompt-len", "8"),
                       *CORPUS, ("--out", "{dir}/runs-out.jsonl"),
                       ("--rows", "{dir}/rows-out.jsonl"), ("--summary", "{dir}/summary.json")),
         values={"--draft": "model", "--target": "model", "--lookahead": "int1-bounded",
                 "--prompts": "int1", "--max-new-tokens": "int1-bounded",
                 "--prompt-len": "int1-bounded", "--temperature": "temperature",
                 "--batch-size": "int1", "--seed": "int0", "--confidence": "unit",
                 "--draft-tokens": "count", "--validation-fraction": "unit", "--corpus": "in",
                 "--out": "out", "--rows": "out", "--summary": "out", "--dtype": "dtype",
                 "--top-k": "top-k", "--top-p": "top-p", "--devices": "devices"},
         required=("--draft", "--target", "--lookahead", "--out", "--prompts"),
         # Byte-level models have no end-of-sequence token to stop at.
         foreign=(("--documents", "1"), ("--prompt-file", "{dir}/prompts.txt"),
                  ("--stop-at-eos",)),
         refusals_only=True, corpus=True, models=True),
    Mode("measure --prompt-file", ("measure",),
         options=_opts(("--draft", "{draft}"), ("--target", "{target}"), ("--lookahead", "2"),
                       ("--max-new-tokens", "4"), ("--prompt-file", "{dir}/prompts.txt"),
                       ("--out", "{dir}/runs-out.jsonl"), "--no-baseline"),
         values={"--prompt-file": "in", "--prompts": "int1", "--prompt-len": "int1-bounded",
                 "--out": "out", "--devices": "devices", "--top-p": "top-p"},
         inputs={"prompts.txt": "prompts"},
         foreign=(("--corpus", "{dir}/prompts.txt"), ("--validation-fraction", "0.1")),
         refusals_only=True, models=True),
    Mode("measure --teacher-forced", ("measure",),
         options=_opts("--teacher-forced", ("--draft", "{draft}"), ("--target", "{target}"),
                       ("--documents", "1"), ("--prompt-len", "16"), *CORPUS,
                       ("--rows", "{dir}/rows-out.jsonl"), ("--summary", "{dir}/summary.json")),
         values={"--documents": "int1", "--prompt-len": "int1-bounded", "--batch-size": "int1",
                 "--temperature": "temperature", "--lookahead": "int1-bounded",
                 "--confidence": "unit", "--target": "model", "--rows": "out",
                 "--summary": "out", "--dtype": "dtype", "--devices": "devices"},
         # The loop's sampling and memory options: teacher forcing samples nothing.
         foreign=(("--out", "{dir}/runs-out.jsonl"), ("--prompts", "2"),
                  ("--max-new-tokens", "4"), ("--no-baseline",), ("--top-k", "5"),
                  ("--top-p", "0.9"), ("--stop-at-eos",), ("--memory-estimate",)),
         refusals_only=True, corpus=True, models=True),
    Mode("rule", ("rule",),
         options=_opts(("--points", "4"), ("--tokens", "1T", "2T"),
                       ("--min-target-params", "13B"), ("--max-target-params", "70B"), "--json"),
         values={"--points": "points", "--tokens": "count", "--min-target-params": "count",
                 "--max-target-params": "count", **PRESETS}),
    Mode("plot plane", ("plot", "plane"), positionals=("{dir}/measurements.csv",),
         options=_opts(("--out", "{dir}/fig"), ("--dpi", "20")),
         values={**PLOT, "--weighting": "choice", "--acceptance-law": "choice", "--laws": "in"},
         inputs={"measurements.csv": "measurements"}, switches=("--overwrite",),
         foreign=(("--interval", "delta"), ("--target-params", "7B"))),
    Mode("plot throughput", ("plot", "throughput"),
         options=_opts(("--target-params", "7B"), ("--points", "8"), ("--out", "{dir}/fig"),
                       ("--dpi", "20")),
         values={**PLOT, "--target-params": "count", "--target-tokens": "count",
                 "--draft-tokens": "count", "--draft-range": "count-pair", "--points": "points",
                 "--metric": "choice", "--interval": "choice", "--confidence": "unit",
                 "--laws": "in", **PRESETS},
         switches=("--overwrite",), foreign=(("--weighting", "equal"),)),
    Mode("plot acceptance", ("plot", "acceptance"), positionals=("{dir}/measurements.csv",),
         options=_opts(("--out", "{dir}/fig"), ("--dpi", "20")),
         values={**PLOT, "--weighting": "choice", "--laws": "in"},
         inputs={"measurements.csv": "measurements"}, switches=("--overwrite",),
         # Without MEASUREMENTS only: given with them they would be ignored.
         foreign=(("--target-params", "7B"), ("--draft-perplexity", "5", "50"),
                  ("--target-tokens", "1T"))),
    Mode("plot acceptance --target-params", ("plot", "acceptance"),
         options=_opts(("--target-params", "7B", "70B"), ("--target-tokens", "2T"),
                       ("--out", "{dir}/fig"), ("--dpi", "20")),
         values={**PLOT, "--target-params": "count", "--target-tokens": "count",
                 "--draft-perplexity": "perplexity-pair", "--interval": "choice",
                 "--confidence": "unit", "--laws": "in", **PRESETS},
         switches=("--overwrite",),
         # With MEASUREMENTS only.
         foreign=(("--weighting", "equal"), ("--target-tokens", "1T", "2T", "3T"))),
    Mode("plot latency", ("plot", "latency"), positionals=("{dir}/latency.csv",),
         options=_opts(("--out", "{dir}/fig"), ("--dpi", "20")),
         values={**PLOT, "--draft-tokens": "count", "--laws": "in", **PRESETS},
         inputs={"latency.csv": "latency"}, switches=("--overwrite",)),
    Mode("plot draft-size", ("plot", "draft-size"),
         options=_opts(("--points", "4"), ("--out", "{dir}/fig"), ("--dpi", "20")),
         values={**PLOT, "--points": "points", "--target-params": "count",
                 "--target-tokens": "count", "--draft-tokens": "count",
                 "--target-params-range": "count-pair", "--draft-tokens-range": "count-pair",
                 "--confidence": "unit", "--laws": "in", **PRESETS},
         switches=("--overwrite", "--no-rule")),
    Mode("plot positions", ("plot", "positions"), positionals=("{dir}/runs.jsonl",),
         options=_opts(("--bootstrap", "20"), ("--out", "{dir}/fig"), ("--dpi", "20")),
         values={**PLOT, "--bootstrap": "int1-bounded", "--confidence": "unit", "--seed": "int0"},
         inputs={"runs.jsonl": "runs"}, switches=("--overwrite",)),
    Mode("reproduce", ("reproduce",),
         options=_opts(("--preset", "tiny"), ("--out", "{dir}/rep"), *CORPUS,
                       ("--stop-after", "train"), ("--progress", "never")),
         values={"--preset": "name", "--stop-after": "name", "--progress": "choice",
                 "--corpus": "in", "--out": "out-dir"},
         required=("--out", "--corpus"),
         refusals_only=True, corpus=True),
)

MODES_BY_NAME = {mode.name: mode for mode in MODES}


@dataclasses.dataclass(frozen=True, repr=False)
class Mutation:
    """One way to spoil a baseline. ``expect`` is REFUSE, ACCEPT or EITHER, or a function
    of the final argv giving one (notes.txt as --out is fine with --overwrite)."""

    target: str  # the flag or file it changes ("+" for an added option)
    label: str
    expect: str | Callable
    value: str | None = None  # the new value of the flag
    drop: bool = False
    add: tuple[str, ...] = ()
    file: str | None = None  # the input file it corrupts, or the output it pre-creates
    corrupt: Callable[[bytes], bytes] | None = None
    pair: tuple[str, str] | None = None  # new LOW HIGH of a two-value option

    def __repr__(self):
        return f"Mutation({self.label!r})"


def mutations(mode: Mode) -> list[Mutation]:
    """Every single mutation of ``mode``'s baseline (only refusals for refusals_only modes)."""
    found = []
    for flag, kind in mode.values.items():
        if kind == "out":
            suffix = ".json" if flag == "--summary" else (".jsonl" if flag in ("--rows",) else
                                                          ".csv")
            table = _output_values(mode, suffix)
        elif kind == "out-stem":
            # STEM.png and STEM.pdf are written: a stem named like an input or notes.txt
            # clobbers nothing, but a folder where STEM.png goes must be refused.
            table = {"{dir}/sub.png": REFUSE, "{dir}/nofolder/out": REFUSE, "": REFUSE,
                     "{dir}/notes.txt": EITHER, LONG_NAME: REFUSE}
        elif kind == "out-dir":
            table = {"{dir}/notes.txt": REFUSE, "{dir}/nofolder/run": REFUSE, "": REFUSE,
                     "{dir}/corpus": REFUSE, LONG_NAME: REFUSE}
        elif kind.endswith("-pair"):
            table = {v: (EITHER if v == "99999999999" else e)
                     for v, e in KINDS[kind[:-len("-pair")]].items()}
        else:
            table = KINDS[kind]
        for value, expect in table.items():
            if kind.endswith("-pair"):
                # As two words (argparse's --flag=VALUE gives one): a value such as
                # -inf is then read as an option, which argparse refuses too.
                found.append(Mutation(flag, f"{flag} {value!r} {PAIR_HIGH[flag]}", expect,
                                      pair=(value, PAIR_HIGH[flag])))
            else:
                found.append(Mutation(flag, f"{flag}={value!r}", expect, value=value))
    for name, kind in mode.inputs.items():
        for label, (corrupt, expect) in CORRUPTIONS[kind].items():
            found.append(Mutation(name, f"{name}: {label}", expect, file=name, corrupt=corrupt))
    for flag in mode.required:
        found.append(Mutation(flag, f"without {flag}", REFUSE, drop=True))
    for piece in mode.foreign:
        found.append(Mutation("+" + piece[0], f"with {' '.join(piece)}", REFUSE, add=piece))
    for switch in mode.switches:
        found.append(Mutation(switch, f"with {switch}", EITHER, add=(switch,)))
    # An output that exists already and is not this command's: refused untouched
    # (unless --overwrite asks for it to be replaced).
    for flag, kind in mode.output_kinds().items():
        if kind == "out-dir":
            continue
        value = dict(mode.options).get(flag, (None,))[0]
        if value is None:
            continue
        paths = [value + ".png", value + ".pdf"] if kind == "out-stem" else [value]
        for path in paths:
            name = path.replace("{dir}/", "")
            found.append(Mutation(f"existing {name}", f"{name} exists (someone's notes)",
                                  _refuse_unless_overwrite, file=name,
                                  corrupt=lambda d: NOTES))
    if mode.models and "--out" in dict(mode.options):
        # A runs file of another pair and lookahead: resuming it would mix two runs.
        found.append(Mutation("existing runs-out.jsonl", "runs-out.jsonl is another run's",
                              REFUSE, file="runs-out.jsonl", corrupt=lambda d: RUNS))
    if mode.refusals_only:
        # (A callable expectation refuses without --overwrite, which these modes lack.)
        found = [m for m in found if m.expect == REFUSE or callable(m.expect)]
    return found


@dataclasses.dataclass
class Case:
    """A spoiled command: the mode, its argv (templates) and the files it starts from."""

    mode: Mode
    argv: list[str]
    files: dict[str, bytes]  # name -> content written into the folder before the run
    labels: list[str]
    expect: str


def build_case(mode: Mode, chosen: list[Mutation], base: dict[str, bytes]) -> Case:
    """``mode``'s baseline with ``chosen`` applied (later ones win on the same target)."""
    by_target = {}
    for m in chosen:
        by_target.pop(m.target, None)
        by_target[m.target] = m
    chosen = list(by_target.values())
    options = [[flag, list(values)] for flag, values in mode.options]
    files = dict(base)
    for m in chosen:
        if m.drop:
            options = [o for o in options if o[0] != m.target]
        elif m.add:
            options.append([m.add[0], list(m.add[1:])])
        elif m.pair is not None:
            for o in options:
                if o[0] == m.target:
                    o[1] = list(m.pair)
                    break
            else:
                options.append([m.target, list(m.pair)])
        elif m.value is not None:
            for o in options:
                if o[0] == m.target:
                    o[1] = ["=" + m.value]  # --flag=VALUE: a value such as -inf stays a value
                    break
            else:
                options.append([m.target, ["=" + m.value]])
        if m.file is not None:
            files[m.file] = m.corrupt(files.get(m.file, b""))
    argv = list(mode.command) + list(mode.positionals)
    for flag, values in options:
        if values and values[0].startswith("="):
            argv.append(flag + values[0])
        else:
            argv += [flag, *values]
    expects = {m.expect(argv) if callable(m.expect) else m.expect for m in chosen} or {ACCEPT}
    expect = REFUSE if REFUSE in expects else (ACCEPT if expects == {ACCEPT} else EITHER)
    return Case(mode, argv, files, [m.label for m in chosen] or ["the valid baseline"], expect)


# --------------------------------------------------------------------------
# Running a case and judging it.

@dataclasses.dataclass
class Result:
    code: int | None
    stdout: str
    stderr: str
    violations: list[str]
    seconds: float
    outputs: list[str]  # the output paths the command line named, resolved


class CaseTimeout(BaseException):
    """A case ran past CASE_SECONDS (no Exception, so no catch-all in the CLI takes it)."""


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> the SHA-256 of a file's bytes, or "dir" for a folder."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity (a silent non-finite number is a wrong answer)."""
    def refuse(name):
        raise ValueError(f"non-finite number {name}")
    return json.loads(text, parse_constant=refuse)


def _check_output(path: Path) -> str | None:
    """Why the output at ``path`` is incomplete (None: complete)."""
    try:
        if path.is_dir():
            cards = list(path.rglob("model.json"))
            for card in cards:
                _strict_json(card.read_text(encoding="utf-8"))
            return None
        data = path.read_bytes()
        suffix = path.suffix.lower()
        if suffix == ".png":
            return None if data.startswith(b"\x89PNG\r\n\x1a\n") and data.rstrip().endswith(
                b"IEND\xaeB`\x82") else "not a whole PNG"
        if suffix == ".pdf":
            return None if data.startswith(b"%PDF-") and b"%%EOF" in data[-64:] else "not a whole PDF"
        text = data.decode("utf-8")
        if suffix == ".csv":
            rows = list(csv.reader(io.StringIO(text)))
            if not rows or any(len(r) != len(rows[0]) for r in rows):
                return "a CSV with ragged or no rows"
            return None
        if suffix in (".jsonl", ".ndjson"):
            for line in text.splitlines():
                if line.strip() and not isinstance(_strict_json(line), dict):
                    return "a JSON Lines file with a line that is no object"
            if text and not text.endswith("\n"):
                return "a JSON Lines file cut off mid-line"
            return None
        _strict_json(text)
        return None
    except (ValueError, UnicodeDecodeError) as err:
        return f"unreadable ({err})"


def output_paths(case: Case, argv: list[str]) -> list[str]:
    """The outputs ``argv`` names (templates resolved), with the mode's default outputs."""
    kinds = case.mode.output_kinds()
    paths = []
    given = set()
    for i, token in enumerate(argv):
        flag, _, value = token.partition("=")
        if flag not in kinds:
            continue
        if not _:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if value:
            given.add(flag)
        if kinds[flag] == "out-stem":
            stem = value[:-4] if value.lower().endswith((".png", ".pdf")) else value
            paths += [stem + ".png", stem + ".pdf"]
        else:
            paths.append(value)
    if "--out" not in given:
        paths += list(case.mode.default_outputs)
        if case.mode.subcommand == "plot":
            paths += [f"{case.mode.command[1]}.png", f"{case.mode.command[1]}.pdf"]
    return [p for p in paths if p]


def _resolve(template: str, env: dict) -> str:
    for key, value in env.items():
        template = template.replace("{" + key + "}", str(value))
    return template


def _alarm(signum, frame):
    raise CaseTimeout(f"still running after {CASE_SECONDS} s")


def run_case(case: Case, folder: Path, env: dict) -> Result:
    """Write the case's files into ``folder``, run it in-process, and list what it broke.

    env: {"corpus": a folder to copy to {dir}/corpus, "draft": ..., "target": ...}.
    """
    from sdsl_jax.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        (folder / name).write_bytes(content)
    for name in ("sub", "sub.csv", "sub.json", "sub.jsonl", "sub.png"):
        (folder / name).mkdir()
    joined = " ".join(case.argv)
    if case.mode.corpus or "{dir}/corpus" in joined or "{corpus}" in joined:
        shutil.copytree(env["corpus"], folder / "corpus")
    names = {"dir": folder, "corpus": folder / "corpus", "draft": env.get("draft", ""),
             "target": env.get("target", "")}
    # Resolve {dir} inside every value, including those given as --flag=VALUE.
    argv = [_resolve(token, names) for token in case.argv]
    before = _snapshot(folder)
    model_dirs = [Path(env[k]) for k in ("draft", "target") if case.mode.models and env.get(k)]
    models_before = [_snapshot(d) for d in model_dirs]

    out, err = io.StringIO(), io.StringIO()
    violations, code = [], None
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    start = time.perf_counter()
    cwd = os.getcwd()
    try:
        # In the folder, so a file written to a relative default path is seen (and the
        # repository is never written to).
        os.chdir(folder)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except CaseTimeout as exc:
        violations.append(f"hangs: {exc}")
    except SystemExit as exc:
        violations.append(f"SystemExit({exc.code}) escaped main")
    except BaseException as exc:  # noqa: BLE001 - anything escaping main is a traceback
        violations.append(f"traceback: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        os.chdir(cwd)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - start
    stdout, stderr = out.getvalue(), err.getvalue()

    if code is not None and code not in (0, 2):
        violations.append(f"exit status {code}")
    if "Traceback" in stderr:
        violations.append("a traceback on stderr")
    after = _snapshot(folder)
    named = [os.path.join(folder, _resolve(p, names)) for p in output_paths(case, argv)]
    outputs = {os.path.relpath(p, folder) for p in named
               if os.path.abspath(p).startswith(str(folder))}
    for path, digest in before.items():
        writable = code == 0 and path in outputs and path not in _inputs(case, folder, argv)
        if after.get(path) != digest and not writable:
            what = "removed" if path not in after else "changed"
            violations.append(f"{path} was {what}" + ("" if code == 0 else f" (exit {code})"))
    new = sorted(set(after) - set(before))
    if code == 0:
        stray = [p for p in new if not any(p == o or p.startswith(o + os.sep) for o in outputs)]
        if stray:
            violations.append(f"exit 0 left files that are no output: {stray[:5]}")
        for path in outputs:
            full = folder / path
            if full.exists():
                problem = _check_output(full)
                if problem:
                    violations.append(f"output {path}: {problem}")
        if any(t == "--json" for t in argv):
            for line in stdout.splitlines():
                try:
                    _strict_json(line)
                except ValueError as exc:
                    violations.append(f"--json printed {line[:80]!r}: {exc}")
                    break
    elif code == 2:
        if new:
            violations.append(f"exit 2 left new files or folders: {new[:5]}")
        if not (stderr.startswith("error: ") and stderr.count("\n") == 1
                and stderr.endswith("\n")):
            violations.append(f"exit 2 with stderr not one 'error: ' line: {stderr[:300]!r}")
        # The user typed numbers, not numpy or JAX objects: a repr in the message is a
        # library's message passed through unread.
        if re.search(r"\bnp\.\w+\(|\bArray\(|\barray\(", stderr):
            violations.append(f"exit 2 with a Python repr in the message: {stderr.strip()[:300]!r}")
    for d, snapshot in zip(model_dirs, models_before):
        if _snapshot(d) != snapshot:
            violations.append(f"the model folder {d.name} was changed")
    if code == 0 and case.expect == REFUSE:
        violations.append("accepted (exit 0) what must be refused")
    if code == 2 and case.expect == ACCEPT:
        violations.append(f"refused a valid input: {stderr.strip()[:200]}")
    return Result(code, stdout, stderr, violations, seconds,
                  [str(folder / p) for p in sorted(outputs)])


def _inputs(case: Case, folder: Path, argv: list[str]) -> set[str]:
    """The folder's files the command reads (its input files, and the corpus)."""
    names = set(case.mode.inputs)
    for template in case.mode.positionals:
        names.add(os.path.relpath(_resolve(template, {"dir": folder}), folder))
    for flag, kind in case.mode.values.items():
        if kind == "in":
            for i, token in enumerate(argv):
                if token == flag and i + 1 < len(argv):
                    names.add(os.path.relpath(argv[i + 1], folder))
                elif token.startswith(flag + "="):
                    names.add(os.path.relpath(token.split("=", 1)[1] or ".", folder))
    return names


def record(case: Case, result: Result, folder: Path) -> None:
    """Append the case to the file SDSL_BAD_INPUT_REPORT names (nothing without it)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = result.stderr.strip().splitlines()[0] if result.stderr.strip() else ""
    entry = {"subcommand": case.mode.subcommand, "mode": case.mode.name,
             "argv": ["sdsl"] + [a.replace(str(folder), "{dir}") for a in case.argv],
             "spoiled": case.labels, "expect": case.expect, "exit": result.code,
             "stderr": line.replace(str(folder), "{dir}"), "violations": [
                 v.replace(str(folder), "{dir}") for v in result.violations],
             "seconds": round(result.seconds, 3)}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def summarise(path: str) -> str:
    """The tables of a report: per subcommand and per mode, the cases run, refused (exit 2),
    accepted (exit 0) and those that broke a promise."""
    by = {"subcommand": {}, "mode": {}}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            entry = json.loads(line)
            for key, rows in by.items():
                counts = rows.setdefault(entry[key], [0, 0, 0, 0])
                counts[0] += 1
                counts[1] += entry["exit"] == 2
                counts[2] += entry["exit"] == 0
                counts[3] += bool(entry["violations"])
    lines = []
    for key, rows in by.items():
        lines += ["", f"| {key} | cases | refused (exit 2) | accepted (exit 0) | broke a promise |",
                  "|---|---|---|---|---|"]
        for name, (n, refused, accepted, failing) in sorted(rows.items()):
            lines.append(f"| {name} | {n} | {refused} | {accepted} | {failing} |")
        total = [sum(c[i] for c in rows.values()) for i in range(4)]
        lines.append(f"| all | {total[0]} | {total[1]} | {total[2]} | {total[3]} |")
    return "\n".join(lines[1:])


def run_every_mutation(report: str, names: list[str]) -> int:
    """Run every single mutation of the named modes (all without names) once, append each
    case to ``report`` and print the ones that broke a promise; the number that did.

    The property tests draw a few of these; this runs them all (about 1,400 cases, most
    refused at once), with a corpus of this Python's standard library and a pair trained
    for one step, so it needs none of the test fixtures.
    """
    import sysconfig
    import tempfile

    from sdsl_jax.cli import main
    from sdsl_jax.cli import plan_csv

    plan_csv.CHUNK_ROWS = 2  # as the tests plan: three rows need no 65536-row compilation
    os.environ[REPORT_ENV] = report
    root = Path(tempfile.mkdtemp(prefix="sdsl-bad-input-"))
    corpus = root / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("os.py", "argparse.py", "string.py", "textwrap.py", "shutil.py", "csv.py"):
        shutil.copy(stdlib / name, corpus / name)
    quiet = contextlib.redirect_stderr(io.StringIO())
    with quiet, contextlib.redirect_stdout(io.StringIO()):
        assert main(["fit", str(MEASUREMENTS), "--bootstrap", "0", "--out",
                     str(root / "laws.json")]) == 0
        assert main(["train", "--sizes", "10k", "30k", "--out", str(root / "pair"), "--no-stdlib",
                     "--corpus", str(corpus), "--steps", "1", "--batch-size", "2", "--seq-len",
                     "16", "--eval-tokens", "64", "--progress", "never"]) == 0
    env = {"corpus": corpus, "draft": root / "pair" / "10k", "target": root / "pair" / "30k"}
    broken = 0
    for mode in MODES:
        if names and mode.name not in names:
            continue
        base = base_files((root / "laws.json").read_bytes() if "laws.json" in mode.inputs
                          else None)
        for i, mutation in enumerate([None, *mutations(mode)]):
            case = build_case(mode, [] if mutation is None else [mutation], base)
            folder = root / "cases" / f"{mode.name.replace(' ', '_')}-{i}"
            result = run_case(case, folder, env)
            record(case, result, folder)
            if result.violations:
                broken += 1
                print(f"{mode.name}: {'; '.join(case.labels)} -> exit {result.code}: "
                      + " | ".join(v.replace(str(folder), "{dir}") for v in result.violations),
                      flush=True)
            else:
                shutil.rmtree(folder, ignore_errors=True)
    print(f"{broken} cases broke a promise; the cases that did are kept in {root}/cases")
    return broken


if __name__ == "__main__":
    # python tests/cli/bad_input_cases.py table REPORT      the table of refusals per mode
    # python tests/cli/bad_input_cases.py run REPORT [MODE ...]   every single mutation
    if sys.argv[1] == "table":
        print(summarise(sys.argv[2]))
    else:
        sys.exit(1 if run_every_mutation(sys.argv[2], sys.argv[3:]) else 0)
