"""``sdsl rule``: refit the linear rule N* ~= a M + b (+ c log D) to the planner over a grid.

The fit is :func:`sdsl_jax.planning.linear_rule.fit_linear_rule`; this
module reads the grid from the options and prints the refit beside the
paper's 2.71e-3 M + 87M.
"""

from __future__ import annotations

import json

from sdsl_jax.cli.options import UsageError, add_law_presets, count, planner_laws


def add_parser(commands) -> None:
    """Register ``rule`` on the ``sdsl`` subcommands."""
    rule = commands.add_parser("rule", help="refit the linear rule N* ~= a M + b to the planner",
                               description=(
        "Fit N* ~= a M + b (+ c log D) over a grid of targets and data sizes and "
        "print it beside the paper's 2.71e-3 M + 87M."))
    _add_arguments(rule)


# The grid is planned at once (points x tokens configurations, each a planner's
# worth of arrays): beyond this the command would exhaust memory rather than refine the fit.
MAX_POINTS = 10_000


def _add_arguments(rule) -> None:
    """The arguments of ``sdsl rule``."""
    rule.add_argument("--min-target-params", type=count, default=13e9, metavar="M")
    rule.add_argument("--max-target-params", type=count, default=110e9, metavar="M")
    rule.add_argument("--tokens", type=count, nargs="+", default=[3e11, 1e12, 3e12, 15e12],
                      metavar="D", help="training-token counts (draft and target alike)")
    rule.add_argument("--points", type=int, default=24,
                      help=f"targets on the log grid, 2 to {MAX_POINTS:,} (default: %(default)s)")
    rule.add_argument("--json", action="store_true")
    add_law_presets(rule)


def run(args) -> int:
    """The ``sdsl rule`` command."""
    import numpy as np
    from sdsl_jax.planning import linear_rule

    if not 2 <= args.points <= MAX_POINTS:
        raise UsageError(f"sdsl rule: argument --points: must lie in [2, {MAX_POINTS}], "
                         f"got {args.points}")
    if args.min_target_params >= args.max_target_params:
        raise UsageError("sdsl rule: argument --max-target-params: must exceed --min-target-params")
    m = np.geomspace(args.min_target_params, args.max_target_params, args.points)[:, None]
    tokens = np.asarray(args.tokens)[None, :]
    laws = planner_laws(args)
    plain = linear_rule.fit_linear_rule(m, tokens, tokens, **laws)
    with_log = linear_rule.fit_linear_rule(m, tokens, tokens, with_log_tokens=True, **laws)
    if args.json:
        print(json.dumps({"linear": dict(plain), "with_log_tokens": dict(with_log),
                          "published": {"slope": linear_rule.PUBLISHED_SLOPE,
                                        "intercept": linear_rule.PUBLISHED_INTERCEPT}}))
        return 0
    from sdsl_jax.common.quantities import format_count as fc
    print(f"N* over M in [{fc(args.min_target_params)}, {fc(args.max_target_params)}] "
          f"({args.points} targets) x D = D' in {{{', '.join(fc(t) for t in args.tokens)}}}")
    print(f"  published   N* = {linear_rule.PUBLISHED_SLOPE:.3e} M + {fc(linear_rule.PUBLISHED_INTERCEPT)}")
    print(f"  refit       N* = {plain.slope:.3e} M + {fc(plain.intercept)}"
          f"   (R^2 {plain.r2:.4f}, worst error {plain.max_relative_error:.1%})")
    print(f"  refit+logD  N* = {with_log.slope:.3e} M + {fc(with_log.intercept)} "
          f"{with_log.log_tokens_coeff:+.3e} ln D   (R^2 {with_log.r2:.4f}, "
          f"worst error {with_log.max_relative_error:.1%})")
    return 0
