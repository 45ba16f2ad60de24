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
from sdsl_jax.cli.options import EXIT_USAGE, Parser, UsageError

# In the order `sdsl --help` lists them.
COMMANDS = {"plan": plan, "fit": fit, "train": train, "measure": measure, "rule": rule,
            "plot": plot, "reproduce": reproduce}


def build_parser() -> Parser:
    """The ``sdsl`` parser with every subcommand."""
    parser = Parser(prog="sdsl", description=(
        "Speculative decoding scaling laws: choose a draft model size before training it."))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sdsl`` with ``argv`` (default: the command line); the exit status."""
    try:
        args = build_parser().parse_args(argv)
        import jax
        # Planning is cheap, so the CLI always answers in float64 (scoped, so
        # a program that calls main() keeps its own precision setting).
        with jax.enable_x64(True):
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
