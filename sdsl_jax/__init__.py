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

Each name is loaded from its layer on first use, so ``import sdsl_jax`` itself
loads nothing (not even JAX): the ``sdsl`` program imports the package before
every subcommand and pays only for the layers that subcommand uses. The
measuring instrument (:mod:`sdsl_jax.decoding`, :mod:`sdsl_jax.models`,
:mod:`sdsl_jax.hf`), the figures (:mod:`sdsl_jax.plots`) and the paper's
reproduction (:mod:`sdsl_jax.reproduce`) are imported on their own: no name
here loads them (nor flax or orbax).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Module -> the public names it defines, by layer (the docstring's order).
_EXPORTS = {
    # laws
    "sdsl_jax.laws.pretraining": (
        "BESIROGLU_2024", "HOFFMANN_2022", "PretrainingLaw", "loss", "perplexity",
        "pretraining_preset"),
    "sdsl_jax.laws.acceptance": (
        "AcceptanceLaw", "MAX_ACCEPTANCE", "SDSL_2026", "acceptance", "acceptance_preset",
        "is_extrapolated", "raw_acceptance"),
    "sdsl_jax.laws.throughput": (
        "expected_tokens", "optimal_integer_lookahead", "optimal_lookahead", "optimal_speedup",
        "speculation_pays", "speedup", "tokens_per_flop"),
    "sdsl_jax.laws.lambertw": ("lambertw", "lambertw_negexp"),
    # planning: FLOP, wall clock, hardware and calibration, budget, sharded, linear rule
    "sdsl_jax.planning.flop": ("DraftPlan", "optimal_draft_size"),
    "sdsl_jax.planning.wallclock": (
        "WallClockPlan", "evaluate_draft_wallclock", "optimal_draft_size_wallclock"),
    "sdsl_jax.planning.hardware": (
        "Hardware", "Workload", "bytes_per_param", "hardware_preset", "step_time"),
    "sdsl_jax.planning.calibration": (
        "Calibration", "StepTimes", "calibrate", "read_step_times", "step_time_rows"),
    "sdsl_jax.planning.budget": ("BudgetPlan", "optimal_draft_under_budget"),
    "sdsl_jax.planning.sharded": ("initialize_distributed", "map_configs", "plan_sharded"),
    "sdsl_jax.planning.linear_rule": ("LinearRule", "fit_linear_rule", "published_rule"),
    # estimation
    "sdsl_jax.estimation.acceptance": (
        "AcceptanceEstimate", "bootstrap_interval", "cluster_interval",
        "clopper_pearson_interval", "estimate_acceptance", "wilson_interval"),
    "sdsl_jax.estimation.measurements": (
        "MeasurementError", "MeasurementSet", "read_measurements", "write_measurements"),
    # fitting
    "sdsl_jax.fitting": (
        "FittedLaws", "draft_size_interval", "fit_acceptance_law", "fit_joint",
        "fit_pretraining_law", "load_laws", "save_laws"),
    # common
    "sdsl_jax.common.quantities": ("format_count", "parse_count"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    """A public name, imported from its layer the first time it is asked for (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'sdsl_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    # Later lookups find it without coming here again.
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
