"""What a short `sdsl plan` pays before it plans: `import sdsl_jax` loads no layer, and the
parser of one subcommand parses as the whole parser does without building the others."""

import os
import subprocess
import sys

import pytest

from sdsl_jax.cli.app import COMMANDS, build_parser
from sdsl_jax.cli.options import UsageError


def _parsed(parser, argv):
    """The parsed options, or the one line of the mistake."""
    try:
        return vars(parser.parse_args(argv))
    except UsageError as err:
        return str(err)


@pytest.mark.parametrize("argv", [
    ["plan", "--target-params", "70B", "--target-tokens", "15T", "--json"],
    ["plan", "--csv", "configs.csv", "--out", "plans.csv", "--method", "gradient"],
    ["rule", "--min-target-params", "13B", "--tokens", "1T", "15T"],
    ["plan", "--target-params", "seventy"],
    ["plan", "--hardware"],
])
def test_one_subcommand_parses_as_the_whole_parser(argv):
    assert _parsed(build_parser(argv[0]), argv) == _parsed(build_parser(), argv)


def test_another_subcommand_name_still_parses():
    # Registered by name alone: `sdsl rule` through plan's parser is still `rule`, not an error.
    assert build_parser("plan").parse_args(["rule"]).command == "rule"
    assert set(COMMANDS) == {"plan", "fit", "train", "measure", "rule", "plot", "reproduce"}


def test_the_package_and_plans_parser_load_nothing_plan_does_not_use():
    code = (
        "import sys, sdsl_jax\n"
        "assert 'jax' not in sys.modules, 'import sdsl_jax loaded jax'\n"
        "from sdsl_jax.cli.app import build_parser\n"
        "build_parser('plan').parse_args(['plan', '--target-params', '70B', "
        "'--target-tokens', '15T'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('optax', 'scipy', "
        "'matplotlib', 'flax', 'orbax', 'transformers', 'tokenizers', 'torch') or "
        "m.startswith(('sdsl_jax.fitting', 'sdsl_jax.estimation', 'sdsl_jax.plots', "
        "'sdsl_jax.decoding', 'sdsl_jax.models', 'sdsl_jax.hf', 'sdsl_jax.reproduce')))\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
