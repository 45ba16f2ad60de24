"""The speculative loop against its own model forward passes, and against the law.

Two questions, on toy decoders whose cost is a matmul-heavy MLP of
configurable size (sdsl_jax.models.ngram.mlp_ngram_decoder), so that the
forwards, not dispatch, dominate:

1. Loop overhead. The compiled loop's time per iteration against a bare
   compiled loop that makes the same forward calls with the same shapes
   (one two-token draft forward, gamma - 1 one-token draft forwards, one
   (gamma + 1)-token target forward) and nothing else (argmax feeds the next
   token). Goal: overhead <= 10% of an iteration.

2. Speedup. Measured tokens per second of speculative decoding over the
   autoregressive baseline (the same loop with lookahead 0), against the
   throughput law S = E(alpha, gamma) / (gamma c + 1) with alpha from the
   accepted counts (sdsl_jax.estimation.acceptance) and c = the measured time
   of one draft step over one target step. The law costs verification as
   one target step. That holds on memory-bound accelerators, and in the
   "per-forward" cost model here (the MLP runs once per forward); in the
   "per-token" model a CPU verifying gamma + 1 tokens pays several steps,
   so the law is also shown with the measured verification cost v (time of
   the (gamma + 1)-token target forward over a one-token one):
   S_v = E / (gamma c + v).

    python benchmarks/bench_loop.py [--lookahead 4] [--max-new 96] [--prompts 6]
"""

from __future__ import annotations

import argparse
import os
import time

# One compute thread: on a shared CPU a multi-threaded matmul waits for its
# slowest, descheduled thread, and timings scatter. Set XLA_FLAGS to override.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.estimation.acceptance import estimate_acceptance
from sdsl_jax.decoding import loop, metrics
from sdsl_jax.laws.throughput import expected_tokens, speedup
from sdsl_jax.models.ngram import mlp_ngram_decoder, ngram_decoder


def make_pair(args, per_token: bool):
    rng = np.random.default_rng(args.seed)
    table = 2.0 * rng.normal(size=(args.vocab,) * 2).astype(np.float32)
    draft_table = table + args.draft_noise * rng.normal(size=table.shape).astype(np.float32)
    target = mlp_ngram_decoder(1, table, args.target_width, args.target_depth, per_token=per_token,
                               name="target")
    draft = mlp_ngram_decoder(2, draft_table, args.draft_width, args.draft_depth,
                              per_token=per_token, name="draft")
    return draft, target


CLOCK = time.perf_counter


def timed(fn, *args):
    start = CLOCK()
    jax.block_until_ready(fn(*args))
    return CLOCK() - start


def forward_chain(decoder, width, max_len):
    """`steps` forwards of `width` tokens each, the next input the argmax
    (steps is traced: one compilation for any count)."""
    def run(params, cache, steps):
        def body(i, carry):
            cache, tok = carry
            start = jnp.full((1,), 4 + i % (max_len - width - 4), jnp.int32)
            logits, cache = decoder.forward(params, tok, start, cache)
            return cache, jnp.argmax(logits, -1).astype(jnp.int32)
        return jax.lax.fori_loop(0, steps, body, (cache, jnp.zeros((1, width), jnp.int32)))
    fn = jax.jit(run)
    cache = decoder.init_cache(1, max_len)
    return lambda steps: fn(decoder.params, cache, steps)


def bare_iterations(draft, target, gamma, max_len):
    """The loop's forward calls and nothing else, for `steps` iterations."""
    def run(draft_params, target_params, draft_cache, target_cache, steps):
        def body(i, carry):
            draft_cache, target_cache, last_two = carry
            pos = 4 + i % (max_len - gamma - 6)
            logits, draft_cache = draft.forward(draft_params, last_two, jnp.full((1,), pos, jnp.int32),
                                                draft_cache)
            tok = jnp.argmax(logits[:, 1], -1).astype(jnp.int32)

            def draft_step(c, j):
                cache, tok = c
                logits, cache = draft.forward(draft_params, tok[:, None],
                                              jnp.full((1,), pos + 1 + j, jnp.int32), cache)
                tok = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
                return (cache, tok), tok

            (draft_cache, _), toks = jax.lax.scan(draft_step, (draft_cache, tok),
                                                  jnp.arange(gamma - 1))
            drafted = jnp.concatenate([tok[:, None], toks.T], axis=1)
            verify = jnp.concatenate([last_two[:, 1:], drafted], axis=1)
            logits, target_cache = target.forward(target_params, verify,
                                                  jnp.full((1,), pos + 1, jnp.int32), target_cache)
            nxt = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
            return draft_cache, target_cache, jnp.stack([drafted[:, -1], nxt], axis=1)
        return jax.lax.fori_loop(0, steps, body, (draft_cache, target_cache,
                                                  jnp.zeros((1, 2), jnp.int32)))
    fn = jax.jit(run)
    caches = (draft.init_cache(1, max_len), target.init_cache(1, max_len))
    return lambda steps: fn(draft.params, target.params, *caches, steps)


def decode_timed(draft, target, prompt, i, lookahead, args):
    tokens, lengths = loop.pad_prompts([prompt], args.prompt_len)
    keys = loop.row_keys(jax.random.PRNGKey(args.seed), jnp.array([i]))
    return metrics.timed_generate(draft, target, tokens, lengths, keys, lookahead=lookahead,
                                  max_new_tokens=args.max_new, temperature=args.temperature,
                                  clock=CLOCK)


def bench(args, per_token: bool):
    name = "per-token" if per_token else "per-forward"
    draft, target = make_pair(args, per_token)
    gamma = args.lookahead
    max_len = args.prompt_len + args.max_new + gamma + 1
    rng = np.random.default_rng(args.seed + 1)
    prompts = [rng.integers(0, args.vocab, size=args.prompt_len).tolist()
               for _ in range(args.prompts)]
    print(f"\n== cost model: {name} MLP; target {target.num_params:,} params "
          f"(width {args.target_width} x {args.target_depth}), draft {draft.num_params:,} "
          f"(width {args.draft_width} x {args.draft_depth}); vocab {args.vocab}, "
          f"lookahead {gamma}, {args.max_new} new tokens, {args.prompts} prompts x "
          f"{args.repeats} rounds, temperature {args.temperature}")

    chains = {"draft": forward_chain(draft, 1, max_len), "target": forward_chain(target, 1, max_len),
              "verify": forward_chain(target, gamma + 1, max_len),
              "draft_pair": forward_chain(draft, 2, max_len)}
    bare = bare_iterations(draft, target, gamma, max_len)
    # Compile and warm up everything once.
    for chain in chains.values():
        jax.block_until_ready(chain(2))
    jax.block_until_ready(bare(2))
    decode_timed(draft, target, prompts[0], 0, gamma, args)
    decode_timed(None, target, prompts[0], 0, 0, args)

    # Paired, interleaved measurements: a disturbance from other work on a
    # shared machine hits both members of a pair, and medians of the per-pair
    # ratios shrug off the rounds it hit hardest.
    unit_steps = 64
    ratios = {"c": [], "v": [], "pair": [], "overhead": [], "base_overhead": [], "speedup": []}
    spec_runs, base_runs = [], []
    for _ in range(args.repeats):
        t = {k: timed(chain, unit_steps) / unit_steps for k, chain in chains.items()}
        ratios["c"].append(t["draft"] / t["target"])
        ratios["v"].append(t["verify"] / t["target"])
        ratios["pair"].append(t["draft_pair"] / t["draft"])
        for i, prompt in enumerate(prompts):
            gen, timing = decode_timed(draft, target, prompt, i, gamma, args)
            steps = int(gen.num_steps)
            bare_s = timed(bare, steps)
            base, base_timing = decode_timed(None, target, prompt, i, 0, args)
            target_s = timed(chains["target"], int(base.num_steps))
            ratios["overhead"].append(1 - bare_s / timing.decode_seconds)
            ratios["base_overhead"].append(1 - target_s / base_timing.decode_seconds)
            ratios["speedup"].append(
                ((int(gen.num_generated[0]) - 1) / timing.decode_seconds)
                / ((int(base.num_generated[0]) - 1) / base_timing.decode_seconds))
            spec_runs.append((timing.decode_seconds, gen))
            base_runs.append((base_timing.decode_seconds, base))
    med = {k: float(np.median(v)) for k, v in ratios.items()}
    c, v = med["c"], med["v"]
    print(f"[units] cost ratio c = draft step / target step = {c:.4f}; verify ({gamma + 1} "
          f"tokens) = {v:.2f} target steps; 2-token draft forward = {med['pair']:.2f} draft steps")
    print(f"[overhead] loop time beyond the same forward calls in a bare loop: "
          f"{100 * med['overhead']:.1f}% of an iteration (median of {len(ratios['overhead'])} "
          f"paired runs; goal <= 10%); baseline loop vs bare target steps: "
          f"{100 * med['base_overhead']:.1f}%")

    # Acceptance from the accepted counts of every iteration of the first round.
    first_round = spec_runs[:len(prompts)]
    accepted = np.concatenate([np.asarray(g.accepted)[0, :int(g.num_iterations[0])]
                               for _, g in first_round])
    est = estimate_acceptance(accepted, gamma)
    alpha = float(est.acceptance)
    beta_mean = float(np.nanmean(np.concatenate([np.asarray(g.betas).ravel()
                                                 for _, g in first_round])))
    tokens = sum(int(g.num_generated[0]) - 1 for _, g in first_round)
    iterations = sum(int(g.num_steps) for _, g in first_round)
    law = float(speedup(alpha, gamma, c))
    e = float(expected_tokens(alpha, gamma))
    law_v = e / (gamma * c + v)
    print(f"[speedup] acceptance {alpha:.4f} [{float(est.low):.4f}, {float(est.high):.4f}] "
          f"(mean beta {beta_mean:.4f}); tokens per iteration {tokens / iterations:.3f} vs "
          f"E(alpha, gamma) = {e:.3f}")
    measured = med["speedup"]
    print(f"[speedup] measured {measured:.3f}x (median of paired runs); law E/(gamma c + 1) = "
          f"{law:.3f}x (measured/law = {measured / law:.3f}); with the measured verify cost "
          f"E/(gamma c + v) = {law_v:.3f}x (measured/law = {measured / law_v:.3f})")
    return {"overhead": med["overhead"], "measured": measured, "law": law, "law_v": law_v}


def bookkeeping(args):
    """The loop's own cost per iteration, in microseconds: n-gram table models
    (their forwards cost next to nothing) in the loop vs in the bare loop."""
    rng = np.random.default_rng(args.seed)
    table = 2.0 * rng.normal(size=(args.vocab,) * 2).astype(np.float32)
    target = ngram_decoder(table)
    draft = ngram_decoder(table + rng.normal(size=table.shape).astype(np.float32))
    gamma = args.lookahead
    max_len = args.prompt_len + args.max_new + gamma + 1
    prompt = rng.integers(0, args.vocab, size=args.prompt_len).tolist()
    bare = bare_iterations(draft, target, gamma, max_len)
    decode_timed(draft, target, prompt, 0, gamma, args)
    jax.block_until_ready(bare(2))
    per_iteration = []
    for _ in range(5 * args.repeats):
        gen, timing = decode_timed(draft, target, prompt, 0, gamma, args)
        steps = int(gen.num_steps)
        per_iteration.append((timing.decode_seconds - timed(bare, steps)) / steps)
    print(f"\n== bookkeeping: n-gram models, vocab {args.vocab}, lookahead {gamma}: the loop "
          f"costs {1e6 * float(np.median(per_iteration)):.1f} us per iteration beyond its "
          f"forward calls")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--target-width", type=int, default=2048)
    parser.add_argument("--target-depth", type=int, default=4)
    parser.add_argument("--draft-width", type=int, default=1024)
    parser.add_argument("--draft-depth", type=int, default=2)
    parser.add_argument("--draft-noise", type=float, default=1.0)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost", choices=["per-forward", "per-token", "both"], default="per-forward")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="cpu: this process's CPU time (the default on a CPU backend, "
                        "where other work on a shared machine distorts wall time); wall: "
                        "perf_counter (the default on accelerators)")
    args = parser.parse_args()
    global CLOCK
    use_cpu = args.clock == "cpu" or (args.clock == "auto" and jax.default_backend() == "cpu")
    CLOCK = time.process_time if use_cpu else time.perf_counter
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); clock: "
          f"{'process CPU time' if use_cpu else 'wall time'}")
    bookkeeping(args)
    for per_token in {"per-forward": [False], "per-token": [True], "both": [False, True]}[args.cost]:
        bench(args, per_token)


if __name__ == "__main__":
    main()
