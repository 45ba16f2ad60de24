"""sdsl-jax: speculative decoding scaling laws as differentiable JAX functions.

Choose a draft model for speculative decoding before training it: the
throughput law, the pre-training and acceptance laws as pytrees of
coefficients, and vectorised, differentiable N* planners; acceptance
estimates with intervals, and fits of the laws to a user's measurements with
uncertainty carried through to N*. ``import sdsl_jax as sd`` gives the public
API, by layer (docs/architecture.md):

laws
    ``PretrainingLaw``, ``loss``, ``perplexity``, ``pretraining_preset``,
    ``BESIROGLU_2024``, ``HOFFMANN_2022``; ``AcceptanceLaw``, ``acceptance``,
    ``raw_acceptance``, ``is_extrapolated``, ``acceptance_preset``,
    ``SDSL_2026``, ``MAX_ACCEPTANCE``; the throughput law: ``expected_tokens``,
    ``speedup``, ``tokens_per_flop``, ``speculation_pays``,
    ``optimal_lookahead``, ``optimal_integer_lookahead``, ``optimal_speedup``;
    ``lambertw``, ``lambertw_negexp``.
planning
    FLOP: ``optimal_draft_size`` -> ``DraftPlan``. Wall clock:
    ``optimal_draft_size_wallclock``, ``evaluate_draft_wallclock`` ->
    ``WallClockPlan`` on a roofline ``Hardware`` (``hardware_preset``,
    ``bytes_per_param``) serving a ``Workload``, whose one step lasts
    ``step_time`` seconds. Calibration to measured step times:
    ``read_step_times``, ``step_time_rows`` -> ``StepTimes``, ``calibrate`` ->
    ``Calibration``. Compute budget: ``optimal_draft_under_budget`` ->
    ``BudgetPlan``. Over many devices and hosts: ``plan_sharded`` (a
    ``DraftPlan`` of numpy arrays), ``map_configs``,
    ``initialize_distributed``. The linear rule: ``published_rule``,
    ``fit_linear_rule`` -> ``LinearRule``.
estimation
    ``estimate_acceptance`` -> ``AcceptanceEstimate``, ``wilson_interval``,
    ``clopper_pearson_interval``, ``cluster_interval`` (prompts as clusters),
    ``bootstrap_interval``; measurement sets: ``MeasurementSet``,
    ``read_measurements``, ``write_measurements``, ``MeasurementError``.
fitting
    ``fit_acceptance_law``, ``fit_pretraining_law``, ``fit_joint`` (more in
    :mod:`sdsl_jax.fitting`); ``draft_size_interval``; laws files:
    ``FittedLaws``, ``save_laws``, ``load_laws``.
common
    ``parse_count``, ``format_count`` ("70B" and back).

Names are spelled one way throughout: ``hardware`` (a :class:`Hardware`),
``method`` (the planner's "bracket" or "gradient"), ``interval`` (the kind of
interval: "delta", "bootstrap", ...), ``batch_size``, ``num_params`` for an
unprefixed parameter count, time fields in ``_seconds``. Results are frozen
``chex`` dataclasses (pytrees that also index by field name).

The measuring instrument (:mod:`sdsl_jax.decoding`, :mod:`sdsl_jax.models`,
:mod:`sdsl_jax.hf`), the figures (:mod:`sdsl_jax.plots`) and the paper's
reproduction (:mod:`sdsl_jax.reproduce`) are imported on their own: importing
this package loads none of them (nor flax or orbax).
"""

from sdsl_jax.laws.acceptance import (
    MAX_ACCEPTANCE,
    SDSL_2026,
    AcceptanceLaw,
    acceptance,
    acceptance_preset,
    is_extrapolated,
    raw_acceptance,
)
from sdsl_jax.estimation.acceptance import (
    AcceptanceEstimate,
    bootstrap_interval,
    cluster_interval,
    clopper_pearson_interval,
    estimate_acceptance,
    wilson_interval,
)
from sdsl_jax.fitting import (
    FittedLaws,
    draft_size_interval,
    fit_acceptance_law,
    fit_joint,
    fit_pretraining_law,
    load_laws,
    save_laws,
)
from sdsl_jax.laws.lambertw import lambertw, lambertw_negexp
from sdsl_jax.planning.budget import BudgetPlan, optimal_draft_under_budget
from sdsl_jax.planning.calibration import (
    Calibration,
    StepTimes,
    calibrate,
    read_step_times,
    step_time_rows,
)
from sdsl_jax.planning.hardware import (
    Hardware,
    Workload,
    bytes_per_param,
    hardware_preset,
    step_time,
)
from sdsl_jax.planning.linear_rule import LinearRule, fit_linear_rule, published_rule
from sdsl_jax.planning.sharded import initialize_distributed, map_configs, plan_sharded
from sdsl_jax.planning.wallclock import (
    WallClockPlan,
    evaluate_draft_wallclock,
    optimal_draft_size_wallclock,
)
from sdsl_jax.estimation.measurements import (
    MeasurementError,
    MeasurementSet,
    read_measurements,
    write_measurements,
)
from sdsl_jax.planning.flop import DraftPlan, optimal_draft_size
from sdsl_jax.laws.pretraining import (
    BESIROGLU_2024,
    HOFFMANN_2022,
    PretrainingLaw,
    loss,
    perplexity,
    pretraining_preset,
)
from sdsl_jax.common.quantities import format_count, parse_count
from sdsl_jax.laws.throughput import (
    expected_tokens,
    optimal_integer_lookahead,
    optimal_lookahead,
    optimal_speedup,
    speculation_pays,
    speedup,
    tokens_per_flop,
)

__version__ = "0.1.0"

__all__ = [
    # laws
    "AcceptanceLaw", "BESIROGLU_2024", "HOFFMANN_2022", "MAX_ACCEPTANCE", "PretrainingLaw",
    "SDSL_2026", "acceptance", "acceptance_preset", "expected_tokens", "is_extrapolated",
    "lambertw", "lambertw_negexp", "loss", "optimal_integer_lookahead", "optimal_lookahead",
    "optimal_speedup", "perplexity", "pretraining_preset", "raw_acceptance", "speculation_pays",
    "speedup", "tokens_per_flop",
    # planning: FLOP, wall clock, hardware and calibration, budget, sharded, linear rule
    "DraftPlan", "optimal_draft_size",
    "WallClockPlan", "evaluate_draft_wallclock", "optimal_draft_size_wallclock",
    "Hardware", "Workload", "bytes_per_param", "hardware_preset", "step_time",
    "Calibration", "StepTimes", "calibrate", "read_step_times", "step_time_rows",
    "BudgetPlan", "optimal_draft_under_budget",
    "initialize_distributed", "map_configs", "plan_sharded",
    "LinearRule", "fit_linear_rule", "published_rule",
    # estimation
    "AcceptanceEstimate", "MeasurementError", "MeasurementSet", "bootstrap_interval", "cluster_interval",
    "clopper_pearson_interval", "estimate_acceptance", "read_measurements", "wilson_interval",
    "write_measurements",
    # fitting
    "FittedLaws", "draft_size_interval", "fit_acceptance_law", "fit_joint", "fit_pretraining_law",
    "load_laws", "save_laws",
    # common
    "format_count", "parse_count",
]
