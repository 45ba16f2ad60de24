"""Stage 4: fit the acceptance law, and both laws end to end, with intervals.

This is ``sdsl fit`` (:func:`sdsl_jax.fitting.report.fit_all`) on the loop's rows,
with one difference: the pre-training block is fitted to every scored
checkpoint of stage 1 (D varies), not only to the finished models (one D).
It reports the plane alpha = A x + B y + C on the measured perplexities (with
standard errors), each target's line alpha = A_t x + C_t, and the
end-to-end fit of all eight coefficients (acceptance predicted from N, D, M,
D' alone) with delta-method intervals, and bootstrap ones when the preset
asks for resamples. The laws go to ``laws.json`` for ``sdsl plan --laws``.
"""

from __future__ import annotations

from sdsl_jax.common.validation import finite_or_none
from sdsl_jax.reproduce import chain
from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.manifest import ReproduceError

Z_95 = 1.959963984540054


def run(ctx: Context) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sdsl_jax.fitting import report as fit_report
    from sdsl_jax.fitting import laws as laws_lib
    from sdsl_jax.fitting.data import PerplexityPoints
    from sdsl_jax.estimation.measurements import MeasurementError, read_measurements

    rows_file = ctx.run.output("measure")["rows_file"]
    try:
        measurements = read_measurements(f"{ctx.run.root}/{rows_file}")
    except MeasurementError as err:
        raise ReproduceError(str(err)) from None
    points = ctx.run.output("train")["loss_points"]
    with jax.enable_x64(True):
        loss_points = PerplexityPoints(
            num_params=jnp.asarray([p["params"] for p in points], jnp.float64),
            tokens=jnp.asarray([p["tokens"] for p in points], jnp.float64),
            perplexity=jnp.exp(jnp.asarray([p["validation_loss"] for p in points], jnp.float64)))
        try:
            result = fit_report.fit_all(measurements, bootstrap=ctx.preset.bootstrap,
                                        seed=ctx.preset.seed, points=loss_points)
        except ValueError as err:
            raise ReproduceError(f"fitting the laws: {err}") from None
        laws = result["laws"]
        laws_lib.save_laws(ctx.run.path("laws.json"), laws, summary=result["report"])
        report = result["report"]
        plane = report["acceptance_plane"]
        # Every pair: measured alpha, the plane at its measured perplexities,
        # and the end-to-end chain from sizes and tokens alone.
        cols = measurements.columns
        x = np.asarray(cols["draft_perplexity"], np.float64)
        y = np.asarray(cols["target_perplexity"], np.float64)
        # A plane the data cannot determine (collinear perplexities) has no
        # coefficients to evaluate: its column is NaN, written as null.
        determined = all(plane[key] is not None
                         for key in ("draft_coeff", "target_coeff", "intercept"))
        on_plane = (plane["draft_coeff"] * x + plane["target_coeff"] * y + plane["intercept"]
                    if determined else np.full_like(x, np.nan))
        from_sizes = chain.evaluate(laws, cols["draft_params"], cols["target_params"],
                                    cols["draft_tokens"], cols["target_tokens"],
                                    cols["lookahead"])["acceptance"]
    measured = measurements.acceptance
    pairs = [{"draft": str(d), "target": str(t), "acceptance": float(a),
              "plane": finite_or_none(p), "end_to_end": float(c)}
             for d, t, a, p, c in zip(measurements.draft_names, measurements.target_names,
                                      measured, on_plane, from_sizes)]
    se = plane["standard_errors"]
    plane_intervals = {key: {"estimate": plane[key],
                             "low": None if s is None or plane[key] is None else plane[key] - Z_95 * s,
                             "high": None if s is None or plane[key] is None else plane[key] + Z_95 * s}
                       for key, s in zip(("draft_coeff", "target_coeff", "intercept"), se)}
    return {"report": laws_lib.json_safe(report),
            "plane_intervals": laws_lib.json_safe(plane_intervals), "pairs": pairs,
            "laws_file": "laws.json"}
