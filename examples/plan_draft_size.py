"""Plan a draft model for a few targets, then use the planner inside your own jit.

    python examples/plan_draft_size.py
"""

import jax
import jax.numpy as jnp

import sdsl_jax as sd

jax.config.update("jax_enable_x64", True)

# 1. One answer per target, as the CLI would print it.
for target_params, target_tokens in [(8e9, 15e12), (70e9, 15e12), (405e9, 15e12)]:
    plan = sd.optimal_draft_size(target_params, draft_tokens=target_tokens, target_tokens=target_tokens)
    print(f"target {sd.format_count(target_params):>5}: N* = {sd.format_count(float(plan.draft_params)):>5}, "
          f"alpha = {float(plan.acceptance):.3f}, lookahead = {int(plan.integer_lookahead)}, "
          f"speedup = {float(plan.speedup):.2f}x")


# 2. The planner is an ordinary differentiable JAX function: here a budget
#    planner asks how the best achievable speedup responds to training the
#    draft on more tokens, for a whole grid of targets at once.
@jax.jit
def speedup_per_decade_of_draft_data(target_params, draft_tokens):
    def best_speedup(target, log10_tokens):
        return sd.optimal_draft_size(target, 10.0 ** log10_tokens, 15e12).speedup
    return jax.vmap(jax.grad(best_speedup, argnums=1))(target_params, jnp.log10(draft_tokens))


targets = jnp.array([8e9, 70e9, 405e9])
gains = speedup_per_decade_of_draft_data(targets, jnp.full(3, 1e12))
for m, g in zip(targets, gains):
    print(f"target {sd.format_count(float(m)):>5}: +{float(g):.3f}x speedup per 10x more draft tokens")
