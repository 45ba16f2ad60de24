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
ONE_COUNT = "one token count: give --tokens more than one value"
# A quadrillion parameters, a thousand times today's largest models. Far beyond,
# N* reaches the planner's search bound (N/M = 1e-8; from about 1e20 at small D)
# and the "rule" is a line through the bound, not through the law.
MAX_TARGET_PARAMS = 1e15


def _add_arguments(rule) -> None:
    """The arguments of ``sdsl rule``."""
    rule.add_argument("--min-target-params", type=count, default=13e9, metavar="M",
                      help="smallest target, 1 to 1e15 parameters (default: 13B)")
    rule.add_argument("--max-target-params", type=count, default=110e9, metavar="M",
                      help="largest target (default: 110B); speculation must pay over the range")
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
    for flag, values, unit in (("--min-target-params", [args.min_target_params], "parameter"),
                               ("--max-target-params", [args.max_target_params], "parameter"),
                               ("--tokens", args.tokens, "token")):
        for value in values:
            if not value >= 1:
                raise UsageError(f"sdsl rule: argument {flag}: must be at least 1 {unit}, got {value:g}")
            if unit == "parameter" and value > MAX_TARGET_PARAMS:
                raise UsageError(f"sdsl rule: argument {flag}: must be at most {MAX_TARGET_PARAMS:g} "
                                 f"parameters (beyond, N* is the planner's search bound), got {value:g}")
    if args.min_target_params >= args.max_target_params:
        raise UsageError(f"sdsl rule: argument --max-target-params: must exceed --min-target-params "
                         f"({args.max_target_params:g} <= {args.min_target_params:g})")
    m = np.geomspace(args.min_target_params, args.max_target_params, args.points)[:, None]
    tokens = np.asarray(args.tokens)[None, :]
    laws = planner_laws(args)
    try:
        plain = linear_rule.fit_linear_rule(m, tokens, tokens, **laws)
    except linear_rule.RuleUndefinedError as err:
        raise UsageError(_where_it_pays(err)) from None
    # With one token count the ln D column is a constant beside the intercept:
    # its coefficient is undetermined, so that fit is not made (never a number
    # that only rounding chose).
    one_count = np.ptp(tokens) == 0
    with_log = None if one_count else linear_rule.fit_linear_rule(
        m, tokens, tokens, with_log_tokens=True, **laws)
    if args.json:
        record = {"linear": dict(plain), "with_log_tokens": None if with_log is None else dict(with_log),
                  "published": {"slope": linear_rule.PUBLISHED_SLOPE,
                                "intercept": linear_rule.PUBLISHED_INTERCEPT}}
        if with_log is None:
            record["undetermined"] = {"with_log_tokens": ONE_COUNT}
        print(json.dumps(record))
        return 0
    from sdsl_jax.common.quantities import format_count as fc
    print(f"N* over M in [{fc(args.min_target_params)}, {fc(args.max_target_params)}] "
          f"({args.points} targets) x D = D' in {{{', '.join(fc(t) for t in args.tokens)}}}")
    print(f"  published   N* = {linear_rule.PUBLISHED_SLOPE:.3e} M + {fc(linear_rule.PUBLISHED_INTERCEPT)}")
    print(f"  refit       N* = {plain.slope:.3e} M + {fc(plain.intercept)}"
          f"   (R^2 {plain.r2:.4f}, worst error {plain.max_relative_error:.1%})")
    if with_log is None:
        print(f"  refit+logD  undetermined ({ONE_COUNT})")
        return 0
    print(f"  refit+logD  N* = {with_log.slope:.3e} M + {fc(with_log.intercept)} "
          f"{with_log.log_tokens_coeff:+.3e} ln D   (R^2 {with_log.r2:.4f}, "
          f"worst error {with_log.max_relative_error:.1%})")
    return 0


def _where_it_pays(err) -> str:
    """One line: the grid's targets and token counts where speculation does not pay under
    the chosen laws, and the --min/--max-target-params that leave only targets where it
    pays at every D (the top of the range first: the rule is for large targets)."""
    import numpy as np
    from sdsl_jax.common.quantities import format_count as fc
    m, d = err.target_params[:, 0], err.draft_tokens[0, :]
    everywhere = err.pays.all(axis=1)  # per target: pays at every token count
    bad = np.flatnonzero(~everywhere)
    at = ", ".join(fc(v) for v in d[~err.pays.all(axis=0)])
    some = "" if bad.size == bad[-1] - bad[0] + 1 else "some "
    low, high = fc(m[bad[0]]), fc(m[bad[-1]])
    span = low if low == high else f"{low} to {high}"
    head = (f"sdsl rule: speculation does not pay under these laws for {some}targets of "
            f"{span} parameters at D = {at}")
    # The runs of targets at the ends of the range where it pays at every D.
    top = m.size - 1 - bad[-1]
    bottom = bad[0]
    if top >= 2 and top >= bottom:
        return (f"{head}; it pays at every D for the targets above {fc(m[bad[-1]])}: raise "
                f"--min-target-params to {fc(m[bad[-1] + 1])}")
    if bottom >= 2:
        return (f"{head}; it pays at every D for the targets below {fc(m[bad[0]])}: lower "
                f"--max-target-params to {fc(m[bad[0] - 1])}")
    return (f"{head}; no stretch at either end of [{fc(m[0])}, {fc(m[-1])}] pays at every D: "
            "choose other --min-target-params/--max-target-params or --tokens")
