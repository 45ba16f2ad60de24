"""Coverage of every interval sdsl-jax prints, by simulation on data shaped like real measurements.

Each interval is a promise: at nominal 95% it should contain the truth in
93-97% of simulated data sets. The simulations have the structure real
measurements have, which is what naive intervals miss:

* fit:  synthetic measurement sets (9 drafts x 8 targets, the default
  generator) whose models each deviate from the pre-training law by their own
  log-normal factor, shared by every acceptance row that uses the model and by
  its loss point (perplexity noise 0.01, 0.03 and 0.05). Truth: the laws the
  data were drawn from (pretraining.BESIROGLU_2024, acceptance.SDSL_2026).
  Intervals: the end-to-end fit's delta and bootstrap intervals of the eight
  coefficients (``fit_all``, what ``sdsl fit`` prints) and N*'s
  (``draft_size_interval``, what ``sdsl plan --laws`` prints) at two
  configurations. In float64, as the command line fits (``--float32`` for the
  library's default precision); a fit that flags itself as not converged
  still counts, since its intervals are printed too.
* acceptance: loop runs of 2, 4, 8 and 32 prompts whose acceptance rates
  differ (Beta around the mean, concentration 20), 4-30 iterations each,
  lookahead 4; the interval ``summarize`` (``sdsl measure``) prints. Truth:
  the population ratio E[sum K] / E[sum trials], from the Beta moments.
* positions: the per-position rates of the same runs (``summarize_positions``);
  truth E[alpha^i] / E[alpha^(i-1)].
* latency: TTFT, TPOT and TTOT of runs at batch size 1 and 4, where a batch
  shares one prefill and one decode timing (a log-normal factor per batch)
  and rows differ by the step they finish in. Truth: the expected per-prompt
  latency. The interval ``summarize`` prints.
* teacher-forced: 16 documents of log-uniform length (70 to 36k positions),
  per-document rates ~ Beta(18, 12); ``document_interval``. Truth 0.6.

Run as

    python benchmarks/bench_coverage.py [--only fit,acceptance,positions,latency,teacher-forced]
        [--sets 100] [--runs 1000] [--bootstrap 200] [--float32] [--jsonl results.jsonl]

Every line is printed (and appended to --jsonl) as soon as its case is done.
The status column says whether the coverage lies in [0.93, 0.97]; with
``runs`` replicates its own Monte Carlo error is about
sqrt(0.95 * 0.05 / runs) (0.007 at 1000, 0.022 at 100).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sdsl_jax  # noqa: E402
from sdsl_jax.decoding import metrics  # noqa: E402
from sdsl_jax.estimation import positions  # noqa: E402
from sdsl_jax.fitting import laws as laws_lib  # noqa: E402
from sdsl_jax.fitting.report import fit_all  # noqa: E402
from sdsl_jax.fitting.synthetic import synthetic_measurements  # noqa: E402
from sdsl_jax.fitting.uncertainty import draft_size_interval  # noqa: E402
from sdsl_jax.laws import acceptance as acceptance_law  # noqa: E402
from sdsl_jax.laws import pretraining  # noqa: E402

NOMINAL = 0.95
BAND = (0.93, 0.97)
SECTIONS = ("fit", "acceptance", "positions", "latency", "teacher-forced")


class Table:
    """Prints one line per case as it finishes, and appends it to a JSON Lines file."""

    def __init__(self, jsonl: str | None):
        self.jsonl = jsonl
        print(f"{'section':<15}{'case':<44}{'interval':<12}{'coverage':>9}{'nominal':>9}"
              f"{'n':>6}{'median width':>14}  status", flush=True)

    def add(self, section, case, interval, hits, widths, extra=""):
        hits = np.asarray(hits, bool)
        n = hits.size
        cover = float(hits.mean()) if n else math.nan
        width = float(np.median(widths)) if len(widths) else math.nan
        status = "ok" if BAND[0] <= cover <= BAND[1] else ("LOW" if cover < BAND[0] else "HIGH")
        print(f"{section:<15}{case:<44}{interval:<12}{cover:>9.3f}{NOMINAL:>9.2f}{n:>6}"
              f"{width:>14.4g}  {status}{extra}", flush=True)
        if self.jsonl:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({"section": section, "case": case, "interval": interval,
                                    "coverage": cover, "nominal": NOMINAL, "n": n,
                                    "median_width": width, "status": status,
                                    "package": sdsl_jax.__file__}) + "\n")


def contains(low, high, truth):
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    with np.errstate(invalid="ignore"):
        return (low <= truth) & (truth <= high)


# ---------------------------------------------------------------------------
# Fits.

CONFIGS = np.array([[7e9, 1e12, 1e12], [7e10, 1e13, 1e13]])  # (M, D', D)


def bench_fit(table: Table, sets: int, bootstrap: int, noises=(0.01, 0.03, 0.05)):
    truth = np.asarray(laws_lib.coefficient_vector(pretraining.BESIROGLU_2024,
                                                   acceptance_law.SDSL_2026), np.float64)
    m, dp, d = (CONFIGS[:, i] for i in range(3))
    true_plan = sdsl_jax.optimal_draft_size(m, dp, d, pretraining_law=pretraining.BESIROGLU_2024,
                                            acceptance_law=acceptance_law.SDSL_2026)
    true_n = np.asarray(true_plan.draft_params, np.float64)
    names = list(laws_lib.COEFFICIENTS)
    for noise in noises:
        hits = {(k, name): [] for k in ("delta", "bootstrap") for name in names + ["N*@7B", "N*@70B"]}
        widths = {key: [] for key in hits}
        failed = unconverged = 0
        for s in range(sets):
            data = synthetic_measurements(seed=10_000 + s, perplexity_noise=noise)
            try:
                out = fit_all(data, bootstrap=bootstrap, seed=s)
            except ValueError:
                failed += 1
                continue
            e2e = out["report"]["end_to_end"]
            # Counted all the same: the intervals are printed whether or not
            # the fit flags itself as converged.
            unconverged += not e2e["converged"]
            for i, name in enumerate(names):
                entry = e2e["coefficients"][name]
                for kind in ("delta", "bootstrap"):
                    lo, hi = entry.get(f"{kind}_low"), entry.get(f"{kind}_high")
                    if kind == "bootstrap" and bootstrap == 0:
                        continue
                    if lo is None or hi is None:
                        hits[kind, name].append(False)
                        continue
                    hits[kind, name].append(lo <= truth[i] <= hi)
                    widths[kind, name].append(hi - lo)
            laws = out["laws"]
            for kind in ("delta", "bootstrap"):
                if (kind == "delta" and laws.covariance is None) or (
                        kind == "bootstrap" and laws.samples is None):
                    continue
                got = draft_size_interval(laws, m, dp, d, interval=kind)
                lo, hi = np.asarray(got.low, np.float64), np.asarray(got.high, np.float64)
                for j, label in enumerate(("N*@7B", "N*@70B")):
                    hits[kind, label].append(bool(lo[j] <= true_n[j] <= hi[j]))
                    widths[kind, label].append(math.log(hi[j] / lo[j]) if lo[j] > 0 else math.inf)
        note = f"  ({failed} fits refused, {unconverged} flagged not converged, of {sets})"
        for (kind, name), h in hits.items():
            if h:
                table.add("fit", f"ppl noise {noise}: {name}", kind, h, widths[kind, name],
                          note if name == names[0] else "")


# ---------------------------------------------------------------------------
# Loop runs: prompts with their own acceptance rate.

def beta_moment(a, b, i):
    """E[alpha^i] for alpha ~ Beta(a, b)."""
    return float(np.prod([(a + j) / (a + b + j) for j in range(i)]))


def simulate_run(rng, prompts, mean, concentration, lookahead, iterations=(4, 30)):
    """Per-prompt records of a simulated loop run (accepted K per iteration)."""
    a, b = mean * concentration, (1 - mean) * concentration
    rates = rng.beta(a, b, prompts)
    records = []
    for p in range(prompts):
        n = int(rng.integers(iterations[0], iterations[1] + 1))
        # K: the first rejection among lookahead Bernoulli(rate) drafts.
        draws = rng.random((n, lookahead)) < rates[p]
        k = np.where(draws.all(1), lookahead, np.argmin(draws, 1))
        records.append({"accepted": k.tolist(), "lookahead": lookahead, "beta_sum": 0.0,
                        "beta_count": 0, "ttft_s": 0.1, "tpot_s": 0.01, "ttot_s": 1.0,
                        "batch_size": 1, "batch_index": p})
    return records


def loop_truth(mean, concentration, lookahead):
    a, b = mean * concentration, (1 - mean) * concentration
    accepted = sum(beta_moment(a, b, i) for i in range(1, lookahead + 1))
    trials = sum(beta_moment(a, b, i) for i in range(lookahead))
    return accepted / trials


def bench_acceptance(table: Table, runs: int, prompt_counts=(2, 4, 8, 32),
                     means=(0.3, 0.6, 0.9), concentration=20.0, lookahead=4):
    for prompts in prompt_counts:
        for mean in means:
            rng = np.random.default_rng(int(1000 * mean) + prompts)
            truth = loop_truth(mean, concentration, lookahead)
            hits, widths = [], []
            for r in range(runs):
                s = metrics.summarize(simulate_run(rng, prompts, mean, concentration, lookahead),
                                      key=jax.random.PRNGKey(r))
                hits.append(s["acceptance_low"] <= truth <= s["acceptance_high"])
                widths.append(s["acceptance_high"] - s["acceptance_low"])
            table.add("acceptance", f"{prompts} prompts, alpha {mean}", "printed", hits, widths)


def bench_positions(table: Table, runs: int, prompt_counts=(2, 4, 8, 32), mean=0.6,
                    concentration=20.0, lookahead=4):
    a, b = mean * concentration, (1 - mean) * concentration
    truth = np.array([(a + i - 1) / (a + b + i - 1) for i in range(1, lookahead + 1)])
    for prompts in prompt_counts:
        rng = np.random.default_rng(7 + prompts)
        hits, widths = [], []
        for r in range(runs):
            records = simulate_run(rng, prompts, mean, concentration, lookahead)
            acc, gam, ids = metrics.acceptance_inputs(records)
            out = positions.summarize_positions(acc, lookahead, ids, mask=gam > 0,
                                                key=jax.random.PRNGKey(r))
            low = np.array([np.nan if v is None else v for v in out["position_rates_low"]])
            high = np.array([np.nan if v is None else v for v in out["position_rates_high"]])
            hits.append(contains(low, high, truth))
            widths.append(high - low)
        hits, widths = np.array(hits), np.array(widths)
        for i in range(lookahead):
            table.add("positions", f"{prompts} prompts, position {i + 1}", "printed", hits[:, i],
                      widths[:, i][np.isfinite(widths[:, i])])


# ---------------------------------------------------------------------------
# Latency: rows of a batch share one timing.

def simulate_latency(rng, prompts, batch_size, lookahead=4, prefill=0.05, decode=1.0,
                     batch_sigma=0.2, max_new_tokens=64):
    records = []
    for start in range(0, prompts, batch_size):
        batch = start // batch_size
        rows = min(batch_size, prompts - start)
        # The machine's speed during this batch: one factor for its whole timing.
        factor = math.exp(rng.normal(0.0, batch_sigma))
        t_prefill, t_decode = prefill * factor, decode * factor
        share = rng.uniform(0.5, 1.0, rows)  # the step each row finished in, over all steps
        share[rng.integers(rows)] = 1.0  # the batch runs until its slowest row is done
        for j in range(rows):
            row_decode = t_decode * share[j]
            records.append({"accepted": [1, 2], "lookahead": lookahead, "beta_sum": 0.0,
                            "beta_count": 0, "ttft_s": t_prefill,
                            "tpot_s": row_decode / (max_new_tokens - 1),
                            "ttot_s": t_prefill + row_decode, "batch_size": batch_size,
                            "batch_index": batch})
    return records


def latency_truth(batch_size, prefill=0.05, decode=1.0, batch_sigma=0.2, max_new_tokens=64):
    factor = math.exp(batch_sigma**2 / 2)
    # Expected share: one row of the batch at 1, the others uniform on [0.5, 1].
    share = (1.0 + (batch_size - 1) * 0.75) / batch_size
    return {"ttft_s": prefill * factor, "tpot_s": decode * factor * share / (max_new_tokens - 1),
            "ttot_s": (prefill + decode * share) * factor}


def bench_latency(table: Table, runs: int, cases=((1, 8), (1, 32), (4, 16), (4, 64))):
    for batch_size, prompts in cases:
        rng = np.random.default_rng(100 * batch_size + prompts)
        truth = latency_truth(batch_size)
        hits = {name: [] for name in truth}
        widths = {name: [] for name in truth}
        for r in range(runs):
            s = metrics.summarize(simulate_latency(rng, prompts, batch_size),
                                  key=jax.random.PRNGKey(r), num_resamples=200)
            for name, value in truth.items():
                hits[name].append(s[f"{name}_low"] <= value <= s[f"{name}_high"])
                widths[name].append(s[f"{name}_high"] - s[f"{name}_low"])
        for name in truth:
            table.add("latency", f"batch {batch_size}, {prompts} prompts: {name}", "printed",
                      hits[name], widths[name])


# ---------------------------------------------------------------------------
# Teacher-forced acceptance over documents.

def bench_teacher_forced(table: Table, runs: int, documents=16):
    from sdsl_jax.decoding.teacher_forced import document_interval

    rng = np.random.default_rng(3)
    hits, widths = [], []
    for r in range(runs):
        sizes = np.round(np.exp(rng.uniform(math.log(70), math.log(36_000), documents)))
        rates = rng.beta(18, 12, documents)
        sums = rng.binomial(sizes.astype(np.int64), rates).astype(np.float64)
        low, high = document_interval(sums, sizes, jax.random.PRNGKey(r))
        hits.append(low <= 0.6 <= high)
        widths.append(high - low)
    table.add("teacher-forced", f"{documents} documents, log-uniform sizes", "printed", hits, widths)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections among {SECTIONS}")
    parser.add_argument("--sets", type=int, default=100, help="synthetic sets per fit noise level")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit")
    parser.add_argument("--runs", type=int, default=1000, help="simulated runs per loop case")
    parser.add_argument("--float32", action="store_true",
                        help="fit in float32 (the library default) instead of float64 (the CLI's)")
    parser.add_argument("--jsonl", default=None, help="append every result line to this file")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    print(f"# sdsl_jax from {os.path.dirname(sdsl_jax.__file__)}; jax {jax.__version__}; "
          f"nominal {NOMINAL:.0%}, target band {BAND}", flush=True)
    table = Table(args.jsonl)
    start = time.perf_counter()
    def fit():
        # In float64, as `sdsl fit` runs (cli/app.py); --float32 for the library default.
        with jax.enable_x64(not args.float32):
            bench_fit(table, args.sets, args.bootstrap)

    runners = {"fit": fit,
               "acceptance": lambda: bench_acceptance(table, args.runs),
               "positions": lambda: bench_positions(table, args.runs),
               "latency": lambda: bench_latency(table, args.runs),
               "teacher-forced": lambda: bench_teacher_forced(table, args.runs)}
    for section in only:
        runners[section]()
    print(f"# {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
