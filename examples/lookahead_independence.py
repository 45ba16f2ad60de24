"""Acceptance does not depend on the lookahead; the serving stacks' ratio does.

One trained (draft, target) pair is decoded at lookahead 2, 4 and 8 over the
same held-out prompts. For each run the script prints

* alpha, estimated from the loop's counts as accepted drafts over judged
  drafts (sdsl_jax.estimation.acceptance), with a bootstrap interval across
  prompts: the same quantity at every lookahead, so the intervals overlap;
* the i.i.d. fit test (sdsl_jax.estimation.positions): whether one rate at every draft
  position describes the run;
* the ratio serving stacks report, (accepted length - 1) / (budget - 1) =
  accepted drafts / drafted tokens, with its own bootstrap interval and the
  value the i.i.d. model predicts from alpha: it counts the drafts after the
  first rejection, which were never judged, so it falls as the lookahead
  grows while the draft has not changed.

    python examples/lookahead_independence.py [--out example-models] [--steps 150]

The models are those of examples/measure_pair.py (a rerun finds them trained
and skips the training). A few minutes on a laptop CPU.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.models import corpus as corpus_lib
from sdsl_jax.estimation.acceptance import estimate_acceptance
from sdsl_jax.models import load_card, load_decoder
from sdsl_jax.estimation.positions import summarize_positions
from sdsl_jax.decoding import loop
from sdsl_jax.models.training import TrainSettings, train_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="example-models", help="where the two models go")
parser.add_argument("--steps", type=int, default=150, help="training steps per model")
parser.add_argument("--prompts", type=int, default=64, help="held-out prompts to decode")
parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per prompt")
parser.add_argument("--lookaheads", type=int, nargs="+", default=[2, 4, 8])
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

DRAFT, TARGET = "10k", "100k"
PROMPT_LEN = 64

# The pair of examples/measure_pair.py (same settings, so it is trained once).
corpus = corpus_lib.load_corpus()
settings = TrainSettings(steps=args.steps, batch_size=16, seq_len=128, eval_tokens=32768)
for size in (DRAFT, TARGET):
    train_model(size, corpus, settings, os.path.join(args.out, size), progress=True)
draft = load_decoder(os.path.join(args.out, DRAFT))
target = load_decoder(os.path.join(args.out, TARGET))
for size in (DRAFT, TARGET):
    card = load_card(os.path.join(args.out, size))
    print(f"{size:>5}: {card['params']:,} parameters, held-out perplexity {card['perplexity']:.2f}")

text = corpus.validation
starts = np.random.default_rng(args.seed).integers(0, text.size - PROMPT_LEN, size=args.prompts)
prompts = jnp.asarray(np.stack([text[s:s + PROMPT_LEN] for s in starts]).astype(np.int32))
lengths = jnp.full((args.prompts,), PROMPT_LEN, jnp.int32)


def serving_ratio_interval(k, mask, gamma, num_resamples=2000, seed=0):
    """Percentile bootstrap across prompts of sum K / (gamma * iterations)."""
    per_prompt_k = np.where(mask, k, 0).sum(1)
    per_prompt_n = mask.sum(1)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(per_prompt_k), (num_resamples, len(per_prompt_k)))
    ratios = per_prompt_k[draw].sum(1) / (gamma * per_prompt_n[draw].sum(1))
    return np.quantile(ratios, [0.025, 0.975])


rows = []
for gamma in args.lookaheads:
    # All prompts in one batch; prompt i's randomness follows i, whatever gamma is.
    gen = loop.speculative_generate(draft, target, prompts, lengths,
                                    jax.random.PRNGKey(args.seed), lookahead=gamma,
                                    max_new_tokens=args.max_new_tokens, temperature=1.0)
    iterations = np.asarray(gen.num_iterations)
    k = np.asarray(gen.accepted)
    mask = np.arange(k.shape[1]) < iterations[:, None]
    ids = np.broadcast_to(np.arange(args.prompts)[:, None], k.shape)
    est = estimate_acceptance(k, np.where(mask, gamma, 0), ids, interval="cluster",
                              num_prompts=args.prompts)
    positions = summarize_positions(k, gamma, ids, mask=mask, num_prompts=args.prompts)
    low, high = serving_ratio_interval(k, mask, gamma)
    rows.append(dict(gamma=gamma, alpha=float(est.acceptance), low=float(est.low),
                     high=float(est.high), iterations=int(mask.sum()),
                     p=positions["geometric_fit_p_value"], ratio=positions["serving_ratio"],
                     ratio_low=low, ratio_high=high, ratio_iid=positions["serving_ratio_iid"],
                     rates=positions["position_rates"]))

print(f"\n{args.prompts} held-out prompts of {PROMPT_LEN} tokens, {args.max_new_tokens} new "
      "tokens each, temperature 1; 95% intervals by bootstrap across prompts\n")
header = (f"{'lookahead':>9}  {'iterations':>10}  {'alpha (accepted / judged)':<27}"
          f"{'i.i.d. fit p':>12}  {'serving ratio (accepted / drafted)':<36}{'i.i.d. value':>12}")
print(header)
print("-" * len(header))
for r in rows:
    alpha = f"{r['alpha']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"
    ratio = f"{r['ratio']:.4f} [{r['ratio_low']:.4f}, {r['ratio_high']:.4f}]"
    p = "-" if r["p"] is None else f"{r['p']:.3g}"
    print(f"{r['gamma']:>9}  {r['iterations']:>10}  {alpha:<27}{p:>12}  {ratio:<36}"
          f"{r['ratio_iid']:>12.4f}")


def overlap(a, b, low, high):
    return max(a[low], b[low]) <= min(a[high], b[high])


pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
alpha_agree = all(overlap(a, b, "low", "high") for a, b in pairs)
ratio_apart = [f"{a['gamma']} vs {b['gamma']}" for a, b in pairs
               if not overlap(a, b, "ratio_low", "ratio_high")]
print(f"\nalpha: every pair of intervals {'overlaps' if alpha_agree else 'does NOT overlap'} "
      "(one acceptance rate, whatever the lookahead)")
print(f"serving ratio: intervals apart for {', '.join(ratio_apart) or 'no pair'} "
      "(it falls with the lookahead: E[K] / gamma = alpha (1 - alpha^gamma) / ((1 - alpha) "
      "gamma) under i.i.d. acceptance)")
for r in rows:
    rates = ", ".join("-" if v is None else f"{v:.3f}" for v in r["rates"])
    print(f"  rate per draft position at lookahead {r['gamma']}: {rates}")
