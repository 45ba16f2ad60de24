"""Stage 5: predict N* for every target from the fitted laws, with an interval.

The FLOP planner (:func:`sdsl_jax.fitting.uncertainty.draft_size_interval`)
on the laws of stage 4: N* maximises tokens per FLOP for the target's size
M and the training tokens D = D' of the run; the interval carries the
coefficients' uncertainty (the delta method, or the bootstrap when the fit
has resamples). For every draft of the ladder the same chain gives the
predicted acceptance and speedup, at the optimal lookahead and at the one
the loop measured; the law's pick is the ladder draft it predicts fastest.
"""

from __future__ import annotations

import math
import os

from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.presets import params as size_params


def _float(value):
    value = float(value)
    return value if math.isfinite(value) else None


def run(ctx: Context) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sdsl_jax import acceptance_law, pretraining_law, throughput
    from sdsl_jax.fitting.laws import load_laws
    from sdsl_jax.fitting.uncertainty import draft_size_interval

    preset = ctx.preset
    targets = sorted(preset.targets, key=size_params)
    tokens = float(preset.train_tokens)
    with jax.enable_x64(True):
        laws = load_laws(os.path.join(ctx.run.root, ctx.run.output("acceptance")["laws_file"]))
        method = "bootstrap" if laws.samples is not None else "delta"
        target_params = jnp.asarray([size_params(t) for t in targets], jnp.float64)
        interval = draft_size_interval(laws, target_params, tokens, tokens, method=method)
        plan = interval.plan
        results = []
        for k, target in enumerate(targets):
            m = float(target_params[k])
            drafts = preset.drafts_of(target)
            n = jnp.asarray([size_params(d) for d in drafts], jnp.float64)
            x = pretraining_law.perplexity(laws.pretraining_law, n, tokens)
            y = pretraining_law.perplexity(laws.pretraining_law, m, tokens)
            alpha = acceptance_law.acceptance(laws.acceptance_law, x, y)
            at_lookahead = throughput.speedup(alpha, preset.lookahead, n / m)
            best = throughput.optimal_speedup(alpha, n / m)
            gamma = throughput.optimal_lookahead(alpha, n / m)
            ladder = [{"draft": d, "draft_params": int(n[i]), "draft_perplexity": _float(x[i]),
                       "acceptance": _float(alpha[i]), "speedup_at_lookahead": _float(at_lookahead[i]),
                       "optimal_speedup": _float(best[i]), "optimal_lookahead": _float(gamma[i]),
                       "distance": abs(float(n[i]) - float(plan.draft_params[k])) / m}
                      for i, d in enumerate(drafts)]
            pick = max(ladder, key=lambda r: r["speedup_at_lookahead"] or -1.0)
            pays = bool(plan.pays[k])
            results.append({
                "target": target, "target_params": int(m), "target_tokens": tokens,
                "draft_tokens": tokens, "target_perplexity": _float(plan.target_perplexity[k]),
                "n_star": _float(plan.draft_params[k]), "n_star_low": _float(interval.low[k]),
                "n_star_high": _float(interval.high[k]), "cost_ratio": _float(plan.cost_ratio[k]),
                "pays": pays, "pays_fraction": _float(interval.pays_fraction[k]),
                "acceptance": _float(plan.acceptance[k]), "lookahead": _float(plan.lookahead[k]),
                "integer_lookahead": _float(plan.integer_lookahead[k]),
                "speedup": _float(plan.speedup[k]), "draft_perplexity": _float(plan.draft_perplexity[k]),
                "extrapolated": bool(plan.extrapolated[k]), "at_bound": bool(plan.at_bound[k]),
                "ladder": ladder, "pick": pick["draft"],
                "pick_pays": bool((pick["speedup_at_lookahead"] or 0.0) > 1.0)})
    return {"interval_method": method, "confidence": 0.95, "measured_lookahead": preset.lookahead,
            "targets": results}
