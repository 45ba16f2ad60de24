"""``sdsl plan --position-rates FILE``: the lookahead from measured per-position rates.

FILE is either the JSON summary of ``sdsl measure`` (``--json`` printed to a
file, or ``--summary``), whose ``position_rates`` are the acceptance rates at
draft positions 1..G and whose ``cost_ratio`` is the measured draft step over
target step, or a plain JSON list of rates. The plan is
:func:`sdsl_jax.planning.positions.plan_lookahead`: the best integer
lookahead in 0..G under the measured rates, printed beside the i.i.d. law's
answer for one alpha (the file's ``acceptance``, or for a plain list the
value the pooled estimate tends to under the rates).
"""

from __future__ import annotations

import json
import math
import sys

from sdsl_jax.cli.options import UsageError

FILE_HELP = ("JSON from `sdsl measure --json` or `--summary` (its position_rates and cost_ratio), "
             "or a plain JSON list of acceptance rates at draft positions 1, 2, ...")


def _read(path: str):
    """(rates, acceptance or None, cost ratio or None, label) from FILE."""
    from sdsl_jax.common.tables import InputFileError, read_text
    prog = "sdsl plan: --position-rates"
    try:
        # UTF-8 with or without a byte-order mark; a folder, a missing, Latin-1,
        # UTF-16 or binary file is one line naming it.
        text = read_text(path)
    except InputFileError as err:
        raise UsageError(f"{prog}: {err}") from None
    try:
        content = json.loads(text)
    except RecursionError:
        raise UsageError(f"{prog}: {path} nests its JSON too deeply to read; give the output "
                         "of `sdsl measure --json` or a list of rates") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{prog}: {path} is not one JSON value ({err.msg} at line "
                         f"{err.lineno}, column {err.colno}); give the output of `sdsl measure "
                         "--json` or a list of rates") from None
    acceptance = cost_ratio = None
    label = path
    if isinstance(content, dict):
        if "position_rates" not in content:
            raise UsageError(f"{prog}: {path} has no 'position_rates' (measure a loop run with "
                             "`sdsl measure --json`; teacher-forced rows have no positions)")
        rates = content["position_rates"]
        acceptance = content.get("acceptance")
        cost_ratio = content.get("cost_ratio")
        # Checked here, where the file can be named: the planner takes them as they are.
        if acceptance is not None and not _is_number(acceptance, 0, 1):
            raise UsageError(f"{prog}: {path}: acceptance must be a number in [0, 1] or null, "
                             f"got {acceptance!r}")
        if cost_ratio is not None and not (_is_number(cost_ratio, 0, math.inf) and cost_ratio > 0):
            raise UsageError(f"{prog}: {path}: cost_ratio must be a finite number > 0 or null, "
                             f"got {cost_ratio!r}")
        if content.get("draft_model") and content.get("target_model"):
            label = f"{path}: {content['draft_model']} -> {content['target_model']}"
            if content.get("lookahead"):
                label += f", lookahead {content['lookahead']}"
    elif isinstance(content, list):
        rates = content
    else:
        raise UsageError(f"{prog}: {path} holds a JSON {type(content).__name__}; expected an "
                         "object from `sdsl measure --json` or a list of rates")
    if not isinstance(rates, list) or not rates:
        raise UsageError(f"{prog}: {path}: the rates must be a non-empty list")
    # A position never reached has no rate (null): plan over the positions before it.
    usable = []
    for i, rate in enumerate(rates, 1):
        if rate is None:
            if any(later is not None for later in rates[i:]):
                # A position is reached only through every position before it.
                raise UsageError(f"{prog}: {path}: draft position {i} has no rate but a later "
                                 "one has; a position never reached has none after it either")
            break
        if not _is_number(rate, 0, 1):
            raise UsageError(f"{prog}: {path}: the rate at draft position {i} must be a number "
                             f"in [0, 1], got {rate!r}")
        usable.append(float(rate))
    if not usable:
        raise UsageError(f"{prog}: {path}: no draft position has a rate (none was reached)")
    if len(usable) < len(rates):
        print(f"note: draft positions {len(usable) + 1}..{len(rates)} were never reached; "
              f"planning over 1..{len(usable)}", file=sys.stderr)
    return usable, acceptance, cost_ratio, label


def _is_number(value, low: float, high: float) -> bool:
    """A finite JSON number (not true/false) in [low, high]."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and low <= value <= high)


def run(args) -> int:
    """``sdsl plan --position-rates FILE [--cost-ratio C] [--json]``."""
    from sdsl_jax.planning import positions as position_plan

    given = [flag for flag, value in (
        ("--target-params", args.target_params), ("--target-tokens", args.target_tokens),
        ("--draft-tokens", args.draft_tokens), ("--csv", args.csv), ("--laws", args.laws),
        ("--hardware", args.hardware)) if value]
    if given:
        raise UsageError(f"sdsl plan: --position-rates plans the lookahead of a measured pair; "
                         f"drop {', '.join(given)}")
    rates, acceptance, measured_c, label = _read(args.position_rates)
    if args.cost_ratio is not None:
        cost_ratio, source = args.cost_ratio, "--cost-ratio"
    elif measured_c is not None:
        cost_ratio, source = measured_c, f"measured, from {args.position_rates}"
    else:
        raise UsageError("sdsl plan: --position-rates: give --cost-ratio C (a draft step over a "
                         "target step, or N/M under the FLOP model); the file records none")
    if not (isinstance(cost_ratio, (int, float)) and math.isfinite(cost_ratio) and cost_ratio > 0):
        raise UsageError(f"sdsl plan: argument --cost-ratio: must be a finite number > 0, got "
                         f"{cost_ratio!r}")
    if acceptance is None:
        acceptance = position_plan.implied_acceptance(rates)
        alpha_source = "accepted / judged drafts these rates imply"
    else:
        alpha_source = "the pooled estimate, accepted / judged drafts"

    plan = position_plan.plan_lookahead(rates, cost_ratio, acceptance)
    # The JSON's keys in the order scripts have read them: the measured plan, then the i.i.d. one.
    record = {"position_rates": rates, "cost_ratio": float(cost_ratio), "cost_ratio_source": source}
    record.update((key, plan[key]) for key in ("lookahead", "speedup", "expected_tokens",
                                               "at_bound", "speedups"))
    record.update(iid_acceptance=float(acceptance), iid_acceptance_source=alpha_source)
    record.update((key, plan[key]) for key in ("iid_lookahead", "iid_speedup",
                                               "iid_expected_tokens",
                                               "iid_lookahead_measured_speedup"))
    gamma, iid_gamma = record["lookahead"], record["iid_lookahead"]
    if args.json:
        print(json.dumps(record))
        return 0
    print(f"Measured acceptance by draft position ({label}):")
    print("  " + "  ".join(f"{i}: {v:.4f}" for i, v in enumerate(rates, 1)))
    print(f"cost ratio c = {cost_ratio:.4g} ({source})\n")
    iid = f"i.i.d. law, alpha = {acceptance:.4f}"
    rows = [("", "measured rates", iid),
            ("optimal lookahead", f"{gamma}" + (" (the last measured)" if record["at_bound"]
                                                 else ""), f"{iid_gamma:.0f}"),
            ("tokens per iteration", f"{record['expected_tokens']:.3f}",
             f"{record['iid_expected_tokens']:.3f}"),
            ("speedup", f"{record['speedup']:.3f}x", f"{record['iid_speedup']:.3f}x")]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, a, b in rows:
        print(f"  {name:<{widths[0]}}  {a:<{widths[1]}}  {b}")
    measured = record["iid_lookahead_measured_speedup"]
    print(f"\n  alpha: {alpha_source}; speedup = E / (gamma c + 1), E = 1 + sum_k prod_(i<=k) r_i")
    if measured is not None and int(iid_gamma) != gamma:
        print(f"  at the i.i.d. law's lookahead {iid_gamma:.0f} the measured rates give "
              f"{measured:.3f}x")
    if gamma == 0:
        print("  no lookahead pays at this cost ratio: decode with the target alone")
    elif record["at_bound"]:
        print(f"  the best lookahead is the longest measured ({gamma}): measure at a longer "
              "lookahead to see whether more pays")
    return 0
