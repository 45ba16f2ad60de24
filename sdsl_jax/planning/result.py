"""The fields every plan shares: what they read where no draft pays, and the decision flags.

A planner evaluates its quantities at the solution N* whether or not drafting
pays there. Where it does not, the plan reports decoding with the target
alone instead: no draft (draft_params, cost_ratio, acceptance, lookahead 0,
draft perplexity inf) and a speedup of 1. :data:`NO_DRAFT` holds those
values; :func:`assemble` applies them and adds the three flags:

* pays: some draft size beats decoding with the target alone;
* extrapolated: drafting pays and alpha at N* comes from outside the
  acceptance plane's range, raw alpha < 0 or > MAX_ACCEPTANCE, or from the
  window's top end where the plane reaches the cap (rounding may leave raw
  alpha a hair below the cap there);
* at_bound: drafting pays and N* sits on an end of the searched range.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp

from sdsl_jax.laws import acceptance as acceptance_lib

# Each field's value when decoding with the target alone.
NO_DRAFT = {
    "draft_params": 0.0,
    "draft_tokens": 0.0,
    "cost_ratio": 0.0,
    "draft_perplexity": jnp.inf,
    "acceptance": 0.0,
    "lookahead": 0.0,
    "integer_lookahead": 0.0,
    "speedup": 1.0,
    "integer_speedup": 1.0,
    "draft_step_seconds": 0.0,
}


def assemble(pays, drafted: Mapping[str, jnp.ndarray], *, raw_acceptance, clipped_at_cap,
             at_bound, fallbacks: Mapping[str, jnp.ndarray] | None = None) -> dict:
    """The plan's draft-dependent fields and its flags (module doc).

    Args:
      pays: where drafting pays at the solution.
      drafted: field name -> value with the draft; each becomes
        where(pays, value, fallback), the fallback from :data:`NO_DRAFT` or,
        for a field it lacks or overrides, from ``fallbacks``.
      raw_acceptance: the acceptance plane before clipping, at the solution.
      clipped_at_cap: where the solution sits at the window's top end cut at
        the acceptance cap.
      at_bound: where the solution sits on an end of the search range.

    Returns:
      A dict of the masked ``drafted`` fields (in their order), then pays,
      extrapolated and at_bound.
    """
    fallbacks = {**NO_DRAFT, **(fallbacks or {})}
    fields = {name: jnp.where(pays, value, fallbacks[name]) for name, value in drafted.items()}
    outside = (raw_acceptance < 0) | (raw_acceptance > acceptance_lib.MAX_ACCEPTANCE)
    return dict(fields, pays=pays, extrapolated=pays & (outside | clipped_at_cap),
                at_bound=pays & at_bound)
