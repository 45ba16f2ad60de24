"""Stage 5: predict N* for every target from the fitted laws, with an interval.

The FLOP planner on the laws of stage 4: N* maximises tokens per FLOP for the
target's size M and the training tokens D = D' of the run; the interval
carries the coefficients' uncertainty (the delta method, or the bootstrap when
the fit has resamples), as :func:`sdsl_jax.fitting.uncertainty.draft_size_interval`
computes it. The call goes through :func:`sdsl_jax.plots.bands.plan_draft_sizes`,
the same compiled planner the throughput figure uses. For every draft of
the ladder the chain (:mod:`.chain`) gives the predicted acceptance and
speedup, at the optimal lookahead and at the one the loop measured; the
law's pick is the ladder draft it predicts fastest.
"""

from __future__ import annotations

import os

from sdsl_jax.common.validation import finite_or_none
from sdsl_jax.reproduce import chain
from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.presets import params as size_params


def run(ctx: Context) -> dict:
    import jax
    import numpy as np

    from sdsl_jax.fitting.laws import load_laws
    from sdsl_jax.plots import bands

    preset = ctx.preset
    targets = sorted(preset.targets, key=size_params)
    tokens = float(preset.train_tokens)
    pairs = preset.pairs()
    with jax.enable_x64(True):
        laws = load_laws(os.path.join(ctx.run.root, ctx.run.output("acceptance")["laws_file"]))
        # A fit that left a coefficient undetermined carries neither samples nor a
        # covariance (fitting.report): N* is then reported without an interval.
        interval = ("bootstrap" if laws.samples is not None else
                    "delta" if laws.covariance is not None else None)
        target_params = np.array([size_params(t) for t in targets], np.float64)
        plan, low, high = bands.plan_draft_sizes(laws, target_params, tokens, tokens, interval=interval)
        at = chain.evaluate(laws, [size_params(d) for d, _ in pairs],
                            [size_params(t) for _, t in pairs], tokens, tokens, preset.lookahead)
    results = []
    for k, target in enumerate(targets):
        m = float(target_params[k])
        ladder = []
        for i, (draft, t) in enumerate(pairs):
            if t != target:
                continue
            n = size_params(draft)
            ladder.append({"draft": draft, "draft_params": n,
                           **{key: finite_or_none(at[key][i]) for key in at
                              if key != "target_perplexity"},
                           "distance": abs(n - float(plan.draft_params[k])) / m})
        pick = max(ladder, key=lambda r: r["speedup_at_lookahead"] or -1.0)
        results.append({
            "target": target, "target_params": int(m), "target_tokens": tokens,
            "draft_tokens": tokens, "target_perplexity": finite_or_none(plan.target_perplexity[k]),
            "n_star": finite_or_none(plan.draft_params[k]),
            "n_star_low": None if low is None else finite_or_none(low[k]),
            "n_star_high": None if high is None else finite_or_none(high[k]), "cost_ratio": finite_or_none(plan.cost_ratio[k]),
            "pays": bool(plan.pays[k]), "acceptance": finite_or_none(plan.acceptance[k]),
            "lookahead": finite_or_none(plan.lookahead[k]),
            "integer_lookahead": finite_or_none(plan.integer_lookahead[k]),
            "speedup": finite_or_none(plan.speedup[k]),
            "draft_perplexity": finite_or_none(plan.draft_perplexity[k]),
            "extrapolated": bool(plan.extrapolated[k]), "at_bound": bool(plan.at_bound[k]),
            "ladder": ladder, "pick": pick["draft"],
            "pick_pays": bool((pick["speedup_at_lookahead"] or 0.0) > 1.0)})
    return {"interval_method": interval, "confidence": 0.95, "measured_lookahead": preset.lookahead,
            "targets": results}
