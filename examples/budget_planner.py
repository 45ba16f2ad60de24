"""Split one training budget between several drafts, with the budget planner inside your own jit.

A team serves three targets (8B, 70B, 405B) that take 50%, 30% and 20% of the
traffic, and has 3e21 FLOPs to train one draft for each. For a given split,
the budget planner chooses each draft's size and training tokens (6 N D <= C)
and predicts its speedup; the traffic-weighted speedup is then an ordinary
differentiable JAX function of the split, so optax can climb it.

    python examples/budget_planner.py
"""

import jax
import jax.numpy as jnp
import optax

import sdsl_jax as sd
from sdsl_jax.planning.budget import optimal_draft_under_budget

jax.config.update("jax_enable_x64", True)

TARGETS = jnp.array([8e9, 70e9, 405e9])
TARGET_TOKENS = 15e12
TRAFFIC = jnp.array([0.5, 0.3, 0.2])
TOTAL_FLOPS = 3e21


def show(title, shares):
    plan = optimal_draft_under_budget(TARGETS, TARGET_TOKENS, TOTAL_FLOPS * shares)
    print(title)
    for i in range(3):
        print(f"  target {sd.format_count(float(TARGETS[i])):>5}: {float(shares[i]):5.1%} of the budget -> "
              f"N* = {sd.format_count(float(plan.draft_params[i])):>5} on "
              f"D* = {sd.format_count(float(plan.draft_tokens[i])):>5} tokens, "
              f"speedup {float(plan.speedup[i]):.3f}x, "
              f"+{float(plan.speedup_per_log_budget[i]):.4f}x per e-fold more budget")
    print(f"  traffic-weighted speedup {float(jnp.sum(TRAFFIC * plan.speedup)):.4f}x")
    return plan


# 1. An even split, and what one more unit of budget is worth for each draft.
show("Even split:", jnp.full(3, 1 / 3))


# 2. Your own jitted planner: the weighted speedup as a function of the split's
#    logits, differentiated straight through the budget planner's solver.
@jax.jit
def weighted_speedup(logits):
    shares = jax.nn.softmax(logits)
    plan = optimal_draft_under_budget(TARGETS, TARGET_TOKENS, TOTAL_FLOPS * shares)
    return jnp.sum(TRAFFIC * plan.speedup)


optimizer = optax.adam(0.05)


@jax.jit
def step(logits, state):
    value, grad = jax.value_and_grad(weighted_speedup)(logits)
    updates, state = optimizer.update(-grad, state)  # ascend
    return optax.apply_updates(logits, updates), state, value


logits = jnp.zeros(3)
state = optimizer.init(logits)
for _ in range(200):
    logits, state, value = step(logits, state)

shares = jax.nn.softmax(logits)
plan = show("\nBest split found by gradient ascent:", shares)
# At the optimum, one more FLOP is worth the same wherever it goes:
# traffic_i * dS_i/dlogC_i / C_i is equal across the drafts.
marginal = TRAFFIC * plan.speedup_per_log_budget / (TOTAL_FLOPS * shares)
print("  weighted speedup per extra FLOP, per draft: "
      + ", ".join(f"{float(v):.3e}" for v in marginal))
