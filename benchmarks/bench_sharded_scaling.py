"""How sharded batch planning scales from 1e4 to 1e8 configurations.

Each size streams its configurations through sdsl_jax.planning.sharded.stream_configs
(the FLOP planner, N* only brought back) in chunks of --chunk, sharded over
every device. The inputs come from one pool of random (M, D, D') the size of
a chunk, sliced again for every chunk, so the host's random number generator
is not what is timed; padding, transfers and the planner are. Compilation is
excluded (a warm-up run per distinct chunk shape). Sizes whose projected time
exceeds --budget-seconds are not run but extrapolated linearly from the
largest measured size, and marked so.

    python benchmarks/bench_sharded_scaling.py [--max 1e8] [--chunk 1048576] [--dtype float32]
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/bench_sharded_scaling.py
"""

import argparse
import time

import jax
import numpy as np

import sdsl_jax as sd
from sdsl_jax.planning import sharded


def n_star(target_params, draft_tokens, target_tokens, pretraining_law, acceptance_law):
    return sd.optimal_draft_size(target_params, draft_tokens, target_tokens,
                                 pretraining_law=pretraining_law, acceptance_law=acceptance_law).draft_params


def run(total, pool, chunk, dtype):
    """Seconds to plan ``total`` configurations, and a checksum of the answers."""
    chunk = min(chunk, total)
    starts = range(0, total, chunk)
    chunks = ([column[: min(chunk, total - start)] for column in pool] for start in starts)
    begin = time.perf_counter()
    checksum = 0.0
    for result in sharded.stream_configs(n_star, chunks, chunk_size=chunk, dtype=dtype,
                                         shared=(sd.BESIROGLU_2024, sd.SDSL_2026)):
        checksum += float(np.sum(result, dtype=np.float64))
    return time.perf_counter() - begin, checksum


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=float, default=1e8)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--repeats", type=int, default=3, help="for sizes up to 1e6 (median)")
    parser.add_argument("--budget-seconds", type=float, default=180.0)
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    rng = np.random.default_rng(0)
    pool = [10 ** rng.uniform(9, 12, args.chunk), 10 ** rng.uniform(10, 13.5, args.chunk),
            10 ** rng.uniform(11, 13.5, args.chunk)]
    print(f"{jax.device_count()} {jax.default_backend()} device(s), {args.dtype}, "
          f"chunks of {args.chunk:,} configurations")
    print(f"{'configs':>12} {'seconds':>10} {'ns/config':>10} {'configs/s':>12} {'x prev':>7}")
    sizes = [int(10**k) for k in range(4, int(round(np.log10(args.max))) + 1)]
    measured = []
    previous = None
    for total in sizes:
        if measured:
            last_total, last_seconds = measured[-1]
            projected = last_seconds * total / last_total
        else:
            projected = 0.0
        if projected > args.budget_seconds:
            seconds, note = projected, f"  extrapolated from {last_total:.0e} (over {args.budget_seconds:.0f} s)"
        else:
            run(min(total, args.chunk), pool, args.chunk, args.dtype)  # compile this chunk shape
            repeats = args.repeats if total <= 1_000_000 else 1
            seconds = float(np.median([run(total, pool, args.chunk, args.dtype)[0] for _ in range(repeats)]))
            measured.append((total, seconds))
            note = ""
        ratio = f"{seconds / previous:7.2f}" if previous else f"{'':>7}"
        print(f"{total:>12,} {seconds:>10.3f} {seconds / total * 1e9:>10.0f} {total / seconds:>12,.0f} "
              f"{ratio}{note}", flush=True)
        previous = seconds


if __name__ == "__main__":
    main()
