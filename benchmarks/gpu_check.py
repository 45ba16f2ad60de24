"""The accelerator check: the speculative loop on a GPU, against its own forward passes and the law.

One prepared run, meant for one lent GPU (an H200) in a single call of about
six minutes, compilation included, and for a CPU with ``--smoke`` (tiny
shapes, well under a minute). It measures, prints, and writes as JSON:

1. environment: the device, the jax version, and whether XLA's matmul
   precision is the default (on NVIDIA GPUs the default lets float32 matmuls
   run on TF32 tensor cores; section 5's float32 peaks at the default and at
   "highest" precision show whether this one did).
2. overhead: the loop's time beyond its forward passes. The isolated jitted
   draft step (1 token, with cache) and target verification (lookahead + 1
   tokens) are timed at the loop's shapes, then the whole decode;
   overhead = decode - steps x (lookahead x draft_step + verify), per loop step
   and as a fraction of the decode. (The loop's first draft forward reads two
   tokens; the overhead with that exact mix of forwards is given too. The
   isolated steps run in a loop of traced length, so each carries one
   while-loop predicate, where a loop iteration carries one for all its
   forwards; the overhead with those gamma extra predicates added back, from
   section 6, is given as well.)
3. speedup: the measured speedup (decode time of the target alone over the
   speculative decode, for the same prompts and tokens) against the
   throughput law S = E(alpha, gamma) / (gamma c + 1) of sdsl_jax.laws.throughput,
   with alpha measured from the accepted counts and c = draft step / target
   step measured; and against E / (gamma c + v), v = verify / target step, the
   law with the verification cost measured rather than taken as one step.
4. precision: the same pair in bfloat16 against float32: step times, speedup,
   law and acceptance (sampling and acceptance run in float32 either way).
5. compute_bound: a ~1B-parameter bfloat16 target with a ~100M-parameter
   (non-embedding) draft at batch 128, whose verification is compute-bound on
   an H200 (the arithmetic intensity is worked out in gpu_settings): the
   achieved FLOP/s of the verify step against a matmul peak measured in the
   same run, the intensity against the measured ridge point (peak FLOP/s over
   measured memory bandwidth), and the speedup against the law at that batch.
6. while_predicate: XLA on GPU may copy a while loop's predicate to the host
   every iteration when the trip count is data-dependent, as the decode loop's
   is. A lax.while_loop of N cheap iterations against a lax.fori_loop with a
   static trip count; the difference per iteration against a draft step's
   time, and whether it matters (> 5% of a step).

Random weights, related draft: every model has random weights (timing does
not care), but acceptance between two unrelated random models means nothing.
So each draft is a truncated-layer copy of its target: the target's
embedding, first ``draft_layers`` blocks and final norm. Its predictions are
then a genuine approximation of the target's, and acceptance at temperature 1
lands in (0.3, 0.9) (about 0.55 at these shapes); the output says whether the
measured one did.

Medians of several repetitions everywhere, warm-up (compiling) calls excluded,
every timed call ended by block_until_ready. Only the package's public
functions are used: the loop through metrics.timed_generate, step times
through metrics.forward_step_seconds, models through sdsl_jax.models.

    python benchmarks/gpu_check.py [--smoke] [--out report.json] [--time-budget 330]

The report is rewritten after every section, so a run stopped from outside
still leaves what it measured; a section that would start after
``--time-budget`` seconds is recorded as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import os
import statistics
import sys
import time
from typing import Any, Callable

# --smoke checks that every section runs, not how fast. Compiling the loop is
# most of a smoke run on a CPU, and XLA's cheapest settings halve it (the
# older CPU emitters compile the loop's many small fusions faster). XLA reads
# the flags when its backend starts, so they are set before jax is imported.
if "--smoke" in sys.argv[1:]:
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                          "--xla_llvm_disable_expensive_passes=true "
                          "--xla_cpu_use_fusion_emitters=false")

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from sdsl_jax.common.io import write_json
from sdsl_jax.decoding import iteration_lookahead, metrics, pad_prompts, row_keys
from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.estimation.acceptance import estimate_acceptance
from sdsl_jax.laws.throughput import expected_tokens, speedup
from sdsl_jax.models import ModelConfig, abstract_params, as_decoder, init_params

CLOCK = time.perf_counter
SECTIONS = ("environment", "overhead", "speedup", "precision", "compute_bound",
            "while_predicate")


# --------------------------------------------------------------------------
# Settings: one set for the GPU, one tiny set for --smoke.


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The loop's static shapes: B rows, prompts of P tokens, max_new tokens, gamma."""

    batch_size: int
    prompt_len: int
    max_new_tokens: int
    lookahead: int

    @property
    def max_len(self) -> int:
        # The loop's cache length (sdsl_jax.decoding.loop: prefill).
        return self.prompt_len + self.max_new_tokens + self.lookahead + 1


@dataclasses.dataclass(frozen=True)
class Settings:
    target: ModelConfig  # sections 2-4, float32 and bfloat16
    draft_layers: int
    shapes: Shapes
    prompt_sets: int  # distinct prompts (each a batch), per round
    rounds: int
    big_target: ModelConfig  # section 5, bfloat16
    big_draft_layers: int
    big_shapes: Shapes
    big_rounds: int
    matmul_size: int  # n of the n x n matmuls that measure the peak
    bandwidth_bytes: int  # the buffer that measures memory bandwidth
    predicate_iterations: int
    predicate_width: int  # elements the cheap loop body updates
    repeats: int  # of each micro-benchmark
    min_chain_seconds: float  # per timed chain of forward steps


def gpu_settings() -> Settings:
    vocab = 32768
    return Settings(
        # ~185M parameters (151M non-embedding) at batch 1: the latency regime of
        # one user, where steps are memory- and launch-bound; quick to compile.
        target=ModelConfig(d_model=1024, num_layers=12, num_heads=16, d_ff=4096, vocab_size=vocab),
        draft_layers=2,
        shapes=Shapes(batch_size=1, prompt_len=64, max_new_tokens=128, lookahead=4),
        prompt_sets=3, rounds=3,
        # 1.07B parameters (1.01B non-embedding); the draft keeps 2 of 20 blocks (101M
        # non-embedding). A verification of 128 rows x 5 tokens is 1.38 TFLOP over at
        # least 3.41 GB (2.15 GB of weights, 1.1 GB of KV cache, the logits): 405
        # FLOP/byte, twice an H200's nominal ridge (989 TFLOP/s bfloat16 over 4.8 TB/s,
        # 206), where batch 64 would be 248; the run measures its own ridge.
        big_target=ModelConfig(d_model=2048, num_layers=20, num_heads=16, d_ff=8192,
                               vocab_size=vocab, dtype="bfloat16"),
        big_draft_layers=2,
        big_shapes=Shapes(batch_size=128, prompt_len=16, max_new_tokens=32, lookahead=4),
        big_rounds=2,
        matmul_size=8192, bandwidth_bytes=1 << 30,
        predicate_iterations=2000, predicate_width=1024, repeats=7, min_chain_seconds=0.05)


def smoke_settings() -> Settings:
    tiny = ModelConfig(d_model=64, num_layers=2, num_heads=2, d_ff=128, vocab_size=256)
    shapes = Shapes(batch_size=1, prompt_len=8, max_new_tokens=12, lookahead=3)
    return Settings(
        target=tiny, draft_layers=1, shapes=shapes, prompt_sets=2, rounds=2,
        # The same config and shapes as the bfloat16 run of sections 2-4, so the
        # smoke run reuses those compilations: it checks the code path, not the scale.
        big_target=dataclasses.replace(tiny, dtype="bfloat16"), big_draft_layers=1,
        big_shapes=shapes, big_rounds=1,
        matmul_size=128, bandwidth_bytes=1 << 20,
        predicate_iterations=200, predicate_width=1024, repeats=3, min_chain_seconds=0.002)


# --------------------------------------------------------------------------
# Models: a random-weight target and its truncated-layer draft.


def related_pair(target_config: ModelConfig, draft_layers: int, seed: int,
                 dtype: str) -> tuple[Decoder, Decoder]:
    """(draft, target): a random ``target_config`` target and its first ``draft_layers`` blocks.

    The draft shares the target's embedding and final norm, so it is the
    target with its last blocks skipped (module docstring).
    """
    if not 1 <= draft_layers < target_config.num_layers:
        raise ValueError(f"draft_layers must lie in [1, {target_config.num_layers - 1}], "
                         f"got {draft_layers}")
    target_config = dataclasses.replace(target_config, dtype="float32")
    draft_config = dataclasses.replace(target_config, num_layers=draft_layers)
    target_params = init_params(target_config, seed)
    by_path = {jax.tree_util.keystr(path): leaf
               for path, leaf in jax.tree_util.tree_flatten_with_path(target_params)[0]}
    # Every draft leaf sits at the same path in the target (blocks 0..k-1, the
    # embedding, the final norm), whatever the module names are.
    draft_params = jax.tree_util.tree_map_with_path(
        lambda path, _: by_path[jax.tree_util.keystr(path)], abstract_params(draft_config))
    decoders = []
    for name, config, params in (("draft", draft_config, draft_params),
                                 ("target", target_config, target_params)):
        # as_decoder casts the float32 weights to the config's dtype and states it.
        config = dataclasses.replace(config, dtype=dtype)
        blocks = f"{config.num_layers} block" + ("s" if config.num_layers > 1 else "")
        decoders.append(as_decoder(params, config, name=f"{name} ({blocks}, {dtype})"))
    return decoders[0], decoders[1]


def forward_flops(config: ModelConfig, tokens: int, cache_len: int) -> float:
    """FLOPs of one forward over ``tokens`` tokens (all rows) with a ``cache_len`` cache.

    2 per weight per token for the block matmuls and the tied output layer
    (the input embedding is a lookup), plus attention over the whole cache,
    which this transformer scores in full and masks: 2 d cache_len for the
    scores and as many for the weighted values, per layer and token.
    """
    d, f, layers = config.d_model, config.d_ff, config.num_layers
    matmul_weights = layers * (4 * d * d + 2 * d * f) + config.vocab_size * d
    return float(tokens) * (2 * matmul_weights + 4 * layers * d * cache_len)


def forward_bytes(config: ModelConfig, batch_size: int, tokens_per_row: int,
                  cache_len: int) -> float:
    """Bytes one forward must move at least: every weight once, the whole KV cache
    read once, the new keys and values and the logits written once."""
    item = jnp.dtype(config.dtype).itemsize
    d, f, layers = config.d_model, config.d_ff, config.num_layers
    weights = layers * (4 * d * d + 2 * d * f + 2 * d) + config.vocab_size * d + d
    cache_read = 2 * layers * batch_size * cache_len * d
    cache_written = 2 * layers * batch_size * tokens_per_row * d
    logits = batch_size * tokens_per_row * config.vocab_size
    return float(item * (weights + cache_read + cache_written + logits))


def xla_forward_flops(decoder: Decoder, batch_size: int, tokens_per_row: int,
                      cache_len: int) -> float | None:
    """XLA's own FLOP count of the forward (lowered HLO, nothing compiled), or None."""
    tokens = jnp.zeros((batch_size, tokens_per_row), jnp.int32)
    start = jnp.zeros((batch_size,), jnp.int32)
    cache = jax.eval_shape(lambda: decoder.init_cache(batch_size, cache_len))
    try:
        cost = jax.jit(decoder.forward).lower(decoder.params, tokens, start, cache).cost_analysis()
    except Exception:  # noqa: BLE001 - a backend without cost analysis is not an error here
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


# --------------------------------------------------------------------------
# Timing.


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call's seconds, median of ``repeats`` further calls): the first compiles."""
    start = CLOCK()
    jax.block_until_ready(fn())
    first = CLOCK() - start
    times = []
    for _ in range(repeats):
        start = CLOCK()
        jax.block_until_ready(fn())
        times.append(CLOCK() - start)
    return first, statistics.median(times)


def step_times(draft: Decoder, target: Decoder, shapes: Shapes, settings: Settings) -> dict:
    """Seconds of the isolated jitted steps at the loop's shapes, per round.

    The cache holds ``max_len`` positions as in the loop (the draft's 1- and
    2-token chains get a cache shorter by gamma or gamma - 1 positions, under
    1% of the attention's reads here).
    """
    gamma = shapes.lookahead
    chains = {"draft_step": (draft, 1), "draft_pair": (draft, 2), "target_step": (target, 1),
              "verify": (target, gamma + 1)}
    start = CLOCK()
    rounds = metrics.forward_step_seconds(
        chains, batch_size=shapes.batch_size, context=shapes.max_len - gamma - 1,
        min_seconds=settings.min_chain_seconds, repeats=settings.repeats, clock=CLOCK)
    return {"per_round": {k: v.tolist() for k, v in rounds.items()},
            "seconds": {k: float(np.median(v)) for k, v in rounds.items()},
            "cost_ratio": float(np.median(rounds["draft_step"] / rounds["target_step"])),
            "verify_cost": float(np.median(rounds["verify"] / rounds["target_step"])),
            "setup_and_timing_seconds": CLOCK() - start}


def prompt_batches(vocab_size: int, shapes: Shapes, count: int, seed: int):
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(count):
        prompts = rng.integers(0, vocab_size, size=(shapes.batch_size, shapes.prompt_len))
        tokens, lengths = pad_prompts(prompts.tolist(), shapes.prompt_len)
        ids = jnp.arange(i * shapes.batch_size, (i + 1) * shapes.batch_size)
        batches.append((tokens, lengths, row_keys(jax.random.PRNGKey(seed), ids)))
    return batches


def decode_runs(draft: Decoder, target: Decoder, shapes: Shapes, rounds: int,
                prompt_sets: int, seed: int) -> dict:
    """Speculative and target-only decodes of the same prompts, paired and interleaved.

    A disturbance on the machine then hits both members of a pair, and the
    median of per-pair ratios shrugs off the pairs it hit hardest. The first
    call of each compiles and is not timed.
    """
    batches = prompt_batches(target.vocab_size, shapes, prompt_sets, seed)

    def run(lookahead, batch):
        tokens, lengths, keys = batch
        return metrics.timed_generate(draft if lookahead else None, target, tokens, lengths, keys,
                                      lookahead=lookahead, max_new_tokens=shapes.max_new_tokens,
                                      temperature=1.0, clock=CLOCK)

    first_call_seconds = {}
    for name, lookahead in (("speculative", shapes.lookahead), ("target_alone", 0)):
        start = CLOCK()
        run(lookahead, batches[0])
        first_call_seconds[name] = CLOCK() - start
    spec, base = [], []
    for _ in range(rounds):
        for batch in batches:
            spec.append(run(shapes.lookahead, batch))
            base.append(run(0, batch))
    return {"speculative": spec, "target_alone": base, "first_call_seconds": first_call_seconds}


def loop_report(steps: dict, runs: dict, shapes: Shapes) -> dict:
    """Sections 2 and 3 for one pair: overhead, and speedup against the law."""
    gamma = shapes.lookahead
    t = steps["seconds"]
    forwards = gamma * t["draft_step"] + t["verify"]
    exact_forwards = t["draft_pair"] + (gamma - 1) * t["draft_step"] + t["verify"]
    per_step, exact_per_step, fraction, base_per_step, ratios = [], [], [], [], []
    for (gen, timing), (base, base_timing) in zip(runs["speculative"], runs["target_alone"]):
        num_steps = int(gen.num_steps)
        per_step.append(timing.decode_seconds / num_steps - forwards)
        exact_per_step.append(timing.decode_seconds / num_steps - exact_forwards)
        fraction.append(1 - num_steps * forwards / timing.decode_seconds)
        base_per_step.append(base_timing.decode_seconds / int(base.num_steps) - t["target_step"])
        # Both decodes produce max_new_tokens per row from the same first token.
        ratios.append(base_timing.decode_seconds / timing.decode_seconds)
    gens = [gen for gen, _ in runs["speculative"]]
    accepted = np.concatenate([np.asarray(g.accepted) for g in gens])
    lookahead = np.concatenate([np.asarray(iteration_lookahead(g)) for g in gens])
    estimate = estimate_acceptance(accepted, lookahead)
    alpha = float(estimate.acceptance)
    c, v = steps["cost_ratio"], steps["verify_cost"]
    e = float(expected_tokens(alpha, gamma))
    tokens = sum(int(np.sum(np.asarray(g.num_generated) - 1)) for g in gens)
    iterations = sum(int(np.sum(np.asarray(g.num_iterations))) for g in gens)
    measured = float(np.median(ratios))
    law = float(speedup(alpha, gamma, c))
    law_v = e / (gamma * c + v)
    decode = [timing.decode_seconds for _, timing in runs["speculative"]]
    base_decode = [timing.decode_seconds for _, timing in runs["target_alone"]]
    overhead = {
        "step_seconds": t, "decode_seconds": float(np.median(decode)),
        "target_alone_decode_seconds": float(np.median(base_decode)),
        "loop_steps": float(np.median([int(g.num_steps) for g in gens])),
        "forward_seconds_per_step": forwards,
        "overhead_seconds_per_step": float(np.median(per_step)),
        "overhead_fraction": float(np.median(fraction)),
        "overhead_seconds_per_step_exact_mix": float(np.median(exact_per_step)),
        "target_alone_overhead_seconds_per_step": float(np.median(base_per_step)),
        "first_call_seconds": runs["first_call_seconds"], "paired_runs": len(ratios),
    }
    speed = {
        "measured": measured, "measured_per_pair": [float(r) for r in ratios],
        "law": law, "law_with_verify_cost": law_v, "measured_over_law": measured / law,
        "measured_over_law_with_verify_cost": measured / law_v,
        "acceptance": alpha, "acceptance_low": float(estimate.low),
        "acceptance_high": float(estimate.high),
        "acceptance_in_range": bool(0.3 < alpha < 0.9),
        "cost_ratio": c, "verify_cost": v, "lookahead": gamma,
        "expected_tokens_per_iteration": e,
        "measured_tokens_per_iteration": tokens / iterations,
    }
    return {"overhead": overhead, "speedup": speed}


# --------------------------------------------------------------------------
# Micro-benchmarks: matmul peak, memory bandwidth, the while loop's predicate.


def matmul_peak(n: int, dtype: str, precision: str | None, repeats: int, chain: int = 8) -> dict:
    """FLOP/s of ``chain`` chained n x n matmuls in one compiled program."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    # Scaled so chained products neither overflow nor vanish (norms stay O(1)).
    b = (jax.random.normal(kb, (n, n), jnp.float32) / math.sqrt(n)).astype(dtype)
    fn = jax.jit(lambda a, b: jax.lax.fori_loop(
        0, chain, lambda _, x: jnp.matmul(x, b, precision=precision), a))
    first, seconds = median_seconds(lambda: fn(a, b), repeats)
    return {"n": n, "dtype": dtype, "precision": precision or "default",
            "flops_per_second": 2.0 * n ** 3 * chain / seconds, "compile_seconds": first}


def memory_bandwidth(num_bytes: int, repeats: int, chain: int = 8) -> dict:
    """Bytes per second of an elementwise update that reads and writes a buffer."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    # The barrier keeps XLA from unrolling the loop and fusing its updates into
    # one pass over the buffer, which would count bytes never moved.
    fn = jax.jit(lambda x: jax.lax.fori_loop(
        0, chain, lambda _, y: jax.lax.optimization_barrier(y * 0.5 + 0.25), x))
    _, seconds = median_seconds(lambda: fn(x), repeats)
    return {"bytes": num_bytes, "bytes_per_second": 2.0 * x.nbytes * chain / seconds}


def while_predicate(iterations: int, width: int, repeats: int) -> dict:
    """Per-iteration seconds of a data-dependent while loop and of a static-trip-count loop.

    The body is one cheap fused kernel, the same in both, so the difference is
    what the data-dependent predicate costs: evaluating it, and on GPU copying
    it to the host before the next iteration can launch.
    """
    x = jnp.linspace(0.0, 1.0, width, dtype=jnp.float32)

    def body(y):
        # The barrier keeps iterations apart should XLA unroll the static loop.
        return jax.lax.optimization_barrier(jnp.sin(y) * 0.5 + 0.25)

    # The bound is traced, so XLA cannot know the trip count; the decode loop's
    # predicate (any row active and step < max) is data-dependent the same way.
    while_fn = jax.jit(lambda y, n: jax.lax.while_loop(
        lambda c: c[0] < n, lambda c: (c[0] + 1, body(c[1])), (jnp.int32(0), y))[1])
    static_fn = jax.jit(lambda y: jax.lax.fori_loop(0, iterations, lambda _, z: body(z), y))
    n = jnp.int32(iterations)
    _, while_s = median_seconds(lambda: while_fn(x, n), repeats)
    _, static_s = median_seconds(lambda: static_fn(x), repeats)
    return {"iterations": iterations, "body_elements": width,
            "while_seconds_per_iteration": while_s / iterations,
            "static_seconds_per_iteration": static_s / iterations,
            "predicate_seconds_per_iteration": (while_s - static_s) / iterations}


# --------------------------------------------------------------------------
# The run.


def _finite(x):
    """JSON-safe: NaN and infinities become None (strict JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


class Report:
    """The JSON report, rewritten after each section; a section past the budget is skipped."""

    def __init__(self, out: str | None, budget: float | None):
        self.out, self.budget, self.begin = out, budget, CLOCK()
        self.data: dict[str, Any] = {}

    def elapsed(self) -> float:
        return CLOCK() - self.begin

    def has_time(self, what: str) -> bool:
        if self.budget is None or self.elapsed() < self.budget:
            return True
        print(f"[skipped] {what}: {self.elapsed():.0f} s spent of a {self.budget:g} s budget",
              flush=True)
        return False

    def set(self, key: str, value) -> None:
        self.data[key] = value
        # When each section was last written: what a shorter --time-budget would keep.
        self.data.setdefault("timeline_seconds", {})[key] = self.elapsed()
        self.save()

    def save(self) -> None:
        self.data["elapsed_seconds"] = self.elapsed()
        if self.out:
            write_json(self.out, _finite(self.data), indent=1)


def environment(smoke: bool) -> dict:
    device = jax.devices()[0]
    precision = jax.config.jax_default_matmul_precision
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "jax_version": jax.__version__,
            "jaxlib_version": jaxlib.__version__, "python_version": platform.python_version(),
            "default_matmul_precision": precision or "default",
            "matmul_precision_is_default": precision is None,
            "x64_enabled": bool(jax.config.jax_enable_x64),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "smoke": smoke}


def describe_pair(draft: Decoder, target: Decoder, shapes: Shapes, draft_layers: int) -> dict:
    return {"target": target.name, "draft": draft.name,
            "target_params": target.num_params, "draft_params": draft.num_params,
            "vocab_size": target.vocab_size, "dtype": target.dtype,
            "draft_relation": f"the target's embedding, first {draft_layers} blocks and final "
                              "norm (a truncated-layer copy of a random-weight target)",
            "temperature": 1.0, **dataclasses.asdict(shapes), "max_len": shapes.max_len}


def print_loop(dtype: str, pair: dict, result: dict) -> None:
    o, s = result["overhead"], result["speedup"]
    t = o["step_seconds"]
    print(f"\n== {dtype}: {pair['target']} {pair['target_params']:,} params, {pair['draft']} "
          f"{pair['draft_params']:,}; batch {pair['batch_size']}, prompt {pair['prompt_len']}, "
          f"{pair['max_new_tokens']} new tokens, lookahead {pair['lookahead']}")
    print(f"[steps] draft {1e3 * t['draft_step']:.3f} ms, 2-token draft {1e3 * t['draft_pair']:.3f} "
          f"ms, target {1e3 * t['target_step']:.3f} ms, verify {1e3 * t['verify']:.3f} ms; "
          f"c = {s['cost_ratio']:.4f}, v = {s['verify_cost']:.3f} target steps")
    print(f"[overhead] decode {1e3 * o['decode_seconds']:.2f} ms over {o['loop_steps']:.0f} loop "
          f"steps; beyond gamma draft steps + verify: {1e6 * o['overhead_seconds_per_step']:.1f} "
          f"us a step ({100 * o['overhead_fraction']:.1f}% of the decode; "
          f"{1e6 * o['overhead_seconds_per_step_exact_mix']:.1f} us with the loop's exact "
          f"forwards); target-alone loop: {1e6 * o['target_alone_overhead_seconds_per_step']:.1f} "
          f"us a step beyond its target step")
    in_range = "in" if s["acceptance_in_range"] else "OUTSIDE"
    print(f"[speedup] acceptance {s['acceptance']:.3f} [{s['acceptance_low']:.3f}, "
          f"{s['acceptance_high']:.3f}] ({in_range} (0.3, 0.9): a truncated-layer draft); tokens "
          f"per iteration {s['measured_tokens_per_iteration']:.3f} vs E = "
          f"{s['expected_tokens_per_iteration']:.3f}")
    print(f"[speedup] measured {s['measured']:.3f}x (median of {o['paired_runs']} pairs); law "
          f"E/(gamma c + 1) = {s['law']:.3f}x (ratio {s['measured_over_law']:.3f}); with "
          f"measured v, E/(gamma c + v) = {s['law_with_verify_cost']:.3f}x (ratio "
          f"{s['measured_over_law_with_verify_cost']:.3f})")


def run_pair_sections(settings: Settings, report: Report) -> dict:
    """Sections 2-4: the pair in float32 and in bfloat16."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        if not report.has_time(f"the {dtype} pair"):
            break
        start = CLOCK()
        draft, target = related_pair(settings.target, settings.draft_layers, seed=0, dtype=dtype)
        build = CLOCK() - start
        pair = describe_pair(draft, target, settings.shapes, settings.draft_layers)
        steps = step_times(draft, target, settings.shapes, settings)
        runs = decode_runs(draft, target, settings.shapes, settings.rounds, settings.prompt_sets,
                           seed=1)
        result = loop_report(steps, runs, settings.shapes)
        result["overhead"]["build_seconds"] = build
        results[dtype] = {"pair": pair, **result}
        print_loop(dtype, pair, result)
        report.set("overhead", {k: {"pair": v["pair"], **v["overhead"]} for k, v in results.items()})
        report.set("speedup", {k: v["speedup"] for k, v in results.items()})
    if len(results) == 2:
        f32, bf16 = results["float32"], results["bfloat16"]
        ratio = {k: bf16["overhead"]["step_seconds"][k] / f32["overhead"]["step_seconds"][k]
                 for k in f32["overhead"]["step_seconds"]}
        precision = {
            "step_seconds": {d: r["overhead"]["step_seconds"] for d, r in results.items()},
            "bfloat16_over_float32_step_seconds": ratio,
            "decode_seconds": {d: r["overhead"]["decode_seconds"] for d, r in results.items()},
            "speedup": {d: r["speedup"]["measured"] for d, r in results.items()},
            "law": {d: r["speedup"]["law"] for d, r in results.items()},
            "acceptance": {d: r["speedup"]["acceptance"] for d, r in results.items()},
            "cost_ratio": {d: r["speedup"]["cost_ratio"] for d, r in results.items()},
        }
        print(f"\n== bfloat16 / float32 step time: draft {ratio['draft_step']:.3f}, target "
              f"{ratio['target_step']:.3f}, verify {ratio['verify']:.3f}; speedup "
              f"{precision['speedup']['bfloat16']:.3f}x vs {precision['speedup']['float32']:.3f}x; "
              f"acceptance {precision['acceptance']['bfloat16']:.3f} vs "
              f"{precision['acceptance']['float32']:.3f}")
        report.set("precision", precision)
    return results


def run_compute_bound(settings: Settings, report: Report) -> None:
    """Section 5: matmul peaks, bandwidth, and the big bfloat16 pair."""
    n, repeats = settings.matmul_size, settings.repeats
    peaks = {"bfloat16": matmul_peak(n, "bfloat16", None, repeats),
             "float32_default": matmul_peak(n, "float32", None, repeats),
             "float32_highest": matmul_peak(n, "float32", "highest", repeats)}
    bandwidth = memory_bandwidth(settings.bandwidth_bytes, repeats)
    peak = peaks["bfloat16"]["flops_per_second"]
    ridge = peak / bandwidth["bytes_per_second"]
    section: dict[str, Any] = {"matmul_peaks": peaks, "memory_bandwidth": bandwidth,
                               "ridge_flops_per_byte": ridge}
    tf32 = peaks["float32_default"]["flops_per_second"] / peaks["float32_highest"]["flops_per_second"]
    print(f"\n== roofline: bfloat16 matmul {peak / 1e12:.3g} TFLOP/s, float32 "
          f"{peaks['float32_default']['flops_per_second'] / 1e12:.3g} TFLOP/s at the default "
          f"precision and {peaks['float32_highest']['flops_per_second'] / 1e12:.3g} at 'highest' "
          f"({tf32:.2f}x: >> 1 means the default ran float32 on reduced-precision units); memory "
          f"{bandwidth['bytes_per_second'] / 1e9:.1f} GB/s; ridge {ridge:.0f} FLOP/byte")
    report.set("compute_bound", section)
    if not report.has_time("the compute-bound pair"):
        return

    shapes = settings.big_shapes
    start = CLOCK()
    draft, target = related_pair(settings.big_target, settings.big_draft_layers, seed=2,
                                 dtype=settings.big_target.dtype)
    build = CLOCK() - start
    gamma, batch, cache_len = shapes.lookahead, shapes.batch_size, shapes.max_len
    config = settings.big_target
    flops = forward_flops(config, batch * (gamma + 1), cache_len)
    moved = forward_bytes(config, batch, gamma + 1, cache_len)
    xla_flops = xla_forward_flops(target, batch, gamma + 1, cache_len)
    steps = step_times(draft, target, shapes, settings)
    t = steps["seconds"]
    achieved = flops / t["verify"]
    target_step_flops = forward_flops(config, batch, cache_len)
    intensity = flops / moved
    section.update({
        "pair": describe_pair(draft, target, shapes, settings.big_draft_layers),
        "build_seconds": build,
        "verify_flops": flops, "verify_flops_xla": xla_flops, "verify_min_bytes": moved,
        "arithmetic_intensity_flops_per_byte": intensity,
        # 2 FLOPs per weight per token over the weight's bytes: the intensity of
        # the weight matmuls alone, what batching raises.
        "weights_only_intensity_flops_per_byte": float(2 * batch * (gamma + 1)
                                                        / jnp.dtype(config.dtype).itemsize),
        "compute_bound": bool(intensity > ridge),
        "step_seconds": t, "cost_ratio": steps["cost_ratio"], "verify_cost": steps["verify_cost"],
        "verify_flops_per_second": achieved, "verify_fraction_of_peak": achieved / peak,
        "target_step_flops_per_second": target_step_flops / t["target_step"],
        "target_step_fraction_of_peak": target_step_flops / t["target_step"] / peak,
    })
    xla_note = f", XLA counts {xla_flops / 1e9:.4g}" if xla_flops else ""
    print(f"\n== compute-bound pair ({config.dtype}): target {target.num_params:,} params, draft "
          f"{draft.num_params:,}; batch {batch} x {gamma + 1} verified tokens, cache {cache_len}")
    print(f"[intensity] verify {flops / 1e9:.4g} GFLOP{xla_note} over >= {moved / 1e9:.4g} GB: "
          f"{intensity:.0f} FLOP/byte against a ridge of {ridge:.0f} "
          f"({'compute' if intensity > ridge else 'memory'}-bound)")
    print(f"[FLOP/s] verify {1e3 * t['verify']:.3f} ms = {achieved / 1e12:.3g} TFLOP/s, "
          f"{100 * achieved / peak:.1f}% of the measured matmul peak; a 1-token target step "
          f"{1e3 * t['target_step']:.3f} ms = {100 * section['target_step_fraction_of_peak']:.1f}%;"
          f" v = {steps['verify_cost']:.2f} target steps, c = {steps['cost_ratio']:.4f}")
    report.set("compute_bound", section)
    if not report.has_time("the compute-bound pair's decode"):
        return
    runs = decode_runs(draft, target, shapes, settings.big_rounds, 1, seed=3)
    result = loop_report(steps, runs, shapes)
    s = result["speedup"]
    section["overhead"] = result["overhead"]
    section["speedup"] = s
    print(f"[speedup] measured {s['measured']:.3f}x at batch {batch}; law E/(gamma c + 1) = "
          f"{s['law']:.3f}x, with measured v = {s['law_with_verify_cost']:.3f}x; acceptance "
          f"{s['acceptance']:.3f}")
    report.set("compute_bound", section)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, for a CPU: checks that every section runs")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds after which sections not yet started are skipped "
                        "(default: 330 on an accelerator, none with --smoke)")
    parser.add_argument("--compilation-cache", default=None,
                        help="a folder for XLA's persistent compilation cache (speeds a rerun)")
    args = parser.parse_args(argv)
    if args.time_budget is not None and not args.time_budget > 0:
        parser.error(f"--time-budget must be positive seconds, got {args.time_budget}")
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    settings = smoke_settings() if args.smoke else gpu_settings()
    budget = args.time_budget if args.time_budget is not None else (None if args.smoke else 330.0)
    report = Report(args.out, budget)

    env = environment(args.smoke)
    print(f"device: {env['device_kind']} ({env['platform']}, {env['device_count']} visible); jax "
          f"{env['jax_version']}; matmul precision {env['default_matmul_precision']}", flush=True)
    report.set("environment", env)

    # The predicate first: it is cheap and needs no model.
    predicate = while_predicate(settings.predicate_iterations, settings.predicate_width,
                                settings.repeats)
    report.set("while_predicate", predicate)

    results = run_pair_sections(settings, report)
    if report.has_time("the roofline and the compute-bound pair"):
        run_compute_bound(settings, report)

    # Now that the draft steps are known: does the predicate matter?
    draft_steps = {d: r["overhead"]["step_seconds"]["draft_step"] for d, r in results.items()}
    loop_steps = {d: r["overhead"]["decode_seconds"] / r["overhead"]["loop_steps"]
                  for d, r in results.items()}
    cost = predicate["predicate_seconds_per_iteration"]
    if draft_steps:
        fastest = min(draft_steps.values())
        predicate.update({"draft_step_seconds": draft_steps,
                          "fraction_of_fastest_draft_step": cost / fastest,
                          "loop_step_seconds": loop_steps,
                          "fraction_of_fastest_loop_step": cost / min(loop_steps.values()),
                          "matters": bool(cost / fastest > 0.05)})
        print(f"\n== while-loop predicate: {1e6 * cost:.2f} us an iteration "
              f"({1e6 * predicate['while_seconds_per_iteration']:.2f} us data-dependent vs "
              f"{1e6 * predicate['static_seconds_per_iteration']:.2f} us static trip count) = "
              f"{100 * cost / fastest:.1f}% of the fastest draft step "
              f"({1e6 * fastest:.1f} us): {'MATTERS' if cost / fastest > 0.05 else 'does not matter'}"
              f" (threshold 5%); the decode loop pays it once per iteration of gamma + 1 forwards")
        # The step times come from chains whose trip count is traced, so each
        # step carries one predicate; a loop iteration carries one for its gamma
        # + 1 forwards (the draft scan's trip count is static). Subtracting the
        # chains' steps thus removes gamma predicates too many per iteration.
        for dtype, result in results.items():
            o = result["overhead"]
            o["overhead_seconds_per_step_predicate_corrected"] = (
                o["overhead_seconds_per_step"] + result["pair"]["lookahead"] * cost)
            print(f"[overhead] {dtype}: {1e6 * o['overhead_seconds_per_step_predicate_corrected']:.1f}"
                  f" us a step with the chains' extra predicates added back")
        report.set("overhead", {k: {"pair": v["pair"], **v["overhead"]} for k, v in results.items()})
    report.set("while_predicate", predicate)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        report.data["environment"]["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    report.data["skipped"] = [s for s in SECTIONS if s not in report.data]
    report.save()
    print(f"\ntotal {report.elapsed():.1f} s" + (f"; report in {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
