"""Speculative decoding on the device: the exact sampling rule, the compiled
draft-verify-accept loop, the autoregressive baseline, latency metrics and
per-prompt measurement records.

Everything is written against the :class:`sdsl_jax.decoding.decoder.Decoder` contract,
so the same code runs our flax transformers, adapted checkpoints and the exact
n-gram toys of :mod:`sdsl_jax.models.ngram`.
"""

from sdsl_jax.decoding.baseline import autoregressive_generate
from sdsl_jax.decoding.loop import (
    DecodeState,
    Generation,
    decode,
    iteration_lookahead,
    pad_prompts,
    prefill,
    row_keys,
    speculative_generate,
    staged_generate,
)
from sdsl_jax.decoding.pair import measure_pair, run_records
from sdsl_jax.decoding.metrics import (
    Timing,
    mean_interval,
    record_batches,
    row_latencies,
    summarize,
    timed_generate,
)
from sdsl_jax.decoding.sampling import (
    Verdict,
    acceptance_probability,
    probabilities,
    residual,
    sample,
    speculative_accept,
)
