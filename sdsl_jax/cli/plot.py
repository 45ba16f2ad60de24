"""``sdsl plot NAME``: the paper's figures, each written as STEM.png and STEM.pdf.

:func:`add_parser` declares the figures and their arguments and :func:`run`
draws (the figures are :mod:`sdsl_jax.plots`). matplotlib, and the figure
modules' heavier work, load only when a figure is drawn, so other commands
do not pay for them.
"""

from __future__ import annotations

import argparse
import math
import sys

from sdsl_jax.cli.options import (UsageError, check_confidence, check_seed, count,
                                  load_laws_file, read_measurement_set)
from sdsl_jax.cli.outputs import check_output_file

FIGURES = ("plane", "throughput", "acceptance", "latency", "draft-size", "positions")
# Bounds that keep a figure drawable: a 100,000-dpi PNG or a curve of 1e11
# points exhausts memory long before it shows more.
MIN_DPI, MAX_DPI = 10, 2400
MAX_POINTS = 10_000
MAX_RESAMPLES = 100_000


def _latency_columns_help() -> str:
    from sdsl_jax.plots import latency
    doc = latency.__doc__
    return doc[doc.index("A latency table is"):].rstrip()


def add_parser(commands) -> None:
    """Register ``plot`` and its figures on the ``sdsl`` subcommands."""
    from sdsl_jax.laws import acceptance, pretraining

    plot = commands.add_parser("plot", help="draw the paper's figures (PNG and PDF)", description=(
        "Draw one of the speculative decoding scaling-law figures and write it as STEM.png and "
        "STEM.pdf. Numbers accept suffixes: 70e9, 70B, 15T, 125M."))
    figures = plot.add_subparsers(dest="figure", required=True, metavar="NAME",
                                  parser_class=type(plot))

    def common(cmd, name, laws=True, intervals=True):
        cmd.add_argument("--out", metavar="STEM", default=name, help=(
            "write STEM.png and STEM.pdf (a .png or .pdf suffix is dropped; default: %(default)s)"))
        cmd.add_argument("--overwrite", action="store_true",
                         help="replace STEM.png and STEM.pdf if they exist")
        cmd.add_argument("--dpi", type=int, default=150, help="PNG resolution (default: %(default)s)")
        cmd.add_argument("--title", help="replace the figure's title")
        if not laws:
            return
        cmd.add_argument("--laws", metavar="FILE", help=(
            "laws fitted by `sdsl fit` (replaces the presets)" + (
                "; their covariance or bootstrap samples give the figure its uncertainty bands"
                if intervals else "")))
        cmd.add_argument("--pretraining-law", default=None, choices=sorted(pretraining.PRESETS),
                         help=f"preset for L(N, D) (default: {pretraining.DEFAULT_PRESET})")
        cmd.add_argument("--acceptance-law", default=None, choices=sorted(acceptance.PRESETS),
                         help=f"preset for alpha = A x + B y + C (default: {acceptance.DEFAULT_PRESET})")
        cmd.add_argument("--method", default="bracket", choices=("bracket", "gradient"),
                         help="N* solver (default: %(default)s)")
        if intervals:
            cmd.add_argument("--interval", default="auto", choices=("auto", "bootstrap", "delta", "none"),
                             help=("band method with --laws: auto takes the bootstrap when the file "
                                   "has samples, else the delta method (default: %(default)s)"))
            cmd.add_argument("--confidence", type=float, default=0.95,
                             help="band level (default: %(default)s)")

    def range_arg(cmd, flag, default, what):
        cmd.add_argument(flag, type=count, nargs=2, default=default, metavar=("LOW", "HIGH"),
                         help=f"{what} (default: %(default)s)")

    plane = figures.add_parser("plane", help="the acceptance plane over measured points", description=(
        "The acceptance plane alpha = A x + B y + C over measured (draft perplexity x, target "
        "perplexity y, acceptance) points: a 3D view with each point's residual, and measured "
        "against predicted acceptance. The plane is fitted to MEASUREMENTS unless --laws or "
        "--acceptance-law gives one."))
    plane.add_argument("measurements", metavar="MEASUREMENTS",
                       help="a measurement set (.csv, .jsonl or .parquet; the format of `sdsl fit`)")
    plane.add_argument("--weighting", choices=("auto", "interval", "equal"), default="auto",
                       help="weights of the plane fit, as in `sdsl fit` (default: %(default)s)")
    common(plane, "plane", intervals=False)

    throughput = figures.add_parser("throughput", help="predicted speedup against draft size, N* marked",
                                    description=(
        "Predicted speedup (or tokens per FLOP) against the draft size N, one curve per target, "
        "with the planner's throughput-optimal N* marked on each."))
    throughput.add_argument("--target-params", type=count, nargs="+", default=[7e9, 13e9, 70e9],
                            metavar="M", help="target sizes, one curve each (default: 7B 13B 70B)")
    throughput.add_argument("--target-tokens", type=count, nargs="+", default=[2e12], metavar="D'",
                            help="target training tokens: one, or one per target (default: 2T)")
    throughput.add_argument("--draft-tokens", type=count, nargs="+", metavar="D",
                            help="draft training tokens: one, or one per target (default: D')")
    throughput.add_argument("--metric", choices=("speedup", "tokens-per-flop"), default="speedup",
                            help="the y axis (default: %(default)s)")
    throughput.add_argument("--draft-range", type=count, nargs=2, metavar=("LOW", "HIGH"),
                            help="draft sizes to draw (default: 1/30 to 30 times every N*)")
    throughput.add_argument("--points", type=int, default=200, help="draft sizes per curve (default: 200)")
    common(throughput, "throughput")

    accept = figures.add_parser("acceptance", help="acceptance against draft perplexity, per target",
                                description=(
        "Acceptance against draft perplexity with one line per target. With MEASUREMENTS: the "
        "measured points with 95% intervals and each target's least-squares line (and, with "
        "--laws or --acceptance-law, the plane's line dashed). Without: the laws' line for each "
        "--target-params at its predicted perplexity."))
    accept.add_argument("measurements", metavar="MEASUREMENTS", nargs="?",
                        help="a measurement set (.csv, .jsonl or .parquet), optional")
    # No defaults here: each option belongs to one of the two forms, and one
    # given to the other is refused (_acceptance fills the defaults in).
    accept.add_argument("--target-params", type=count, nargs="+", metavar="M",
                        help="without MEASUREMENTS: target sizes (default: 7B 13B 70B)")
    accept.add_argument("--target-tokens", type=count, nargs="+", metavar="D'",
                        help="without MEASUREMENTS: target training tokens, one or one per target "
                             "(default: 2T)")
    accept.add_argument("--draft-perplexity", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="without MEASUREMENTS: the x range (default: 8 40)")
    accept.add_argument("--weighting", choices=("auto", "interval", "equal"),
                        help="with MEASUREMENTS: weights of the per-target fits, as in `sdsl fit` "
                             "(default: auto)")
    common(accept, "acceptance")

    latency = figures.add_parser(
        "latency", help="measured TTFT, TPOT and TTOT against |N - N*| / M",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=(
            "Measured latency (time to first token, time per output token, total time) of each "
            "draft against its distance from the predicted optimum, |N - N*| / M, with 95% "
            "interval bars. N* comes from the table's optimal_draft_params column, or is "
            "predicted with the laws (--laws or the presets).\n\n" + _latency_columns_help()))
    latency.add_argument("table", metavar="LATENCY", help="a latency table (.csv, .jsonl or .parquet)")
    latency.add_argument("--draft-tokens", type=count, metavar="D",
                         help="one D for every row, instead of the draft_tokens column")
    common(latency, "latency", intervals=False)

    size = figures.add_parser("draft-size", help="N* and N*/M against M, D and D'", description=(
        "The throughput-optimal draft size N* (top) and N*/M (bottom) as the target size M, the "
        "draft's training tokens D and the target's D' each vary while the other two stay at "
        "the base configuration."))
    size.add_argument("--target-params", type=count, default=70e9, metavar="M",
                      help="base target size (default: 70B)")
    size.add_argument("--target-tokens", type=count, default=15e12, metavar="D'",
                      help="base target training tokens (default: 15T)")
    size.add_argument("--draft-tokens", type=count, metavar="D",
                      help="base draft training tokens (default: D')")
    range_arg(size, "--target-params-range", [1e9, 3e11], "the range of M")
    range_arg(size, "--draft-tokens-range", [1e10, 1e14], "the range of D")
    range_arg(size, "--target-tokens-range", [1e10, 1e14], "the range of D'")
    size.add_argument("--points", type=int, default=40, help="points per sweep (default: 40)")
    size.add_argument("--no-rule", action="store_true", help="leave out the paper's linear rule")
    common(size, "draft-size")

    positions = figures.add_parser(
        "positions", help="acceptance by draft position against the i.i.d. model",
        description=(
            "The acceptance rate at each draft position 1..gamma of `sdsl measure` runs, with "
            "bootstrap intervals over prompts, against the i.i.d. (truncated geometric) model "
            "the throughput law assumes, and the distribution of accepted drafts per iteration "
            "with the model's goodness-of-fit test. Give several runs files (e.g. lookahead 2, "
            "4, 8 of one pair) to draw them side by side."))
    positions.add_argument("runs", metavar="RUNS.jsonl", nargs="+",
                           help="runs files written by `sdsl measure --out`")
    positions.add_argument("--confidence", type=float, default=0.95,
                           help="interval level (default: %(default)s)")
    positions.add_argument("--bootstrap", type=int, default=1000, metavar="R",
                           help="bootstrap resamples of prompts (default: %(default)s)")
    positions.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    common(positions, "positions", laws=False)


def _laws(args):
    """(FittedLaws, description) from --laws or the presets."""
    from sdsl_jax.laws import acceptance, pretraining
    from sdsl_jax.plots import bands

    if args.laws:
        if args.pretraining_law or args.acceptance_law:
            raise UsageError(f"sdsl plot {args.figure}: --laws replaces the presets; "
                             "drop --pretraining-law/--acceptance-law")
        return (load_laws_file(f"sdsl plot {args.figure}", args.laws),
                f"the laws fitted in {args.laws}")
    pre = args.pretraining_law or pretraining.DEFAULT_PRESET
    acc = args.acceptance_law or acceptance.DEFAULT_PRESET
    return bands.preset_laws(pre, acc), f"the published laws ({pre}, {acc})"


def _plane(args):
    from sdsl_jax.plots.acceptance_plane import plot_acceptance_plane
    measurements = read_measurement_set(args.measurements)
    law, source = None, None
    if args.laws or args.acceptance_law:
        laws, source = _laws(args)
        law = laws.acceptance_law
    return plot_acceptance_plane(measurements, law, law_source=source, weighting=args.weighting,
                                 title=args.title)


def _throughput(args):
    import numpy as np
    from sdsl_jax.plots.throughput_curves import plot_throughput
    laws, source = _laws(args)
    grid = None
    if args.draft_range:
        grid = np.geomspace(*args.draft_range, args.points)
    return plot_throughput(laws, args.target_params, args.target_tokens, args.draft_tokens,
                           draft_params=grid, metric=args.metric, interval=args.interval,
                           confidence=args.confidence, method=args.method, points=args.points,
                           laws_source=source, title=args.title)


def _acceptance(args):
    from sdsl_jax.plots.acceptance_curves import plot_acceptance
    only_laws = [flag for flag, value in (("--target-params", args.target_params),
                                          ("--target-tokens", args.target_tokens),
                                          ("--draft-perplexity", args.draft_perplexity))
                 if value is not None]
    if args.measurements and only_laws:
        raise UsageError(f"sdsl plot acceptance: {', '.join(only_laws)} draw the laws' lines "
                         "without MEASUREMENTS; drop them or the measurements file")
    if not args.measurements and args.weighting is not None:
        raise UsageError("sdsl plot acceptance: --weighting weights the fits to MEASUREMENTS; "
                         "give a measurements file or drop it")
    args.target_params = args.target_params or [7e9, 13e9, 70e9]
    args.target_tokens = args.target_tokens or [2e12]
    args.draft_perplexity = args.draft_perplexity or [8.0, 40.0]
    args.weighting = args.weighting or "auto"
    if args.measurements:
        measurements = read_measurement_set(args.measurements)
        laws, source = _laws(args) if (args.laws or args.acceptance_law) else (None, None)
        return plot_acceptance(measurements, laws, weighting=args.weighting, laws_source=source,
                               title=args.title)
    laws, source = _laws(args)
    tokens = args.target_tokens
    if len(tokens) not in (1, len(args.target_params)):
        raise UsageError(f"sdsl plot acceptance: argument --target-tokens: give one value or one per "
                         f"target ({len(args.target_params)}), got {len(tokens)}")
    return plot_acceptance(None, laws, target_params=args.target_params,
                           target_tokens=tokens if len(tokens) > 1 else tokens[0],
                           draft_perplexity_range=args.draft_perplexity, interval=args.interval,
                           confidence=args.confidence, laws_source=source, title=args.title)


def _latency(args):
    from sdsl_jax.plots.latency import LatencyError, plot_latency, read_latency
    try:
        table = read_latency(args.table)
    except LatencyError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"{args.table}: cannot read ({err.strerror})") from None
    laws, source = _laws(args)
    try:
        return plot_latency(table, laws, draft_tokens=args.draft_tokens, method=args.method,
                            laws_source=source, title=args.title)
    except LatencyError as err:
        raise UsageError(str(err)) from None


def _draft_size(args):
    from sdsl_jax.plots.draft_size import plot_draft_size
    laws, source = _laws(args)
    return plot_draft_size(laws, target_params=args.target_params, target_tokens=args.target_tokens,
                           draft_tokens=args.draft_tokens, target_params_range=args.target_params_range,
                           draft_tokens_range=args.draft_tokens_range,
                           target_tokens_range=args.target_tokens_range, points=args.points,
                           interval=args.interval, confidence=args.confidence, method=args.method,
                           show_rule=not args.no_rule, laws_source=source, title=args.title)


def _positions(args):
    import jax
    from sdsl_jax.plots.positions import RunsError, plot_positions, read_runs
    if args.bootstrap < 2:
        raise UsageError(f"sdsl plot positions: argument --bootstrap: must be at least 2, "
                         f"got {args.bootstrap}")
    runs = []
    for path in args.runs:
        try:
            runs.append(read_runs(path))
        except RunsError as err:
            raise UsageError(str(err)) from None
        except OSError as err:
            raise UsageError(f"{path}: cannot read ({err.strerror})") from None
    # The runs' counts are small integers: float32 is exact enough, as in `sdsl measure`.
    with jax.enable_x64(False):
        return plot_positions(runs, confidence=args.confidence, num_resamples=args.bootstrap,
                              seed=args.seed, title=args.title)


def _check_numbers(prog: str, args) -> None:
    """Sizes of at least one parameter or token, perplexities of at least 1, ranges LOW < HIGH."""
    for flag in ("target_params", "target_tokens", "draft_tokens"):
        values = getattr(args, flag, None)
        for value in ([] if values is None else values if isinstance(values, list) else [values]):
            if not value >= 1:
                raise UsageError(f"{prog}: argument --{flag.replace('_', '-')}: must be at least "
                                 f"1, got {value:g}")
    for flag, minimum, what in (("draft_range", 1, "sizes"), ("target_params_range", 1, "sizes"),
                                ("draft_tokens_range", 1, "token counts"),
                                ("target_tokens_range", 1, "token counts"),
                                ("draft_perplexity", 1, "perplexities (exp of a loss)")):
        pair = getattr(args, flag, None)
        if pair is None:
            continue
        name = "--" + flag.replace("_", "-")
        low, high = pair
        if not (math.isfinite(low) and math.isfinite(high) and minimum <= low < high):
            raise UsageError(f"{prog}: argument {name}: {what} need {minimum} <= LOW < HIGH, "
                             f"both finite; got {low:g} {high:g}")
    if getattr(args, "seed", None) is not None:
        check_seed(prog, args.seed)
    if getattr(args, "bootstrap", None) is not None and args.bootstrap > MAX_RESAMPLES:
        raise UsageError(f"{prog}: argument --bootstrap: must be at most {MAX_RESAMPLES:,}, "
                         f"got {args.bootstrap}")


_DRAW = {"plane": _plane, "throughput": _throughput, "acceptance": _acceptance,
         "latency": _latency, "draft-size": _draft_size, "positions": _positions}


def run(args) -> int:
    """The ``sdsl plot`` command: draw args.figure and write STEM.png and STEM.pdf."""
    from sdsl_jax.plots import style

    prog = f"sdsl plot {args.figure}"
    if not MIN_DPI <= args.dpi <= MAX_DPI:
        raise UsageError(f"{prog}: argument --dpi: must lie in [{MIN_DPI}, {MAX_DPI}], "
                         f"got {args.dpi}")
    check_confidence(prog, getattr(args, "confidence", 0.5))
    points = getattr(args, "points", None)
    if points is not None and not 2 <= points <= MAX_POINTS:
        raise UsageError(f"{prog}: argument --points: must lie in [2, {MAX_POINTS}], "
                         f"got {points}")
    _check_numbers(prog, args)
    if not args.out or args.out.endswith(("/", "\\")) or style.output_stem(args.out).name == "":
        raise UsageError(f"{prog}: argument --out: give a file stem such as figures/throughput, "
                         f"got {args.out!r}")
    stem = style.output_stem(args.out)
    inputs = [getattr(args, name, None) for name in ("measurements", "table", "laws")]
    inputs += getattr(args, "runs", None) or []
    # Refused before anything is drawn, so no earlier figure is lost.
    for path in style.output_paths(stem):
        check_output_file(prog, "--out", str(path), inputs=inputs, overwrite=args.overwrite)
    try:
        fig = _DRAW[args.figure](args)
    except ValueError as err:
        raise UsageError(f"{prog}: {err}") from None
    try:
        paths = style.save(fig, stem, dpi=args.dpi)
    except OSError as err:
        raise UsageError(f"{prog}: cannot write {stem}.png/.pdf ({err.strerror or err})") from None
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stdout)
    return 0
