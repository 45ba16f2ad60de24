"""``sdsl fit``: fit every law to a measurement set, print the report, write the laws file.

The fits are :func:`sdsl_jax.fitting.report.fit_all`; this module reads the
options, shows the bootstrap's progress, and prints the report as tables or
one JSON object.
"""

from __future__ import annotations

import json
import os
import sys

from sdsl_jax.cli.options import UsageError, check_confidence, check_seed, read_measurement_set
from sdsl_jax.cli.outputs import check_output_file


# Percentile intervals settle to about 1% of their width within a few thousand
# resamples, and every resample is 8 numbers in the laws file (about 200 bytes of
# JSON): beyond 100,000 the run and the file grow without improving the interval.
MAX_BOOTSTRAP = 100_000


def add_parser(commands) -> None:
    """Register ``fit`` on the ``sdsl`` subcommands."""
    fit = commands.add_parser("fit", help="fit the laws to your acceptance measurements",
                              description=(
        "Fit the acceptance plane, the pre-training law and both end to end to a measurement "
        "set (CSV, JSON Lines or Parquet), print the coefficients with intervals, and write "
        "the fitted laws for `sdsl plan --laws`."))
    _add_arguments(fit)


def _add_arguments(fit) -> None:
    """The arguments of ``sdsl fit``."""
    fit.add_argument("measurements", metavar="MEASUREMENTS", help="a .csv, .jsonl or .parquet file")
    fit.add_argument("--out", metavar="FILE", help=(
        "where to write the fitted laws (default: MEASUREMENTS with the suffix .laws.json)"))
    fit.add_argument("--overwrite", action="store_true", help="replace an existing laws file")
    fit.add_argument("--bootstrap", type=int, default=200, metavar="N", help=(
        "bootstrap resamples for percentile intervals, 0 to 100,000 (0: delta method only; "
        "default: %(default)s)"))
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    fit.add_argument("--weighting", choices=("auto", "interval", "equal"), default="auto", help=(
        "weight measurements by their intervals, equally, or by intervals when all have one "
        "(default: %(default)s)"))
    fit.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args) -> int:
    """The ``sdsl fit`` command."""
    from tqdm import tqdm

    from sdsl_jax.fitting import laws as laws_lib
    from sdsl_jax.fitting import report as fit_report

    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"sdsl fit: argument --bootstrap: must lie in [0, {MAX_BOOTSTRAP}], "
                         f"got {args.bootstrap}")
    check_seed("sdsl fit", args.seed)
    check_confidence("sdsl fit", args.confidence)
    try:  # a missing input is the first thing to say, before anything about --out
        open(args.measurements, "rb").close()
    except OSError as err:
        raise UsageError(f"{args.measurements}: cannot read ({err.strerror})") from None
    out = args.out or f"{os.path.splitext(args.measurements)[0]}.laws.json"
    # Before the measurements are read: a refusal after the fit would lose the
    # fit, and --out on the measurements (even with --overwrite) would lose them.
    check_output_file("sdsl fit", "--out", out, inputs=(args.measurements,),
                      overwrite=args.overwrite)
    measurements = read_measurement_set(args.measurements)
    if len(measurements) < 4:
        raise UsageError(f"{args.measurements}: {len(measurements)} measurements cannot determine "
                         "the acceptance plane's 3 coefficients with any error bar; need at least 4")
    try:
        with tqdm(total=args.bootstrap, unit="resample", desc="bootstrap", disable=None,
                  file=sys.stderr) as bar:
            result = fit_report.fit_all(measurements, weighting=args.weighting,
                                        bootstrap=args.bootstrap, seed=args.seed,
                                        confidence=args.confidence, progress=bar.update)
    except ValueError as err:
        # The library names its keyword; the user knows the option.
        message = str(err).replace("weighting='interval'", "--weighting interval")
        raise UsageError(f"sdsl fit: {args.measurements}: {message}") from None
    report = result["report"]
    try:
        laws_lib.save_laws(out, result["laws"], summary=report)
    except OSError as err:
        raise UsageError(f"sdsl fit: cannot write {out} ({err.strerror})") from None
    if args.json:
        print(json.dumps(dict(report, laws_file=out), allow_nan=False))
        note = fit_report.bootstrap_summary(report["end_to_end"])
        if note is not None:
            print(note, file=sys.stderr)
    else:
        _print_report(report, out)
    return 0


def _fmt(value, spec) -> str:
    """``value`` formatted, or n/a where the report has none (None)."""
    return "n/a" if value is None else format(value, spec)


def _undetermined(reason: str) -> str:
    return f"undetermined ({reason})"


def _interval(low, high) -> str:
    if low is None or high is None:
        return "n/a"
    return f"[{low:.4g}, {high:.4g}]"


def _delta_label(e2e) -> str:
    """The delta-method column's heading: which covariance, and the t df where it is t-based."""
    # Short enough for the column: "clustered" = two-way cluster-robust over
    # models, t16 = Student t with 16 degrees of freedom.
    if e2e.get("covariance") == "cluster":
        df = e2e.get("covariance_df")
        return "delta (clustered" + ("" if df is None else f", t{df:g}") + ")"
    if e2e.get("covariance") == "iid":
        return "delta (iid, z)"
    return "delta method"


def _print_report(report, out_path) -> None:
    """The report as tables: the plane, per target, both laws end to end."""
    from sdsl_jax.fitting import report as fit_report
    e2e = report["end_to_end"]
    level = f"{report['confidence']:.0%}"
    print(f"Fitted {report['measurements']} measurements ({report['targets']} targets, "
          f"{report['models']} distinct models) from {report['source']}; "
          f"weights: {report['weighting']}")
    plane = report["acceptance_plane"]
    se = plane["standard_errors"]
    print("\nAcceptance plane on measured perplexities, alpha = A x + B y + C:")
    for name, key, s in (("A (draft)", "draft_coeff", se[0]), ("B (target)", "target_coeff", se[1]),
                         ("C", "intercept", se[2])):
        if key in plane.get("undetermined", {}):
            print(f"  {name:<11} {_undetermined(plane['undetermined'][key])}")
            continue
        print(f"  {name:<11} {_fmt(plane[key], ' .5g')}  +- {_fmt(s, '.2g')} (s.e.)")
    print(f"  R^2 {_fmt(plane['r2'], '.4f')}, rms residual {_fmt(plane['rms_residual'], '.4f')}")
    print("\nPer target, alpha = A_t x + C_t:")
    width = max(len(t["target"]) for t in report["per_target"])
    for t in report["per_target"]:
        if t["draft_coeff"] is None:
            reason = t.get("undetermined", {}).get("draft_coeff", fit_report.ONE_DRAFT)
            print(f"  {t['target']:<{width}}  {t['measurements']:>4} rows  A_t, C_t "
                  f"{_undetermined(reason)}")
            continue
        print(f"  {t['target']:<{width}}  {t['measurements']:>4} rows  A_t {t['draft_coeff']: .5f}  "
              f"C_t {_fmt(t['intercept'], ' .4f')}  R^2 {_fmt(t['r2'], '.3f')}")
    print(f"\nBoth laws end to end (acceptance from N, D, M, D'), {level} intervals:")
    has_boot = e2e["bootstrap_resamples"] > 0
    header = f"  {'coefficient':<17} {'estimate':>11}   {_delta_label(e2e):<25}"
    if has_boot:
        unit = e2e.get("bootstrap_resampling")
        header += f" bootstrap{'' if unit is None else ' over ' + unit} ({e2e['bootstrap_resamples']})"
    print(header)
    undetermined = e2e.get("undetermined", {})
    for name, entry in e2e["coefficients"].items():
        if name in undetermined:
            print(f"  {name:<17} {_undetermined(undetermined[name])}")
            continue
        line = (f"  {name:<17} {entry['estimate']:>11.5g}   "
                f"{_interval(entry['delta_low'], entry['delta_high']):<25}")
        if has_boot:
            line += f" {_interval(entry['bootstrap_low'], entry['bootstrap_high'])}"
        print(line)
    worst = e2e["worst_residual"]
    print(f"  acceptance R^2 {_fmt(e2e['acceptance_r2'], '.4f')} (from sizes alone), loss R^2 "
          f"{_fmt(e2e['loss_r2'], '.4f')}, rms residual {_fmt(e2e['rms_residual'], '.4f')}; worst "
          f"residual {_fmt(worst['residual'], '+.4f')} at row {worst['row']} "
          f"({worst['draft']} -> {worst['target']})")
    note = fit_report.bootstrap_summary(e2e)
    if note is not None:
        print(f"  {note}")
    if e2e.get("covariance") == "cluster":
        print("  delta: covariance clustered by model (a model's deviation from the law is shared "
              "by its rows and its loss point)")
    if undetermined:
        held = " (target_coeff held at 0)" if "target_coeff" in undetermined else ""
        print(f"  note: the data do not determine {', '.join(undetermined)}; the laws file holds "
              f"the values the fit ended at{held} but no covariance or bootstrap samples, so "
              "`sdsl plan --laws` gives N* without an interval")
    if not e2e["converged"]:
        print("  warning: the optimiser stopped before its gradient tolerance; the estimates "
              "may be off in poorly determined directions.")
    print(f"\nWrote the end-to-end laws to {out_path}")
    print(f"Plan with them: sdsl plan --laws {out_path} --target-params 70B --target-tokens 15T")
