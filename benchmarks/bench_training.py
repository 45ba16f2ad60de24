"""Training throughput per model size: compile time, median step time, tokens per second.

Times the jit-compiled training step of sdsl_jax.models.training (batch drawn on the
device, AdamW update, everything but checkpoints and the progress bar) on
random tokens, so the numbers are the model's, not the corpus loader's.

  python benchmarks/bench_training.py                       # every size up to 30m
  python benchmarks/bench_training.py --sizes 10k 1m --batch-size 32 --seq-len 256

Steps per size shrink with size so a CPU run stays short; tokens/s is what to
compare across sizes (a 6 N flop-per-token model predicts it falls ~1/N once
the step is compute bound).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.models import training
from sdsl_jax.models import SIZES, abstract_params, init_params, param_counts


def bench(size: str, batch_size: int, seq_len: int, steps: int) -> dict:
    config = SIZES[size]
    settings = training.TrainSettings(steps=1000, batch_size=batch_size, seq_len=seq_len).resolved(size)
    optimizer = training.make_optimizer(settings)
    packing = training.ParamPacking.of(abstract_params(config))
    packed = packing.pack(init_params(config, 0))
    opt_state = optimizer.init(packed)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint16))
    key = jax.random.PRNGKey(0)
    step = training.make_train_step(config, settings)
    start = time.perf_counter()
    packed, opt_state, loss = step(packed, opt_state, tokens, key, jnp.int32(0))
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    times = []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        packed, opt_state, loss = step(packed, opt_state, tokens, key, jnp.int32(i))
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(size=size, params=param_counts(config)["total"], compile_s=compile_s,
                step_ms=median * 1e3, tokens_per_s=batch_size * seq_len / median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+",
                        default=["10k", "30k", "100k", "200k", "600k", "1m", "3m", "6m", "10m", "30m"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps for the smallest size")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}; batch {args.batch_size} x seq {args.seq_len}")
    print(f"{'size':>6}  {'params':>12}  {'compile s':>9}  {'step ms':>9}  {'tokens/s':>10}")
    for size in args.sizes:
        # Fewer timed steps for big models: the median of 3 is enough when a step takes seconds.
        steps = max(3, int(args.steps * min(1.0, 1e6 / param_counts(SIZES[size])["total"])))
        r = bench(size, args.batch_size, args.seq_len, steps)
        print(f"{r['size']:>6}  {r['params']:>12,}  {r['compile_s']:>9.1f}  {r['step_ms']:>9.1f}  "
              f"{r['tokens_per_s']:>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
