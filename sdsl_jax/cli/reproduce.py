"""``sdsl reproduce``: run the end-to-end replication, print its verdict and where the report is.

The replication is :func:`sdsl_jax.reproduce.reproduce`. Importing this
module is cheap (the parser needs it); JAX, flax and the pipeline load only
when a run starts.
"""

from __future__ import annotations

import sys

from sdsl_jax.cli.options import PROGRESS, UsageError, check_corpus
from sdsl_jax.cli.outputs import check_output_folder, check_outside


def add_parser(commands) -> None:
    """Register ``reproduce`` on the ``sdsl`` subcommands."""
    reproduce = commands.add_parser("reproduce", help="the end-to-end replication, with a report",
                                    description=(
        "Train a ladder of drafts and two targets on the offline corpus, fit both laws, measure "
        "every pair, predict N* and check it against measured latency; write DIR/report.md. "
        "Rerun to resume after a kill."))
    _add_arguments(reproduce)


def _add_arguments(parser) -> None:
    """The arguments of ``sdsl reproduce``."""
    parser.add_argument("--preset", default="small", metavar="NAME", help=(
        "small (a CPU, about ten minutes), large (an accelerator) or tiny (seconds; for tests) "
        "(default: %(default)s)"))
    parser.add_argument("--out", required=True, metavar="DIR", help=(
        "run directory: models, measurements, fitted laws, figures and DIR/report.md. Rerun the "
        "same command to resume an interrupted run; finished stages are skipped"))
    parser.add_argument("--corpus", nargs="+", default=[], metavar="PATH", help=(
        "text files or directories added to the corpus (default corpus: the Python standard "
        "library's sources and docs)"))
    parser.add_argument("--no-stdlib", action="store_true",
                        help="leave the standard library out of the corpus (needs --corpus)")
    parser.add_argument("--stop-after", metavar="STAGE", help=(
        "stop after this stage (train, pretraining, measure, acceptance, predict, latency, "
        "report); rerun without it to go on"))
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bars (default: auto, on a terminal only); stage lines "
                             "always go to stderr")


def run(args) -> int:
    """Run ``sdsl reproduce``; mistakes raise :class:`~sdsl_jax.cli.options.UsageError`."""
    check_corpus("sdsl reproduce", args.corpus, args.no_stdlib)
    from sdsl_jax.reproduce import STAGE_NAMES, PresetError, ReproduceError, get_preset, reproduce

    try:
        preset = get_preset(args.preset)
    except PresetError as err:
        raise UsageError(f"sdsl reproduce: argument --preset: {err}") from None
    if args.stop_after is not None and args.stop_after not in STAGE_NAMES:
        raise UsageError(f"sdsl reproduce: argument --stop-after: unknown stage "
                         f"{args.stop_after!r} (stages: {', '.join(STAGE_NAMES)})")
    check_output_folder("sdsl reproduce", "--out", args.out)
    check_outside("sdsl reproduce", "--out", args.out, "--corpus", args.corpus)
    progress = PROGRESS[args.progress]
    try:
        result = reproduce(preset, args.out, corpus_paths=args.corpus,
                           include_stdlib=not args.no_stdlib, progress=progress,
                           stop_after=args.stop_after)
    except (ReproduceError, PresetError) as err:
        raise UsageError(f"sdsl reproduce: {err}") from None
    if result["report"] is None:
        print(f"stopped after {args.stop_after}; rerun without --stop-after to go on "
              f"({args.out})")
        return 0
    _print_verdict(result["report"])
    return 0


def _print_verdict(report_path: str) -> None:
    """The report's verdict section, then where the report is."""
    with open(report_path, encoding="utf-8") as handle:
        text = handle.read()
    start = text.find("## Verdict")
    end = text.find("\n## ", start + 1)
    if start >= 0:
        print(text[start:end if end > 0 else None].strip())
        print()
    print(f"report: {report_path}")
    sys.stdout.flush()
