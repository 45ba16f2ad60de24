"""Fit the scaling laws to your own acceptance measurements, and size a draft with error bars.

    python examples/fit_from_csv.py                        # the bundled example data
    python examples/fit_from_csv.py my_measurements.csv --target-params 8B --target-tokens 15T

The CSV has one row per measured (draft, target) pair: draft_params,
target_params, draft_tokens, target_tokens, draft_perplexity,
target_perplexity, lookahead, and either acceptance or the accepted/trials
counts (model names optional; the full format is in sdsl_jax/estimation/measurements.py).
JSON Lines and Parquet work too. This is what `sdsl fit` does, from Python.

examples/data/measurements.csv is synthetic, not measured: 12 drafts x 12
targets drawn by sdsl_jax.fitting.synthetic.synthetic_columns(seed=11,
num_targets=12, num_drafts=12, perplexity_noise=0.003, target_range=(4e9, 7e10),
draft_range=(5e7, 2e9), tokens_range=(2e10, 1.5e13)) from the paper's laws
(Besiroglu et al. 2024 and the joint acceptance plane), with 0.3% scatter on each
model's perplexity, 1% on each pair's acceptance and 4000 verified positions per
pair, rounded as a measurement log would be. So the intervals below should
cover the paper's coefficients.
"""

import argparse
import os

import jax
import numpy as np

from sdsl_jax.fitting import report as fit_report
from sdsl_jax.fitting import COEFFICIENTS, draft_size_interval
from sdsl_jax.estimation.measurements import read_measurements
from sdsl_jax.common.quantities import format_count, parse_count

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "measurements.csv")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurements", nargs="?", default=DATA)
    parser.add_argument("--target-params", type=parse_count, default=70e9)
    parser.add_argument("--target-tokens", type=parse_count, default=15e12)
    parser.add_argument("--draft-tokens", type=parse_count, default=None,
                        help="tokens the draft will be trained on (default: the target's)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    args = parser.parse_args(argv)
    draft_tokens = args.draft_tokens or args.target_tokens

    # Intervals need float64: the fits' Hessians are ill-conditioned enough
    # that float32 keeps only a few digits. Scoped, like the CLI.
    with jax.enable_x64(True):
        measurements = read_measurements(args.measurements)
        result = fit_report.fit_all(measurements, bootstrap=args.bootstrap)
        laws, report = result["laws"], result["report"]
        e2e = report["end_to_end"]
        print(f"{report['measurements']} measurements, {report['targets']} targets, "
              f"{report['models']} distinct models, from {os.path.relpath(args.measurements)}")
        print(f"\n{'coefficient':<17} {'estimate':>10}   {'95% delta method':<22}  95% bootstrap")
        for name in COEFFICIENTS:
            entry = e2e["coefficients"][name]
            print(f"{name:<17} {entry['estimate']:>10.4g}   "
                  f"{_interval(entry, 'delta'):<22}  {_interval(entry, 'bootstrap')}")
        print(f"acceptance R^2 {e2e['acceptance_r2']:.3f} (predicted from sizes and tokens alone), "
              f"loss R^2 {e2e['loss_r2']:.4f}")
        note = fit_report.bootstrap_summary(e2e)
        if note is not None:
            print(note)

        print(f"\nN* for a {format_count(args.target_params)} target trained on "
              f"{format_count(args.target_tokens)} tokens, the draft on {format_count(draft_tokens)}:")
        # The delta method needs the covariance, the bootstrap the resamples;
        # a fit whose data cannot give one has None there.
        intervals = [kind for kind, have in (("delta", laws.covariance), ("bootstrap", laws.samples))
                     if have is not None]
        for interval in intervals:
            n_star = draft_size_interval(laws, args.target_params, draft_tokens, args.target_tokens,
                                         interval=interval)
            if not bool(n_star.plan.pays):
                print("  no draft pays under these laws")
                return
            print(f"  N* = {format_count(float(n_star.plan.draft_params))}, 95% interval ({interval}) "
                  f"{format_count(float(n_star.low))} to {format_count(float(n_star.high))}"
                  f" (speedup {float(n_star.plan.speedup):.2f}x at lookahead "
                  f"{int(n_star.plan.integer_lookahead)})")


def _interval(entry, method) -> str:
    low, high = entry.get(f"{method}_low"), entry.get(f"{method}_high")
    if low is None or high is None or not np.isfinite([low, high]).all():
        return "n/a"
    return f"[{low:.4g}, {high:.4g}]"


if __name__ == "__main__":
    main()
