"""The ``sdsl`` program: one parser with a subcommand per module, dispatch, and how it ends.

Every subcommand module (:mod:`.plan`, :mod:`.fit`, :mod:`.train`,
:mod:`.measure`, :mod:`.rule`, :mod:`.plot`, :mod:`.reproduce`) has
``add_parser(commands)`` and ``run(args) -> int``. Every user mistake ends
in one line on stderr that names the argument (or the file, row and
column) and exit status 2; no traceback reaches the user.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from sdsl_jax.cli import fit, measure, plan, plot, reproduce, rule, train
from sdsl_jax.cli.compilation_cache import enable_compilation_cache, programs_directory
from sdsl_jax.cli.options import EXIT_USAGE, Parser, UsageError

# In the order `sdsl --help` lists them.
COMMANDS = {"plan": plan, "fit": fit, "train": train, "measure": measure, "rule": rule,
            "plot": plot, "reproduce": reproduce}


def build_parser(command: str | None = None) -> Parser:
    """The ``sdsl`` parser with every subcommand, or with only ``command``'s options.

    Given ``command`` (one of :data:`COMMANDS`), the other subcommands are
    registered by name alone: argparse hands everything after the name to that
    one subparser, so the result parses ``sdsl COMMAND ...`` exactly as the full
    parser does, without building the others' options (``sdsl plot``'s import
    the figures and the fits, most of a second).
    """
    parser = Parser(prog="sdsl", description=(
        "Speculative decoding scaling laws: choose a draft model size before training it."))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in COMMANDS.items():
        if command is None or name == command:
            module.add_parser(commands)
        else:
            commands.add_parser(name)
    return parser


# Exit status of a failure that is not the user's mistake: a bug to report.
EXIT_INTERNAL = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sdsl`` with ``argv`` (default: the command line); the exit status.

    0: done. 2: a mistake in the arguments or files, or more memory than the
    machine has (one ``error:`` line). 1: a bug (one line; ``SDSL_DEBUG=1``
    shows the traceback). 130: interrupted.
    """
    args = None
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        # The first word names the subcommand (sdsl takes no options of its own
        # but --help, which needs every subcommand's help line).
        chosen = argv[0] if argv and argv[0] in COMMANDS else None
        args = build_parser(chosen).parse_args(argv)
        _refuse_empty(args)
        cache = enable_compilation_cache()
        import jax
        from sdsl_jax.common import saved_programs
        # Planning is cheap, so the CLI always answers in float64 (scoped, so
        # a program that calls main() keeps its own precision setting); the
        # planners' compiled programs are saved beside the compilation cache.
        with jax.enable_x64(True), saved_programs.saving_in(programs_directory(cache)):
            return COMMANDS[args.command].run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) left early: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # noqa: BLE001 - the last line of defence, see below
        prog = f"sdsl {args.command}" if args is not None else "sdsl"
        if _out_of_memory(err):
            print(f"error: {prog}: out of memory ({_first_line(err)}); ask for fewer points, "
                  "rows, prompts or a smaller batch", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("SDSL_DEBUG"):
            raise
        # Every mistake we know of is a UsageError; anything else is a bug,
        # reported in one line rather than a traceback the user cannot act on.
        print(f"error: {prog}: internal error: {type(err).__name__}: {_first_line(err)} "
              "(please report it; SDSL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


# Options whose empty value means something (a figure with no title).
_MAY_BE_EMPTY = {"title"}


def _refuse_empty(args) -> None:
    """An empty path or name (``--laws=``, ``--out ""``) is a mistake, never "not given"."""
    prog = f"sdsl {args.command}" + (f" {args.figure}" if getattr(args, "figure", None) else "")
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if name not in _MAY_BE_EMPTY and any(isinstance(v, str) and not v.strip() for v in values):
            flag = name if name in ("measurements", "table", "runs") else "--" + name.replace("_", "-")
            raise UsageError(f"{prog}: argument {flag}: empty; give a value or leave the option out")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _out_of_memory(err: BaseException) -> bool:
    """numpy's MemoryError, or XLA failing to allocate a buffer."""
    return isinstance(err, MemoryError) or (
        type(err).__name__ in ("XlaRuntimeError", "JaxRuntimeError")
        and "RESOURCE_EXHAUSTED" in str(err))
