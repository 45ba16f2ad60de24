"""Every fit ``sdsl fit`` reports, as one call: the recommended workflow from Python.

:func:`fit_all` fits the acceptance plane, the pre-training law and both
end to end to a measurement set, with delta-method intervals (by default
from the cluster-robust covariance over models, with t quantiles) and
bootstrap intervals (by default resampling models, two-way),
and returns the fitted laws with a JSON-ready report; :func:`select_resamples`
keeps the bootstrap resamples that converged, and :func:`bootstrap_summary`
says in one line how many did not. The command line prints the report
(:mod:`sdsl_jax.cli.fit`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.validation import finite_or_none
from sdsl_jax.fitting import acceptance as plane_fit
from sdsl_jax.fitting import data as fit_data
from sdsl_jax.fitting import joint as joint_fit
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.fitting import pretraining as pretraining_fit
from sdsl_jax.fitting import uncertainty

# Coefficients the fits estimate on a log scale; their intervals are too.
_LOG_SCALE = np.array([name in ("irreducible_loss", "param_coeff", "data_coeff")
                       for name in laws_lib.COEFFICIENTS])
BOOTSTRAP_BATCH = 50
# Bootstrap intervals need this share of the resamples to converge (see fit_all).
MIN_CONVERGED_SHARE = 0.8

# Why a coefficient is undetermined, as the report says it (report["..."]["undetermined"]).
ONE_TARGET = "one target perplexity: measure more targets"
ONE_DRAFT = "one draft perplexity: measure more drafts against this target"
COLLINEAR = ("draft and target perplexities are collinear: measure pairs whose draft and "
             "target perplexities vary independently")
ONE_TOKEN_COUNT = ("every model was trained on one token count: measure models trained on "
                   "more than one")
ONE_SIZE = "every model has one size: measure models of more than one size"
_DATA_TERM = ("irreducible_loss", "data_coeff", "data_exponent")
_PARAM_TERM = ("irreducible_loss", "param_coeff", "param_exponent")
EXACT = ("5 models fit the pre-training law's 5 coefficients exactly, leaving no residual to "
         "measure their uncertainty: measure more models")
FLAT = "the data do not determine it (singular Hessian): measure more, and more varied, models"
# A natural coefficient whose gradient has at least this share along a flat
# direction of the fit moves with it: rounding leaves shares near 1e-8.
_FLAT_SHARE = 1e-3


def fit_all(measurements, *, weighting="auto", bootstrap=200, seed=0, confidence=0.95,
            progress=None, points=None, covariance="cluster", resample="models") -> dict:
    """Every fit ``sdsl fit`` reports, as plain Python values, plus the FittedLaws.

    ``points`` (PerplexityPoints) replaces the loss points the pre-training
    law is fitted to, by default the set's distinct models (e.g. to add
    checkpoints trained on fewer tokens, so that D varies).

    ``covariance`` ("cluster" or "iid") and ``resample`` ("models" or
    "rows") choose the delta method's covariance and the bootstrap's unit,
    as :func:`~sdsl_jax.fitting.joint.fit_joint` and
    :func:`~sdsl_jax.fitting.joint.bootstrap_joint` take them; the defaults
    are the ones whose intervals cover (module doc of
    :mod:`sdsl_jax.fitting.joint`). The report says which ("covariance",
    "covariance_df", "bootstrap_resampling").

    Returns a dict with "laws" (FittedLaws of the end-to-end fit, with the
    delta-method covariance (and its t degrees of freedom) and, if bootstrap > 0, the resampled coefficients
    of the resamples that converged) and "report" (JSON-ready numbers: a
    value that is not available, such as an interval the data cannot give,
    is None, never NaN). Resamples whose refit fails are counted in the
    report ("bootstrap_failed"); if more than 1 - MIN_CONVERGED_SHARE of them
    fail, the bootstrap intervals are None and the laws carry no samples.
    Raises ValueError (a one-line message) where the data cannot be fitted.
    """
    rows, targets = fit_data.acceptance_rows(measurements, weighting)
    points = fit_data.perplexity_points(measurements) if points is None else points
    weighted = bool(np.ptp(np.asarray(rows.weight)) > 0)

    # With one target perplexity B cannot be told from the intercept: it is
    # held at 0 (and gets no variance) in the plane and in the joint fit.
    target_varies = bool(np.ptp(np.asarray(rows.target_perplexity)) > 0)
    # Before any fit: a set the end-to-end fit must refuse is refused at once.
    joint_fit.check_inputs(rows, points, target_varies)
    acceptance = np.asarray(rows.acceptance)
    if np.ptp(acceptance) == 0:
        # A flat plane fits exactly: no residual measures any uncertainty, and
        # the end-to-end likelihood is unbounded (its variance is 0).
        raise ValueError(f"every measurement has the same acceptance ({acceptance[0]:g}), so the "
                         "plane is flat and nothing measures its uncertainty; were the draft and "
                         "target the same model? Measure pairs whose acceptance differs")
    plane = plane_fit.fit_acceptance_law(rows, use_target=target_varies)
    per_target = plane_fit.fit_per_target(rows, len(targets))
    huber = None
    if points.num_params.shape[0] >= 5:
        huber = pretraining_fit.fit_pretraining_law(points.num_params, points.tokens,
                                                    jnp.log(points.perplexity), pad=True)
    joint = joint_fit.fit_joint(rows, points, start=None if huber is None else (huber.law, plane.law),
                                fit_target_coeff=target_varies, covariance=covariance)
    coeffs = np.asarray(joint.laws.coefficients, np.float64)
    if not np.all(np.isfinite(coeffs)):
        raise ValueError("the end-to-end fit diverged (non-finite coefficients): the measurements "
                         "do not determine both laws; measure more (draft, target) pairs and models")
    kind = covariance
    covariance, df = joint.laws.covariance, joint.laws.covariance_df
    undetermined = {} if target_varies else {"target_coeff": ONE_TARGET}
    # With one token count B / D^b is a constant beside E (and with one size
    # A / N^a is): the three trade off exactly, whatever the Hessian at the
    # optimum says (an optimum with B / D^b -> 0 leaves E locally determined).
    for column, names, reason in ((points.tokens, _DATA_TERM, ONE_TOKEN_COUNT),
                                  (points.num_params, _PARAM_TERM, ONE_SIZE)):
        if np.ptp(np.asarray(column)) == 0:
            undetermined.update(dict.fromkeys(names, reason))
    # Five models fit the pre-training law's five coefficients exactly: the
    # loss block's variance is 0, the profiled likelihood unbounded, and
    # nothing measures their uncertainty.
    flat = EXACT if points.num_params.shape[0] <= len(laws_lib.PRETRAINING_FIELDS) else FLAT
    for name in undetermined_coefficients(joint, rows, points, target_varies):
        undetermined.setdefault(name, flat if name in laws_lib.PRETRAINING_FIELDS else FLAT)
    low, high = (np.array(v, np.float64) for v in uncertainty.normal_intervals(
        joint.laws.coefficients, covariance, confidence, log_scale=_LOG_SCALE, df=df))
    # A variance that overflowed (a coefficient fitted near the float limit)
    # gives that coefficient no interval (None in the report), not a zero-width one.
    overflowed = ~np.isfinite(np.diagonal(np.asarray(covariance, np.float64)))
    low[overflowed] = high[overflowed] = np.nan
    if not np.all(np.isfinite(np.asarray(covariance))):
        covariance = None  # a laws file holds a finite covariance or none
    if undetermined:
        # The covariance gives an undetermined coefficient a variance of 0 (B
        # held at 0) or a meaningless pseudo-inverse one: written to the laws
        # file, `sdsl plan --laws` would carry it into an N* interval that
        # claims the data fixed what they did not (too narrow for every target
        # but the measured ones). A covariance cannot say "infinite", so the
        # file gets none and no samples (the resamples hold B at 0 too): the
        # planner still has the point estimate, and says it has no interval.
        # The report keeps the intervals of the coefficients that are
        # determined: their variances do not depend on the flat directions.
        covariance = None
    samples, converged = None, 0
    if bootstrap > 0:
        key = jax.random.PRNGKey(seed)
        data = joint_fit.prepare(rows, points, padded=True)
        chunks, decrements = [], []
        # Chunks of one size (one compiled function) so the progress bar can move.
        for start in range(0, bootstrap, BOOTSTRAP_BATCH):
            size = min(BOOTSTRAP_BATCH, bootstrap - start)
            chunk, decrement = joint_fit.bootstrap_joint(
                joint, rows, points, jax.random.fold_in(key, start), num_resamples=BOOTSTRAP_BATCH,
                batch_size=BOOTSTRAP_BATCH, data=data, fit_target_coeff=target_varies,
                with_decrement=True, resample=resample)
            chunks.append(np.asarray(chunk)[:size])
            decrements.append(np.asarray(decrement)[:size])
            if progress is not None:
                progress(size)
        samples, converged = select_resamples(np.concatenate(chunks), np.concatenate(decrements))
    laws = laws_lib.FittedLaws(pretraining_law=joint.laws.pretraining_law,
                               acceptance_law=joint.laws.acceptance_law,
                               covariance=covariance, covariance_df=None if covariance is None else df,
                               samples=None if samples is None or undetermined else jnp.asarray(samples))

    residuals = np.asarray(joint.acceptance_residuals, np.float64)
    worst = int(np.argmax(np.abs(residuals)))
    coefficient_table = {}
    for i, name in enumerate(laws_lib.COEFFICIENTS):
        entry = {"estimate": coeffs[i], "delta_low": float(low[i]), "delta_high": float(high[i])}
        if bootstrap > 0:
            entry["bootstrap_low"] = entry["bootstrap_high"] = None
        if samples is not None:
            tail = 100 * (1 - confidence) / 2
            entry["bootstrap_low"] = float(np.percentile(samples[:, i], tail))
            entry["bootstrap_high"] = float(np.percentile(samples[:, i], 100 - tail))
        if name in undetermined:
            # Never "0 +- 0": no estimate, no interval (the reason is in "undetermined").
            entry = {key: None for key in entry}
        coefficient_table[name] = entry
    plane_report = plane_summary(plane, target_varies)
    report = {
        "source": measurements.source,
        "measurements": len(measurements),
        "targets": len(targets),
        "models": int(points.num_params.shape[0]),
        "weighting": "interval" if weighted else "equal",
        "confidence": confidence,
        "acceptance_plane": plane_report,
        "per_target": [per_target_summary(targets[t], per_target, t) for t in range(len(targets))],
        "pretraining_huber": None if huber is None else {
            **{f: float(getattr(huber.law, f)) for f in laws_lib.PRETRAINING_FIELDS},
            "r2": float(huber.r2)},
        "end_to_end": {
            "coefficients": coefficient_table,
            "acceptance_r2": float(joint.acceptance_r2),
            "loss_r2": float(joint.loss_r2),
            "rms_residual": float(np.sqrt(np.mean(residuals**2))),
            "worst_residual": {"row": worst + 1, "residual": float(residuals[worst]),
                               "draft": str(measurements.draft_names[worst]),
                               "target": str(measurements.target_names[worst])},
            "converged": bool(joint.converged), "identifiable": bool(joint.identifiable),
            # Coefficient -> why the data cannot determine it; those have no
            # estimate or interval above, and the laws file no covariance.
            "undetermined": undetermined,
            # What the delta_low/high intervals come from: "cluster" (two-way
            # cluster-robust over models, t quantile with covariance_df degrees
            # of freedom) or "iid" (inverse Hessian, normal quantile).
            "covariance": kind,
            "covariance_df": None if df is None else float(df),
            "bootstrap_resampling": resample,
            "bootstrap_requested": bootstrap,
            "bootstrap_failed": bootstrap - converged,
            # The resamples behind the bootstrap intervals (0: none reported).
            "bootstrap_resamples": 0 if samples is None else int(samples.shape[0]),
        },
    }
    return {"laws": laws, "report": laws_lib.json_safe(report)}


def plane_summary(plane, target_varies: bool) -> dict:
    """The acceptance plane's part of the report; an undetermined coefficient is None,
    with its reason in "undetermined", never 0 with a standard error of 0."""
    names = laws_lib.ACCEPTANCE_FIELDS
    values = [float(getattr(plane.law, name)) for name in names]
    se = np.sqrt(np.clip(np.diag(np.asarray(plane.covariance, np.float64)), 0, None)).tolist()
    undetermined = {}
    if not bool(plane.identifiable):
        # x varies (a single draft perplexity is refused before the fit), so the
        # Gram matrix is singular because x and y are collinear: the flat
        # direction moves A, B and C together.
        undetermined = {name: COLLINEAR for name in names}
    elif not target_varies:
        undetermined = {"target_coeff": ONE_TARGET}
    # A plane through every measurement (all acceptances equal, e.g. a model
    # drafting for itself) leaves no residual to estimate the noise by: its
    # standard errors of exactly 0 would claim certainty, so there are none.
    # (Acceptances lie in [0, 1]: a residual at rounding level is none.)
    exact = float(plane.rms_residual) <= 1e3 * np.finfo(np.asarray(plane.rms_residual).dtype).eps
    for i, name in enumerate(names):
        if name in undetermined:
            values[i] = se[i] = None
        elif exact:
            se[i] = None
    return {**dict(zip(names, values)), "standard_errors": se, "r2": finite_or_none(plane.r2),
            "rms_residual": float(plane.rms_residual), "identifiable": bool(plane.identifiable),
            "undetermined": undetermined}


def per_target_summary(target: str, per_target, t: int) -> dict:
    """One target's alpha = A_t x + C_t; with one draft perplexity neither is determined."""
    entry = {"target": target, "measurements": int(per_target.measurements[t]),
             "draft_coeff": finite_or_none(per_target.draft_coeff[t]),
             "intercept": finite_or_none(per_target.intercept[t]),
             "r2": finite_or_none(per_target.r2[t]), "undetermined": {}}
    if entry["draft_coeff"] is None:
        entry.update(intercept=None, r2=None,
                     undetermined={"draft_coeff": ONE_DRAFT, "intercept": ONE_DRAFT})
    return entry


@jax.jit
def _hessian_and_jacobian(theta, data, row_weight):
    """The end-to-end objective's Hessian at theta (the fit's coordinates) and the
    Jacobian of the natural coefficients, in one compiled call."""
    moments = joint_fit.acceptance_moments(data, row_weight)
    point_weight = data.point_mask
    total = lambda t: jnp.sum(jnp.stack(joint_fit.moment_objective(t, data, moments, point_weight)))
    return (jax.hessian(total)(theta),
            jax.jacobian(lambda t: joint_fit.natural_coefficients(t, data))(theta))


def undetermined_coefficients(fit, rows, points, fit_target_coeff: bool = True) -> list[str]:
    """The coefficients (laws.COEFFICIENTS names) that move along a flat direction of an
    end-to-end fit whose Hessian is singular (``fit.identifiable`` False).

    The flat directions are the Hessian's eigenvectors below the rank cut-off
    :func:`~sdsl_jax.fitting.uncertainty.delta_method_covariance` applies (p
    eps times the largest eigenvalue), in the fit's coordinates; a natural
    coefficient is undetermined when its gradient has a share of at least
    1e-3 along one of them. The others are estimable: their delta-method
    variances are the same whichever generalised inverse is used. A held
    coefficient (B with ``fit_target_coeff`` False) is not listed. Costs one
    Hessian (compiled once per data shape); an identifiable fit returns [].
    """
    if bool(fit.identifiable):
        return []
    data = joint_fit.prepare(rows, points, padded=True)
    hessian, jacobian = _hessian_and_jacobian(fit.theta, data, joint_fit.pad_rows(data, rows.weight))
    index = np.array([i for i in range(len(laws_lib.COEFFICIENTS))
                      if i != joint_fit.TARGET_COEFF or fit_target_coeff])
    hessian = np.asarray(hessian, np.float64)[np.ix_(index, index)]
    eigenvalues, vectors = np.linalg.eigh(hessian)
    cutoff = index.size * np.finfo(np.asarray(fit.theta).dtype).eps * abs(eigenvalues[-1])
    # At least the flattest direction: the fit called the Hessian singular,
    # and a second eigendecomposition may round its eigenvalue just above the cut-off.
    flat = vectors[:, np.maximum(eigenvalues <= cutoff, eigenvalues == eigenvalues[0])]
    jacobian = np.asarray(jacobian, np.float64)[:, index]
    moved = np.abs(jacobian @ flat).max(axis=1)
    scale = np.abs(jacobian).max(axis=1)
    return [name for name, m, s in zip(laws_lib.COEFFICIENTS, moved, scale)
            if s > 0 and m > _FLAT_SHARE * s]


def select_resamples(samples, decrement, min_share: float = MIN_CONVERGED_SHARE):
    """(the converged resamples' coefficients, or None; how many converged).

    ``samples`` (r, 8) and ``decrement`` (r,) from
    :func:`~sdsl_jax.fitting.joint.bootstrap_joint`. Resamples that fail are
    those where the data barely determine some coefficient, the tails of its
    distribution: the survivors of many failures are not a bootstrap sample,
    so if fewer than ``min_share`` of them (or fewer than 2) converged, None.
    """
    ok = joint_fit.resample_converged(samples, decrement)
    converged = int(ok.sum())
    if converged < max(2, min_share * ok.size):
        return None, converged
    return np.asarray(samples)[ok], converged


def bootstrap_summary(e2e) -> str | None:
    """One line on the resamples that failed, or None if all converged (or none ran)."""
    requested, failed = e2e["bootstrap_requested"], e2e["bootstrap_failed"]
    if requested == 0 or failed == 0:
        return None
    if e2e["bootstrap_resamples"] > 0:
        return (f"bootstrap: {failed} of {requested} resamples did not converge; intervals from "
                f"the {e2e['bootstrap_resamples']} that did")
    return (f"bootstrap: {failed} of {requested} resamples did not converge, too many for "
            f"intervals (at least {MIN_CONVERGED_SHARE:.0%} must); bootstrap intervals unavailable. "
            "The data leave some coefficient poorly determined: use the delta-method "
            "intervals with care, or measure more models.")
