"""The law chain N -> x, M -> y -> alpha -> speedup at many (draft, target) pairs in one compiled call.

Stages 4-6 evaluate the fitted laws at the run's pairs; done op by op, each of
the chain's few dozen operations (Lambert W among them) would compile on its
own, per stage. Here the whole chain is one jitted function of the
coefficient vector, and the pairs are padded to a fixed bucket so every stage
(and every run in one process) shares a single compilation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.buckets import bucket
from sdsl_jax.laws import acceptance as acceptance_law, pretraining as pretraining_law, throughput
from sdsl_jax.fitting import laws as laws_lib

BUCKET = 16


@jax.jit
def _chain(vector, draft_params, target_params, draft_tokens, target_tokens, lookahead):
    pre, acc = laws_lib.laws_from_vector(vector)
    x = pretraining_law.perplexity(pre, draft_params, draft_tokens)
    y = pretraining_law.perplexity(pre, target_params, target_tokens)
    alpha = acceptance_law.acceptance(acc, x, y)
    cost_ratio = draft_params / target_params
    return {"draft_perplexity": x, "target_perplexity": y, "acceptance": alpha,
            "speedup_at_lookahead": throughput.speedup(alpha, lookahead, cost_ratio),
            "optimal_speedup": throughput.optimal_speedup(alpha, cost_ratio),
            "optimal_lookahead": throughput.optimal_lookahead(alpha, cost_ratio)}


def evaluate(laws, draft_params, target_params, draft_tokens, target_tokens, lookahead) -> dict:
    """The chain under ``laws`` (FittedLaws) at each pair: numpy float64 arrays of the pairs' length.

    Keys: draft_perplexity, target_perplexity, acceptance (clipped as the law
    documents), speedup_at_lookahead (cost ratio N / M, the FLOP law),
    optimal_speedup and optimal_lookahead (over a real lookahead).
    """
    arrays = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64))
                                   for v in (draft_params, target_params, draft_tokens,
                                             target_tokens, lookahead)))
    count = arrays[0].size
    size = bucket(count, BUCKET)
    dtype = jnp.result_type(float)
    padded = [jnp.asarray(np.resize(a, size), dtype) for a in arrays]  # repeats: valid inputs
    out = _chain(jnp.asarray(laws.coefficients, dtype), *padded)
    return {key: np.asarray(value, np.float64)[:count] for key, value in out.items()}
