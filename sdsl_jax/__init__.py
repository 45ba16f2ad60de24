"""sdsl-jax: speculative decoding scaling laws as differentiable JAX functions.

Choose a draft model for speculative decoding before training it: the
throughput law, the pre-training and acceptance laws as pytrees of
coefficients, and a vectorised, differentiable N* planner; acceptance
estimates with intervals, and fits of the laws to a user's measurements with
uncertainty carried through to N* (sdsl_jax.fitting).
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
from sdsl_jax.planning.linear_rule import LinearRule, fit_linear_rule, published_rule
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
    "AcceptanceEstimate", "FittedLaws", "MeasurementError", "MeasurementSet", "bootstrap_interval",
    "clopper_pearson_interval", "draft_size_interval", "estimate_acceptance", "fit_acceptance_law",
    "fit_joint", "fit_pretraining_law", "load_laws", "read_measurements", "save_laws",
    "wilson_interval", "write_measurements",
    "AcceptanceLaw", "BESIROGLU_2024", "DraftPlan", "HOFFMANN_2022", "LinearRule",
    "MAX_ACCEPTANCE", "PretrainingLaw", "SDSL_2026", "acceptance", "acceptance_preset",
    "expected_tokens", "fit_linear_rule", "format_count", "is_extrapolated", "lambertw",
    "lambertw_negexp", "loss", "optimal_draft_size", "optimal_integer_lookahead",
    "optimal_lookahead", "optimal_speedup", "parse_count", "perplexity", "pretraining_preset",
    "published_rule", "raw_acceptance", "speculation_pays", "speedup", "tokens_per_flop",
]
