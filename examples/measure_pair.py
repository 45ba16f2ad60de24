"""Train a tiny (draft, target) pair and measure its acceptance two ways, from Python.

The same steps as `sdsl train` + `sdsl measure`, through the library:

1. train two byte-level transformers on the Python standard library (no
   download; a rerun finds them finished and skips the training);
2. run the speculative loop over held-out prompts and estimate acceptance
   from its per-iteration accepted counts, with a bootstrap interval across
   prompts;
3. measure the same acceptance teacher-forced (two forward passes over
   held-out text, no generation), with a bootstrap across documents;
4. write both as measurement rows that `sdsl fit` reads.

    python examples/measure_pair.py [--out example-models] [--steps 150]

A minute or two on a laptop CPU. On a CPU models this small cost little more
than their dispatch, so expect no speedup; the acceptance is the point here.
"""

import argparse
import os

import jax
import numpy as np

from sdsl_jax.models import corpus as corpus_lib
from sdsl_jax import MeasurementSet, estimate_acceptance, write_measurements
from sdsl_jax.models import load_card, load_decoder
from sdsl_jax.decoding.pair import measure_pair
from sdsl_jax.decoding.teacher_forced import teacher_forced_acceptance
from sdsl_jax.models.training import TrainSettings, train_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="example-models", help="where the two models go")
parser.add_argument("--steps", type=int, default=150, help="training steps per model")
parser.add_argument("--prompts", type=int, default=16, help="held-out prompts to decode")
parser.add_argument("--lookahead", type=int, default=3)
args = parser.parse_args()

DRAFT, TARGET = "10k", "100k"

# 1. Train (resumable: an interrupted run continues from its last checkpoint).
corpus = corpus_lib.load_corpus()
settings = TrainSettings(steps=args.steps, batch_size=16, seq_len=128, eval_tokens=32768)
for size in (DRAFT, TARGET):
    train_model(size, corpus, settings, os.path.join(args.out, size), progress=True)
draft = load_decoder(os.path.join(args.out, DRAFT))
target = load_decoder(os.path.join(args.out, TARGET))
cards = {size: load_card(os.path.join(args.out, size)) for size in (DRAFT, TARGET)}
for size, card in cards.items():
    print(f"{size:>5}: {card['params']:,} parameters, {card['tokens']:,} training tokens, "
          f"held-out perplexity {card['perplexity']:.2f}")

# Held-out prompts: windows of the validation documents, each fixed by its index.
text = corpus.validation
prompt_len, new_tokens = 64, 32
rng = np.random.default_rng(0)
starts = rng.integers(0, text.size - prompt_len, size=args.prompts)
prompts = [text[s:s + prompt_len].astype(np.int64).tolist() for s in starts]

# 2. The speculative loop: one record per prompt, with every iteration's accepted count.
records = list(measure_pair(draft, target, prompts, lookahead=args.lookahead,
                            max_new_tokens=new_tokens, temperature=1.0,
                            key=jax.random.PRNGKey(0)))
accepted = np.concatenate([np.asarray(r["accepted"]) for r in records])
prompt_ids = np.concatenate([np.full(len(r["accepted"]), r["prompt_id"]) for r in records])
loop_estimate = estimate_acceptance(accepted, args.lookahead, prompt_ids, interval="cluster",
                                    num_prompts=len(records))
speedups = [r["speedup"] for r in records if r["speedup"] is not None]
print(f"\nspeculative loop, lookahead {args.lookahead}, {len(records)} prompts:")
print(f"  acceptance {float(loop_estimate.acceptance):.4f}  "
      f"95% [{float(loop_estimate.low):.4f}, {float(loop_estimate.high):.4f}]  "
      f"(prompts as clusters)")
print(f"  median speedup over the target alone {np.median(speedups):.3f}x")

# 3. Teacher-forced: the exact beta at every position of held-out documents.
documents = [text[s:s + prompt_len + new_tokens].astype(np.int64).tolist() for s in starts]
forced = teacher_forced_acceptance(draft, target, documents, temperature=1.0,
                                   first_position=prompt_len - 1)
print(f"teacher-forced over the same {forced.documents} windows:")
print(f"  acceptance {forced.acceptance:.4f}  95% [{forced.low:.4f}, {forced.high:.4f}]  "
      f"(bootstrap over documents)")
overlap = max(float(loop_estimate.low), forced.low) <= min(float(loop_estimate.high), forced.high)
print(f"  the two intervals {'overlap' if overlap else 'do NOT overlap'}")

# 4. Rows in the measurement-set format, for `sdsl fit` once you have a few pairs.
row = forced.measurement_row(draft_tokens=cards[DRAFT]["tokens"],
                             target_tokens=cards[TARGET]["tokens"], lookahead=args.lookahead)
path = os.path.join(args.out, "rows.jsonl")
write_measurements(MeasurementSet.from_records([row]), path)
print(f"\nwrote {path}; measure more pairs into it, then: sdsl fit {path}")
