"""What the ``sdsl`` subcommands share: the usage error, the parser class, common options and checks.

Every user mistake ends as a :class:`UsageError`: one line on stderr that
names the argument (or the file, row and column), exit status 2, no
traceback. The helpers here raise it with the subcommand's name in front
(``prog``, e.g. ``"sdsl plan"``), so the same mistake reads the same in
every subcommand.

Importing this module is cheap: the laws, the fits and the measurement
readers load only when a helper that needs them runs.
"""

from __future__ import annotations

import argparse
import os

EXIT_USAGE = 2
# --progress of train and reproduce: tqdm's disable=None shows bars on a terminal only.
PROGRESS = {"auto": None, "always": True, "never": False}


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`UsageError` line, not argparse's usage dump."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def count(text: str) -> float:
    """argparse type of a count with a suffix: 70e9, 70B, 15T, 125M."""
    from sdsl_jax.common.quantities import parse_count
    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --------------------------------------------------------------------------
# The laws: presets or a file from `sdsl fit`.


def add_law_presets(cmd) -> None:
    """--pretraining-law, --acceptance-law and --method, as ``plan`` and ``rule`` take them."""
    from sdsl_jax.laws import acceptance, pretraining
    # Defaults filled in by planner_laws, so that a preset given beside --laws is seen.
    cmd.add_argument("--pretraining-law", default=None, choices=sorted(pretraining.PRESETS),
                     help=f"preset for L(N, D) (default: {pretraining.DEFAULT_PRESET})")
    cmd.add_argument("--acceptance-law", default=None, choices=sorted(acceptance.PRESETS),
                     help=f"preset for alpha = A x + B y + C (default: {acceptance.DEFAULT_PRESET})")
    cmd.add_argument("--method", default="bracket", choices=("bracket", "gradient"),
                     help="N* solver (default: %(default)s)")


def load_laws_file(prog: str, path: str):
    """The FittedLaws of a ``--laws`` file; an unreadable one is a usage error."""
    from sdsl_jax.fitting.laws import LawsFileError, load_laws
    try:
        return load_laws(path)
    except LawsFileError as err:
        raise UsageError(f"{prog}: --laws: {err}") from None


def fitted_laws(args):
    """The laws file of ``sdsl plan --laws``, loaded once; None without --laws."""
    path = getattr(args, "laws", None)
    if not path:
        return None
    if not hasattr(args, "fitted"):
        args.fitted = load_laws_file("sdsl plan", path)
    return args.fitted


def planner_laws(args) -> dict:
    """The planner's keyword arguments: the fitted laws of --laws, else the presets."""
    from sdsl_jax.laws import acceptance, pretraining
    if getattr(args, "laws", None) and (args.pretraining_law or args.acceptance_law):
        raise UsageError("sdsl plan: --laws replaces the presets; drop "
                         "--pretraining-law/--acceptance-law")
    fitted = fitted_laws(args)
    if fitted is not None:
        return dict(pretraining_law=fitted.pretraining_law, acceptance_law=fitted.acceptance_law,
                    method=args.method)
    args.pretraining_law = args.pretraining_law or pretraining.DEFAULT_PRESET
    args.acceptance_law = args.acceptance_law or acceptance.DEFAULT_PRESET
    return dict(pretraining_law=pretraining.pretraining_preset(args.pretraining_law),
                acceptance_law=acceptance.acceptance_preset(args.acceptance_law),
                method=args.method)


# --------------------------------------------------------------------------
# Precision: what train and measure compute in.

DTYPES = ("float32", "bfloat16", "float16")


def add_dtype(cmd, what: str) -> None:
    """--dtype, the precision ``what`` runs in (float32 by default)."""
    cmd.add_argument("--dtype", choices=DTYPES, default="float32", help=(
        f"{what} (default: %(default)s); softmax, losses and acceptance ratios stay float32"))


# --------------------------------------------------------------------------
# Checks of values argparse cannot make.


# Seeds become JAX PRNG keys and numpy generators: both take a signed 64-bit integer.
MAX_SEED = 2**63 - 1


def check_seed(prog: str, seed: int, flag: str = "--seed") -> None:
    """A seed must lie in [0, 2^63 - 1]."""
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{prog}: argument {flag}: must lie in [0, 2^63 - 1], got {seed}")


def check_confidence(prog: str, confidence: float) -> None:
    """An interval level must lie strictly between 0 and 1."""
    if not 0 < confidence < 1:
        raise UsageError(f"{prog}: argument --confidence: must lie in (0, 1), got {confidence}")


def check_corpus(prog: str, paths, no_stdlib: bool) -> None:
    """--corpus PATH ... exist, and --no-stdlib leaves some text (``no_stdlib`` true and no
    paths is the mistake; a caller with another source of text passes False)."""
    if no_stdlib and not paths:
        raise UsageError(f"{prog}: --no-stdlib leaves no text: add --corpus PATH ...")
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{prog}: argument --corpus: {path} does not exist")
        if os.path.isdir(path):
            from sdsl_jax.models.corpus import user_documents
            if not user_documents([path]):
                raise UsageError(f"{prog}: argument --corpus: {path} holds no text files")


# --------------------------------------------------------------------------
# Files every analysis subcommand reads.


def read_measurement_set(path: str):
    """The MeasurementSet in ``path``; a bad file is one usage line naming file, row and column."""
    from sdsl_jax.estimation.measurements import MeasurementError, read_measurements
    try:
        return read_measurements(path)
    except MeasurementError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None
