"""Stage 2: fit the pre-training law L(N, D) = E + A / N^a + B / D^b to the checkpoints' losses.

The fit is :func:`sdsl_jax.fitting.pretraining.fit_pretraining_law` (Huber on
log L from a grid of starts). Its intervals come from the delta method on
the Gaussian likelihood of the log-loss residuals at the fitted point, with
the noise variance profiled out (:func:`sdsl_jax.fitting.uncertainty.
delta_method_covariance`): the same construction as the end-to-end fit's,
for this block alone. Stage 4 refits the law jointly with the acceptance
plane; both are reported.
"""

from __future__ import annotations

from sdsl_jax.common.validation import finite_or_none
from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.manifest import ReproduceError

FIELDS = ("irreducible_loss", "param_coeff", "param_exponent", "data_coeff", "data_exponent")
LOG_SCALE = (True, True, False, True, False)  # fitted as logarithms: intervals symmetric in log


def _delta_intervals(theta, num_params, tokens, loss):
    """(estimate, low, high, identifiable, fitted loss) at the fitted point, in one compilation."""
    import jax.numpy as jnp

    from sdsl_jax.laws import pretraining as pretraining_law
    from sdsl_jax.fitting import pretraining as pretraining_fit
    from sdsl_jax.fitting.acceptance import concentrated_nll
    from sdsl_jax.fitting.uncertainty import delta_method_covariance, normal_intervals

    def nll(t):
        residual = jnp.log(loss) - pretraining_fit.predicted_log_loss(t, jnp.log(num_params),
                                                                      jnp.log(tokens))
        return concentrated_nll(jnp.sum(residual**2), loss.size)

    def natural(t):
        law = pretraining_fit.from_theta(t)
        return jnp.stack([jnp.asarray(getattr(law, f)) for f in FIELDS])

    covariance, identifiable = delta_method_covariance(nll, theta, natural, (True,) * 5, loss.size)
    estimate = natural(theta)
    low, high = normal_intervals(estimate, covariance, 0.95, log_scale=jnp.asarray(LOG_SCALE))
    fitted = pretraining_law.loss(pretraining_fit.from_theta(theta), num_params, tokens)
    return estimate, low, high, identifiable, fitted


def run(ctx: Context) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sdsl_jax.fitting import pretraining as pretraining_fit

    points = ctx.run.output("train")["loss_points"]
    if len(points) < 5:
        raise ReproduceError(f"{len(points)} loss points cannot fix the pre-training law's 5 "
                             "coefficients")
    with jax.enable_x64(True):
        n = jnp.asarray([p["params"] for p in points], jnp.float64)
        d = jnp.asarray([p["tokens"] for p in points], jnp.float64)
        loss = jnp.asarray([p["validation_loss"] for p in points], jnp.float64)
        fit = pretraining_fit.fit_pretraining_law(n, d, loss)
        estimate, low, high, identifiable, predicted = jax.jit(_delta_intervals)(
            pretraining_fit.to_theta(fit.law), n, d, loss)
    coefficients = {f: {"estimate": float(estimate[i]), "low": finite_or_none(low[i]),
                        "high": finite_or_none(high[i])} for i, f in enumerate(FIELDS)}
    residuals = np.asarray(loss - predicted, np.float64)
    table = [dict(p, predicted_loss=float(predicted[i]), residual=float(residuals[i]))
             for i, p in enumerate(points)]
    return {"coefficients": coefficients, "r2": float(fit.r2),
            "rms_residual": float(np.sqrt(np.mean(residuals**2))),
            "converged": bool(fit.converged), "identifiable": bool(identifiable),
            "points": table, "confidence": 0.95,
            "interval_method": "delta method, Gaussian likelihood of log-loss residuals"}
