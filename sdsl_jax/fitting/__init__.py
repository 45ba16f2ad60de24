"""Fitting the scaling laws to a user's measurements, with uncertainty.

    rows, targets = acceptance_rows(measurements)     # data.py
    points = perplexity_points(measurements)
    plane = fit_acceptance_law(rows)                  # acceptance.py
    per_target = fit_per_target(rows, len(targets))
    huber = fit_pretraining_law(...)                  # pretraining.py
    joint = fit_joint(rows, points)                   # joint.py: both laws end to end
                                                      # (covariance: clustered by model, clusters.py)
    samples = bootstrap_joint(joint, rows, points, key)  # resamples models, two-way
    interval = draft_size_interval(laws, M, D, D')    # uncertainty.py

Every fit is pure JAX under the hood (jit, vmap over weights and resamples);
float64 (jax.enable_x64) is recommended for the intervals: a Hessian with a
condition number of 1e5, common here, leaves float32 three digits.
"""

from sdsl_jax.fitting.acceptance import AcceptanceFit, PerTargetFit, fit_acceptance_law, fit_per_target
from sdsl_jax.fitting.data import AcceptanceRows, PerplexityPoints, acceptance_rows, perplexity_points
from sdsl_jax.fitting.clusters import ModelClusters, model_resample_counts
from sdsl_jax.fitting.joint import (
    JointFit,
    bootstrap_joint,
    cluster_covariance,
    fit_joint,
    resample_converged,
)
from sdsl_jax.fitting.laws import (
    COEFFICIENTS,
    FittedLaws,
    LawsFileError,
    coefficient_vector,
    covariance_kind,
    default_interval,
    json_safe,
    laws_from_vector,
    load_laws,
    save_laws,
)
from sdsl_jax.fitting.pretraining import PretrainingFit, fit_pretraining_law
from sdsl_jax.fitting.profile import ProfileIntervals, profile_intervals
from sdsl_jax.fitting.synthetic import synthetic_fit_inputs, synthetic_measurements
from sdsl_jax.fitting.uncertainty import (
    DraftSizeInterval,
    draft_size_interval,
    normal_intervals,
    percentile_intervals,
)

__all__ = [
    "AcceptanceFit", "AcceptanceRows", "COEFFICIENTS", "DraftSizeInterval", "FittedLaws",
    "JointFit", "LawsFileError", "ModelClusters", "PerTargetFit", "PerplexityPoints",
    "PretrainingFit", "ProfileIntervals", "acceptance_rows", "bootstrap_joint",
    "cluster_covariance", "coefficient_vector", "covariance_kind", "default_interval",
    "draft_size_interval", "fit_acceptance_law", "fit_joint", "fit_per_target",
    "fit_pretraining_law", "json_safe", "laws_from_vector", "load_laws", "model_resample_counts",
    "normal_intervals", "percentile_intervals", "perplexity_points", "profile_intervals",
    "resample_converged", "save_laws", "synthetic_fit_inputs", "synthetic_measurements",
]
