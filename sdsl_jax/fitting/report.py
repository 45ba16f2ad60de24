"""What ``sdsl fit`` does: fit every law to a measurement set, report, save.

Kept out of cli.py so the command line stays a thin parser; the steps here
are the recommended workflow, usable from Python too (:func:`fit_all`).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

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


def fit_all(measurements, *, weighting="auto", bootstrap=200, seed=0, confidence=0.95,
            progress=None, points=None) -> dict:
    """Every fit ``sdsl fit`` reports, as plain Python values, plus the FittedLaws.

    ``points`` (PerplexityPoints) replaces the loss points the pre-training
    law is fitted to, by default the set's distinct models (e.g. to add
    checkpoints trained on fewer tokens, so that D varies).

    Returns a dict with "laws" (FittedLaws of the end-to-end fit, with the
    delta-method covariance and, if bootstrap > 0, the resampled coefficients
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
    plane = plane_fit.fit_acceptance_law(rows, use_target=target_varies)
    per_target = plane_fit.fit_per_target(rows, len(targets))
    huber = None
    if points.params.shape[0] >= 5:
        huber = pretraining_fit.fit_pretraining_law(points.params, points.tokens,
                                                    jnp.log(points.perplexity))
    joint = joint_fit.fit_joint(rows, points, start=None if huber is None else (huber.law, plane.law),
                                fit_target_coeff=target_varies)
    coeffs = np.asarray(joint.laws.coefficients, np.float64)
    if not np.all(np.isfinite(coeffs)):
        raise ValueError("the end-to-end fit diverged (non-finite coefficients): the measurements "
                         "do not determine both laws; measure more (draft, target) pairs and models")
    covariance = joint.laws.covariance
    low, high = (np.array(v, np.float64) for v in uncertainty.normal_intervals(
        joint.laws.coefficients, covariance, confidence, log_scale=_LOG_SCALE))
    # A variance that overflowed (a coefficient fitted near the float limit)
    # gives that coefficient no interval (None in the report), not a zero-width one.
    overflowed = ~np.isfinite(np.diagonal(np.asarray(covariance, np.float64)))
    low[overflowed] = high[overflowed] = np.nan
    if not np.all(np.isfinite(np.asarray(covariance))):
        covariance = None  # a laws file holds a finite covariance or none
    samples, converged = None, 0
    if bootstrap > 0:
        key = jax.random.PRNGKey(seed)
        data = joint_fit.prepare(rows, points)
        chunks, decrements = [], []
        # Chunks of one size (one compiled function) so the progress bar can move.
        for start in range(0, bootstrap, BOOTSTRAP_BATCH):
            size = min(BOOTSTRAP_BATCH, bootstrap - start)
            chunk, decrement = joint_fit.bootstrap_joint(
                joint, rows, points, jax.random.fold_in(key, start), num_resamples=BOOTSTRAP_BATCH,
                batch_size=BOOTSTRAP_BATCH, data=data, fit_target_coeff=target_varies,
                with_decrement=True)
            chunks.append(np.asarray(chunk)[:size])
            decrements.append(np.asarray(decrement)[:size])
            if progress is not None:
                progress(size)
        samples, converged = select_resamples(np.concatenate(chunks), np.concatenate(decrements))
    laws = laws_lib.FittedLaws(pretraining_law=joint.laws.pretraining_law,
                               acceptance_law=joint.laws.acceptance_law,
                               covariance=covariance,
                               samples=None if samples is None else jnp.asarray(samples))

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
        coefficient_table[name] = entry
    plane_se = np.sqrt(np.clip(np.diag(np.asarray(plane.covariance)), 0, None))
    report = {
        "source": measurements.source,
        "measurements": len(measurements),
        "targets": len(targets),
        "models": int(points.params.shape[0]),
        "weighting": "interval" if weighted else "equal",
        "confidence": confidence,
        "acceptance_plane": {
            "draft_coeff": float(plane.law.draft_coeff), "target_coeff": float(plane.law.target_coeff),
            "intercept": float(plane.law.intercept),
            "standard_errors": plane_se.tolist(), "r2": float(plane.r2),
            "rms_residual": float(plane.rms_residual), "identifiable": bool(plane.identifiable),
        },
        "per_target": [
            {"target": targets[t], "measurements": int(per_target.measurements[t]),
             "draft_coeff": _finite(per_target.draft_coeff[t]),
             "intercept": _finite(per_target.intercept[t]),
             "r2": _finite(per_target.r2[t])}
            for t in range(len(targets))],
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
            "bootstrap_requested": bootstrap,
            "bootstrap_failed": bootstrap - converged,
            # The resamples behind the bootstrap intervals (0: none reported).
            "bootstrap_resamples": 0 if samples is None else int(samples.shape[0]),
        },
    }
    return {"laws": laws, "report": laws_lib.json_safe(report)}


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


def _finite(value):
    value = float(value)
    return value if np.isfinite(value) else None


def _fmt(value, spec) -> str:
    """``value`` formatted, or n/a where the report has none (None)."""
    return "n/a" if value is None else format(value, spec)


def _interval(low, high) -> str:
    if low is None or high is None:
        return "n/a"
    return f"[{low:.4g}, {high:.4g}]"


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


def _print_report(report, out_path) -> None:
    e2e = report["end_to_end"]
    level = f"{report['confidence']:.0%}"
    print(f"Fitted {report['measurements']} measurements ({report['targets']} targets, "
          f"{report['models']} distinct models) from {report['source']}; "
          f"weights: {report['weighting']}")
    plane = report["acceptance_plane"]
    se = plane["standard_errors"]
    print("\nAcceptance plane on measured perplexities, alpha = A x + B y + C:")
    for name, key, s in (("A (draft)", "draft_coeff", se[0]), ("B (target)", "target_coeff", se[1]),
                         ("C", "intercept", se[2])):
        print(f"  {name:<11} {_fmt(plane[key], ' .5g')}  +- {_fmt(s, '.2g')} (s.e.)")
    print(f"  R^2 {_fmt(plane['r2'], '.4f')}, rms residual {_fmt(plane['rms_residual'], '.4f')}")
    print("\nPer target, alpha = A_t x + C_t:")
    width = max(len(t["target"]) for t in report["per_target"])
    for t in report["per_target"]:
        if t["draft_coeff"] is None:
            print(f"  {t['target']:<{width}}  {t['measurements']:>4} rows  (one draft perplexity: "
                  "no slope to fit)")
            continue
        print(f"  {t['target']:<{width}}  {t['measurements']:>4} rows  A_t {t['draft_coeff']: .5f}  "
              f"C_t {_fmt(t['intercept'], ' .4f')}  R^2 {_fmt(t['r2'], '.3f')}")
    print(f"\nBoth laws end to end (acceptance from N, D, M, D'), {level} intervals:")
    has_boot = e2e["bootstrap_resamples"] > 0
    header = f"  {'coefficient':<17} {'estimate':>11}   {'delta method':<25}"
    if has_boot:
        header += f" bootstrap ({e2e['bootstrap_resamples']})"
    print(header)
    for name, entry in e2e["coefficients"].items():
        line = (f"  {name:<17} {entry['estimate']:>11.5g}   "
                f"{_interval(entry['delta_low'], entry['delta_high']):<25}")
        if has_boot:
            line += f" {_interval(entry['bootstrap_low'], entry['bootstrap_high'])}"
        print(line)
    worst = e2e["worst_residual"]
    print(f"  acceptance R^2 {_fmt(e2e['acceptance_r2'], '.4f')} (from sizes alone), loss R^2 "
          f"{_fmt(e2e['loss_r2'], '.4f')}, rms residual {_fmt(e2e['rms_residual'], '.4f')}; worst "
          f"residual {_fmt(worst['residual'], '+.4f')} at row {worst['row']} "
          f"({worst['draft']} -> {worst['target']})")
    note = bootstrap_summary(e2e)
    if note is not None:
        print(f"  {note}")
    if not e2e["identifiable"]:
        print("  warning: the data do not determine every coefficient (singular Hessian); "
              "the delta-method intervals of the undetermined ones are not meaningful. "
              "Measure more targets, or drafts trained on more varied data.")
    if not e2e["converged"]:
        print("  warning: the optimiser stopped before its gradient tolerance; the estimates "
              "may be off in poorly determined directions.")
    print(f"\nWrote the end-to-end laws to {out_path}")
    print(f"Plan with them: sdsl plan --laws {out_path} --target-params 70B --target-tokens 15T")


def run(args, usage_error) -> int:
    """The ``sdsl fit`` command."""
    from tqdm import tqdm

    from sdsl_jax.estimation.measurements import MeasurementError, read_measurements

    if args.bootstrap < 0:
        raise usage_error(f"sdsl fit: argument --bootstrap: must be >= 0, got {args.bootstrap}")
    if not 0 < args.confidence < 1:
        raise usage_error(f"sdsl fit: argument --confidence: must lie in (0, 1), got {args.confidence}")
    out = args.out or f"{os.path.splitext(args.measurements)[0]}.laws.json"
    if os.path.exists(out) and not args.overwrite:
        raise usage_error(f"sdsl fit: {out} exists; pass --overwrite to replace it or --out FILE")
    try:
        measurements = read_measurements(args.measurements)
    except MeasurementError as err:
        raise usage_error(str(err)) from None
    except OSError as err:
        raise usage_error(f"{args.measurements}: cannot read ({err.strerror})") from None
    if len(measurements) < 4:
        raise usage_error(f"{args.measurements}: {len(measurements)} measurements cannot determine "
                          "the acceptance plane's 3 coefficients with any error bar; need at least 4")
    try:
        with tqdm(total=args.bootstrap, unit="resample", desc="bootstrap", disable=None,
                  file=sys.stderr) as bar:
            result = fit_all(measurements, weighting=args.weighting, bootstrap=args.bootstrap,
                             seed=args.seed, confidence=args.confidence, progress=bar.update)
    except ValueError as err:
        raise usage_error(f"sdsl fit: {err}") from None
    report = result["report"]
    try:
        laws_lib.save_laws(out, result["laws"], summary=report)
    except OSError as err:
        raise usage_error(f"sdsl fit: cannot write {out} ({err.strerror})") from None
    if args.json:
        print(json.dumps(dict(report, laws_file=out), allow_nan=False))
        note = bootstrap_summary(report["end_to_end"])
        if note is not None:
            print(note, file=sys.stderr)
    else:
        _print_report(report, out)
    return 0
