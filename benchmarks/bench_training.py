"""Training throughput against the machine's matmul peak, measured in the same run.

Times the jit-compiled training step of sdsl_jax.models.training (batch drawn on
the device, forward, backward, clip and AdamW update: everything but checkpoints
and the progress bar) on random bytes, so the figures are the model's, not the
corpus loader's. The anchor is a large float32 matmul (``jnp.dot`` of two
``--peak-n`` square matrices, on every core XLA uses), timed before and after
each size's steps; the step's achieved FLOP/s is quoted as a fraction of its
median.

FLOPs per step, counted from the shapes (the PaLM appendix B count):

  6 N T_step            matmuls with the weights: forward 2 N, backward 4 N per
                        token, N = every parameter (the tied embedding counted
                        once, as the output layer; its lookup is free; the
                        RMSNorm scales, 0.1% of N, are counted as if matmuls)
  12 L T d T_step       attention scores and their weighted sum, forward and
                        backward, over the full T x T square the step computes
                        (the causal half that matters is 6 L T d)

with T_step = batch x seq tokens. Elementwise work (softmax, GELU, norms, the
optimizer) is not counted: it is overhead the fraction shows.

On a CPU the step takes its batch a few windows at a time
(training.micro_batch_size); --against-whole-batch times, taking turns with
it, the step that takes the whole batch in one pass (as every step did before).

  python benchmarks/bench_training.py                  # 1m and 10m at sdsl train's 32 x 256
  python benchmarks/bench_training.py --against-whole-batch --steps 3
  python benchmarks/bench_training.py --sizes 10k 1m --batch-size 8 --seq-len 128
  python benchmarks/bench_training.py --sizes 1m --profile   # where a step's time goes
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.models import training
from sdsl_jax.models import SIZES, abstract_params, init_params, param_counts


def step_flops(size: str, batch_size: int, seq_len: int) -> dict:
    """Model FLOPs of one training step: ``weights`` (6 N per token) and ``attention``."""
    config = SIZES[size]
    tokens = batch_size * seq_len
    return {"weights": 6 * param_counts(config)["total"] * tokens,
            "attention": 12 * config.num_layers * seq_len * config.d_model * tokens}


def matmul_peak(n: int, repeats: int) -> list[float]:
    """FLOP/s of ``repeats`` float32 ``[n, n] @ [n, n]`` products (after one to compile)."""
    a = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), np.float32))
    b = jnp.asarray(np.random.default_rng(2).standard_normal((n, n), np.float32))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        rates.append(2 * n ** 3 / (time.perf_counter() - start))
    return rates


def setup(size: str, batch_size: int, seq_len: int, micro_batch_size: int | None = None):
    """The compiled step and its first arguments; the compile time (s)."""
    config = SIZES[size]
    settings = training.TrainSettings(steps=1000, batch_size=batch_size, seq_len=seq_len,
                                      micro_batch_size=micro_batch_size).resolved(size)
    packing = training.ParamPacking.of(abstract_params(config))
    packed = packing.pack(init_params(config, 0))
    opt_state = training.make_optimizer(settings).init(packed)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint16))
    key = jax.random.PRNGKey(0)
    step = training.make_train_step(config, settings)
    start = time.perf_counter()
    compiled = step.lower(packed, opt_state, tokens, key, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    return compiled, [packed, opt_state, tokens, key], compile_s


def time_steps(runs, steps: int) -> list[list[float]]:
    """Seconds of ``steps`` steps (after one warm-up step) of each ``(compiled, state)`` run,
    the runs taking turns step by step so that they share the machine's load."""
    times = [[] for _ in runs]
    for i in range(steps + 1):
        for (compiled, state), run_times in zip(runs, times):
            start = time.perf_counter()
            state[0], state[1], loss = compiled(state[0], state[1], state[2], state[3],
                                                jnp.int32(i))
            jax.block_until_ready(loss)
            if i:
                run_times.append(time.perf_counter() - start)
    return times


def profile(compiled, state, top: int) -> None:
    """Trace one step and print where its time goes, by the JAX operation each XLA op came from."""
    origin = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) [^\n]*?op_name=\"([^\"]*)\"",
                             compiled.as_text(), re.M):
        origin[match.group(1)] = (match.group(3).replace("jit(step)/", ""), match.group(2))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            time_steps([(compiled, state)], 0)
        path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_op, by_kernel = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in origin:
            op, shape = origin[event["name"]]
            by_op[op] += event["dur"] / 1e3
            by_kernel[(re.sub(r"\.\d+$", "", event["name"]), shape, op)] += event["dur"] / 1e3
    total = sum(by_op.values())
    print(f"  profile of one step: {total:.0f} ms of XLA ops over all threads")
    print("  by JAX operation (jvp: forward, transpose: backward):")
    for op, ms in by_op.most_common(top):
        print(f"    {ms:8.1f} ms {100 * ms / total:5.1f}%  {op}")
    print("  by XLA kernel kind, result shape and operation:")
    for (kind, shape, op), ms in by_kernel.most_common(top):
        print(f"    {ms:8.1f} ms {100 * ms / total:5.1f}%  {kind:24s} {shape:26s} {op}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "10m"])
    parser.add_argument("--batch-size", type=int, default=32, help="sdsl train's default: 32")
    parser.add_argument("--seq-len", type=int, default=256, help="sdsl train's default: 256")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="windows per pass (default: training.micro_batch_size's choice)")
    parser.add_argument("--against-whole-batch", action="store_true",
                        help="also time the step that takes the whole batch in one pass, "
                             "taking turns with the default step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per size")
    parser.add_argument("--peak-n", type=int, default=2048, help="matrix side of the peak matmul")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="also trace one step per size and print where its time goes")
    parser.add_argument("--top", type=int, default=20, help="rows of the profile")
    args = parser.parse_args()
    settings = training.TrainSettings(steps=1, batch_size=args.batch_size, seq_len=args.seq_len,
                                      micro_batch_size=args.micro_batch_size)
    variants = {f"{training.micro_batch_size(settings)}": args.micro_batch_size}
    if args.against_whole_batch:
        variants[f"{args.batch_size}"] = args.batch_size
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}; batch {args.batch_size} x seq {args.seq_len}; "
          f"FLOPs = 6 N tokens + 12 L T d tokens (see the docstring)")
    print(f"{'size':>5} {'params':>11} {'micro':>5} {'compile s':>9} {'step s':>7} {'min s':>7} "
          f"{'tokens/s':>9} {'GFLOP/s':>8} {'peak GFLOP/s':>12} {'of peak':>7} {'6N only':>7}")
    for size in args.sizes:
        runs, compile_s = [], []
        for micro in variants.values():
            compiled, state, seconds = setup(size, args.batch_size, args.seq_len, micro)
            runs.append((compiled, state))
            compile_s.append(seconds)
        peak = matmul_peak(args.peak_n, args.peak_repeats)
        times = time_steps(runs, args.steps)
        peak += matmul_peak(args.peak_n, args.peak_repeats)
        flops = step_flops(size, args.batch_size, args.seq_len)
        peak_rate = statistics.median(peak)
        for name, seconds, run_times in zip(variants, compile_s, times):
            median = statistics.median(run_times)
            achieved = (flops["weights"] + flops["attention"]) / median
            print(f"{size:>5} {param_counts(SIZES[size])['total']:>11,} {name:>5} {seconds:>9.1f} "
                  f"{median:>7.3f} {min(run_times):>7.3f} "
                  f"{args.batch_size * args.seq_len / median:>9,.0f} {achieved / 1e9:>8.2f} "
                  f"{peak_rate / 1e9:>12.1f} {achieved / peak_rate:>7.1%} "
                  f"{flops['weights'] / median / peak_rate:>7.1%}", flush=True)
        if len(times) == 2:
            ratio = statistics.median(times[1]) / statistics.median(times[0])
            print(f"{'':>5} the whole batch in one pass takes {ratio:.2f}x the step time "
                  "(medians, taking turns)")
        if args.profile:
            profile(*runs[0], args.top)
    print(f"micro: windows per pass; step s: median of {args.steps} steps (min beside it); "
          f"peak: median of {2 * args.peak_repeats} products of {args.peak_n}^2 float32 matrices, "
          "half before and half after the size's steps; 6N only: the fraction without attention "
          "FLOPs; load: the 1-minute load average at the start")


if __name__ == "__main__":
    main()
