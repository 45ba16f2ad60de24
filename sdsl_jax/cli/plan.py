"""``sdsl plan``: the throughput-optimal draft size N* for a target, and what it implies.

This module declares the options, plans one configuration (with an
interval on N* under fitted laws) and prints it. The other modes live
beside it: many configurations from a CSV (:mod:`sdsl_jax.cli.plan_csv`),
the wall-clock plan on an accelerator (:mod:`sdsl_jax.cli.plan_hardware`,
``--hardware``) and the lookahead from measured per-position rates
(:mod:`sdsl_jax.cli.plan_positions`, ``--position-rates``).
"""

from __future__ import annotations

import json

from sdsl_jax.cli.options import (UsageError, add_law_presets, check_confidence, count,
                                  fitted_laws, planner_laws)
from sdsl_jax.cli.plan_positions import FILE_HELP

PLAN_KEYS = ("draft_params", "cost_ratio", "draft_perplexity", "target_perplexity",
             "acceptance", "lookahead", "integer_lookahead", "speedup", "integer_speedup",
             "tokens_per_flop", "integer_tokens_per_flop", "pays", "extrapolated", "at_bound")
INPUT_KEYS = ("target_params", "target_tokens", "draft_tokens")
SIZE_UNITS = {"target_params": "parameter", "target_tokens": "token", "draft_tokens": "token"}


def check_sizes(prog: str, where, target_params, target_tokens, draft_tokens=None) -> None:
    """Refuse a size below one parameter or one token, or one that is not finite.

    ``where`` says where the values came from: None for the options (the
    message names --target-params, ...); a string such as ``"configs.csv,
    row 3"`` for one row of a file (it names the column after it); for
    arrays of many rows, a function of the first bad row's index that
    returns that string. A None size (no --draft-tokens) is skipped.
    Raises UsageError with one line.
    """
    import numpy as np
    for key, value in (("target_params", target_params), ("target_tokens", target_tokens),
                       ("draft_tokens", draft_tokens)):
        if value is None:
            continue
        values = np.ravel(np.asarray(value, np.float64))
        # NaN fails both comparisons, so it is caught here too.
        bad = np.flatnonzero(~(np.isfinite(values) & (values >= 1)))
        if bad.size == 0:
            continue
        got = values[bad[0]]
        if where is None:
            place = f"argument --{key.replace('_', '-')}"
        else:
            place = f"{where(int(bad[0])) if callable(where) else where}, column {key}"
        unit = SIZE_UNITS[key]
        problem = (f"must be at least 1 ({unit}s are counted in whole {unit}s)"
                   if np.isfinite(got) else "must be a finite number")
        raise UsageError(f"{prog}: {place}: {problem}, got {got:g}")


def add_parser(commands) -> None:
    """Register ``plan`` on the ``sdsl`` subcommands."""
    plan = commands.add_parser("plan", help="the throughput-optimal draft size for a target",
                               description=(
        "Predict the throughput-optimal draft size N* for a target model, with the "
        "acceptance, lookahead and speedup it implies. Numbers accept suffixes: "
        "70e9, 70B, 15T, 125M."))
    _add_arguments(plan)


def _add_arguments(plan) -> None:
    """The arguments of ``sdsl plan``."""
    plan.add_argument("--target-params", type=count, metavar="M", help="target parameters, e.g. 70B")
    plan.add_argument("--target-tokens", type=count, metavar="D'",
                      help="tokens the target was trained on, e.g. 15T")
    plan.add_argument("--draft-tokens", type=count, metavar="D",
                      help="tokens the draft is trained on (default: the target's)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument("--csv", metavar="FILE", help=(
        "plan many configurations: a CSV with columns target_params, target_tokens and "
        "optionally draft_tokens"))
    plan.add_argument("--out", metavar="FILE", help="with --csv: write results here (default: stdout)")
    plan.add_argument("--resume", action="store_true",
                      help="with --out: keep the rows already written and continue after them")
    plan.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    plan.add_argument("--laws", metavar="FILE", help=(
        "use laws fitted by `sdsl fit` (replaces the presets) and report an interval on N*"))
    plan.add_argument("--interval", choices=("delta", "bootstrap", "none"), default=None, help=(
        "with --laws: how to carry the coefficients' uncertainty to N* (default: delta, whose "
        "coverage is checked, for a covariance clustered by model; for an older laws file the "
        "bootstrap when it has samples)"))
    plan.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    wall = plan.add_argument_group("wall-clock planning (with --hardware)")
    wall.add_argument("--hardware", metavar="NAME", help=(
        "also find the draft size that maximises tokens per second on this accelerator "
        "(A100, H100, H200, TPU-v5e, CPU) and print it beside the FLOP-optimal one"))
    # Their defaults are filled in by plan_hardware.check_options, so that one
    # given without --hardware is refused instead of ignored.
    wall.add_argument("--batch", type=float, help="sequences decoded together, 1 to 65536 (default: 1)")
    wall.add_argument("--context", type=count, metavar="S", help=(
        "cached positions each sequence attends to (default: 2048)"))
    wall.add_argument("--draft-precision", help="draft weights: bf16, fp8, int4, ... (default: bf16)")
    wall.add_argument("--target-precision", help="target weights (default: bf16)")
    wall.add_argument("--kv-fraction", type=float, help=(
        "key-value heads over query heads, in (0, 1], e.g. 0.125 for 8 of 64 (default: 1)"))
    wall.add_argument("--verify", choices=("scored", "one_step"), help=(
        "cost the verification as gamma+1 scored positions, or as one target step like the "
        "FLOP law (default: scored)"))
    wall.add_argument("--step-times", metavar="FILE", help=(
        "calibrate the preset's efficiencies and overhead to measured step times first "
        "(JSON Lines, e.g. from `sdsl measure`)"))
    measured = plan.add_argument_group("the lookahead from measured per-position rates")
    measured.add_argument("--position-rates", metavar="FILE", help=(
        "plan the lookahead of a measured pair from its acceptance at each draft position "
        "instead of one alpha: " + FILE_HELP))
    measured.add_argument("--cost-ratio", type=float, metavar="C", help=(
        "with --position-rates: draft step over target step (default: the file's measured "
        "cost_ratio)"))
    add_law_presets(plan)


def run(args) -> int:
    """The ``sdsl plan`` command: one mode of the four, by the options given."""
    from sdsl_jax.cli import plan_hardware
    plan_hardware.check_options(args)
    if args.position_rates:
        others = [flag for flag, given in (
            ("--csv", args.csv), ("--out", args.out), ("--resume", args.resume),
            ("--overwrite", args.overwrite), ("--laws", args.laws),
            ("--target-params", args.target_params), ("--target-tokens", args.target_tokens),
            ("--draft-tokens", args.draft_tokens)) if given]
        if others:
            raise UsageError(f"sdsl plan: --position-rates plans the lookahead of a measured "
                             f"pair; drop {', '.join(others)}")
        from sdsl_jax.cli import plan_positions
        return plan_positions.run(args)
    if args.cost_ratio is not None:
        raise UsageError("sdsl plan: --cost-ratio goes with --position-rates")
    if args.csv:
        if args.target_params or args.target_tokens:
            raise UsageError("sdsl plan: --csv takes the configurations from the file; "
                             "drop --target-params/--target-tokens")
        if args.hardware:
            raise UsageError("sdsl plan: --hardware plans one configuration at a time; drop --csv")
        from sdsl_jax.cli import plan_csv
        return plan_csv.run(args)
    if args.out or args.resume or args.overwrite:
        raise UsageError("sdsl plan: --out, --resume and --overwrite go with --csv")
    for flag, value in (("--target-params", args.target_params), ("--target-tokens", args.target_tokens)):
        if value is None:
            raise UsageError(f"sdsl plan: argument {flag} is required (or give --csv FILE)")
    check_sizes("sdsl plan", None, args.target_params, args.target_tokens, args.draft_tokens)
    check_confidence("sdsl plan", args.confidence)
    from sdsl_jax.planning import flop as planner
    draft_tokens = args.draft_tokens if args.draft_tokens else args.target_tokens
    inputs = dict(target_params=args.target_params, target_tokens=args.target_tokens,
                  draft_tokens=draft_tokens)
    laws = planner_laws(args)
    # Every file is read (and --step-times fitted) before anything is planned.
    setup = plan_hardware.prepare(args) if args.hardware else None
    interval_kind = _interval_kind(args)
    plan = planner.optimal_draft_size(args.target_params, draft_tokens, args.target_tokens, **laws)
    record = plan_records(plan, inputs)[0]
    record.update(_draft_interval(args, draft_tokens, interval_kind))
    if args.hardware:
        record.update(plan_hardware.wallclock_plan(args, record, laws, setup))
    if args.json:
        if args.laws:
            record.update(laws=args.laws)
        else:
            record.update(pretraining_law=args.pretraining_law, acceptance_law=args.acceptance_law)
        print(json.dumps(record))
    else:
        _print_plan(record, args)
        if args.hardware:
            plan_hardware.print_wallclock(record)
    return 0


def plan_records(plan, inputs) -> list[dict]:
    """One record per configuration of a DraftPlan: the inputs, then :data:`PLAN_KEYS`."""
    import numpy as np
    from sdsl_jax.common.validation import finite_or_none
    columns = {key: np.ravel(np.asarray(getattr(plan, key))) for key in PLAN_KEYS}
    n = len(columns["draft_params"])
    records = []
    for i in range(n):
        record = {key: float(np.ravel(inputs[key])[i]) for key in INPUT_KEYS}
        for key in PLAN_KEYS:
            value = columns[key][i]
            record[key] = bool(value) if value.dtype == bool else finite_or_none(value)
        records.append(record)
    return records


def _interval_kind(args) -> str:
    """The interval on N* to report: "delta", "bootstrap" or "none" (checked against the laws)."""
    fitted = fitted_laws(args)
    if fitted is None:
        if args.interval not in (None, "none"):
            raise UsageError("sdsl plan: --interval needs --laws FILE (presets carry no uncertainty)")
        return "none"
    from sdsl_jax.fitting.laws import default_interval
    interval = args.interval or default_interval(fitted) or "none"
    undetermined = _undetermined(args.laws)
    why = "" if not undetermined else (
        f" (its fit left {', '.join(undetermined)} undetermined: "
        f"{'; '.join(sorted(set(undetermined.values())))})")
    if interval == "bootstrap" and fitted.samples is None:
        raise UsageError(f"sdsl plan: argument --interval bootstrap: {args.laws} has no bootstrap "
                         f"samples{why or ' (refit with `sdsl fit --bootstrap N`)'}")
    if interval == "delta" and fitted.covariance is None:
        raise UsageError(f"sdsl plan: argument --interval delta: {args.laws} has no covariance{why}")
    return interval


def _undetermined(path) -> dict:
    """Coefficient -> reason, for the coefficients the fit behind a laws file could not
    determine (its summary, as `sdsl fit` writes it); {} for any other file."""
    from sdsl_jax.common.io import read_json
    try:
        found = read_json(path).get("summary", {}).get("end_to_end", {}).get("undetermined", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items()}


def _draft_interval(args, draft_tokens, interval: str) -> dict:
    """N*'s interval under fitted laws ({} without --laws or with --interval none); where
    the laws file carries no uncertainty because its fit left coefficients undetermined,
    {"undetermined": {coefficient: reason}} instead, which the table prints as a note."""
    if fitted_laws(args) is None:
        return {}
    if interval == "none":
        undetermined = _undetermined(args.laws) if args.interval is None else {}
        return {"undetermined": undetermined} if undetermined else {}
    fitted = fitted_laws(args)
    from sdsl_jax.fitting.uncertainty import draft_size_interval
    result = draft_size_interval(fitted, args.target_params, draft_tokens, args.target_tokens,
                                 interval=interval, confidence=args.confidence, method=args.method)
    return dict(draft_params_low=float(result.low), draft_params_high=float(result.high),
                interval=interval, confidence=args.confidence,
                pays_fraction=float(result.pays_fraction))


def _laws_label(args) -> str:
    if getattr(args, "laws", None):
        return f"fitted, from {args.laws}"
    return f"pre-training {args.pretraining_law}, acceptance {args.acceptance_law}"


def _print_plan(record: dict, args) -> None:
    from sdsl_jax.planning.linear_rule import PUBLISHED_INTERCEPT, PUBLISHED_SLOPE
    from sdsl_jax.common.quantities import format_count as fc
    m = record["target_params"]
    print(f"Target: {fc(m)} parameters trained on {fc(record['target_tokens'])} tokens; "
          f"draft trained on {fc(record['draft_tokens'])} tokens")
    print(f"Laws: {_laws_label(args)}")
    print()
    if not record["pays"]:
        print("  Speculative decoding does not pay for this target under these laws:")
        print("  no draft size gives a speedup above 1. Decode with the target alone.")
        return
    rows = [
        ("optimal draft size N*", f"{fc(record['draft_params'])} parameters "
                                  f"(N*/M = {record['cost_ratio']:.3e})"),
    ]
    if record.get("draft_params_low") is not None:
        rows.append((f"  {record['confidence']:.0%} interval ({record['interval']})",
                     f"{fc(record['draft_params_low'])} to {fc(record['draft_params_high'])}"))
    if record.get("undetermined"):
        rows.append(("  interval", "none: the fit left " + ", ".join(record["undetermined"])
                     + " undetermined"))
    rows += [
        ("draft perplexity", f"{record['draft_perplexity']:.4g}"),
        ("target perplexity", f"{record['target_perplexity']:.4g}"),
        ("acceptance alpha", f"{record['acceptance']:.4f}"),
        ("lookahead, continuous", f"{record['lookahead']:.3f}"),
        ("lookahead, integer", f"{record['integer_lookahead']:.0f}"),
        ("speedup", f"{record['speedup']:.3f}x  (integer lookahead: {record['integer_speedup']:.3f}x)"),
        ("tokens per FLOP", f"{record['tokens_per_flop']:.4g}  (target alone: {1 / (2 * m):.4g})"),
        # published_rule's line in plain floats: through JAX, one number cost
        # three more programs to load.
        ("paper's rule 2.71e-3 M + 87M", f"{fc(PUBLISHED_SLOPE * m + PUBLISHED_INTERCEPT)} parameters"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if record["extrapolated"]:
        print("\nnote: the acceptance law left [0, 1) at N* and was clipped; "
              "the perplexities are outside the range it was fitted on.")
    if record["at_bound"]:
        print("\nnote: N* sits at the end of the searched range N/M in [1e-8, 1].")
    if record.get("undetermined"):
        reasons = "; ".join(f"{k}: {v}" for k, v in record["undetermined"].items())
        print(f"\nnote: {args.laws} carries no covariance or bootstrap samples because its "
              f"measurements do not determine every coefficient ({reasons}); N* is the point "
              "estimate, most reliable near the measured models.")
