"""Speculative decoding on the device: the exact sampling rule (with top-k,
top-p and a stop at the end-of-sequence token), the compiled
draft-verify-accept loop, the autoregressive baseline, latency metrics,
per-prompt measurement records, tensor parallelism over a device mesh, and
padding a model's vocabulary to its partner's.

Everything is written against the :class:`sdsl_jax.decoding.decoder.Decoder` contract,
so the same code runs our flax transformers, adapted checkpoints and the exact
n-gram toys of :mod:`sdsl_jax.models.ngram`.
"""

from sdsl_jax.decoding.baseline import autoregressive_generate
from sdsl_jax.decoding.loop import (
    DecodeState,
    Generation,
    ProgramMemory,
    SamplingSettings,
    compiled_memory,
    decode,
    iteration_lookahead,
    pad_prompts,
    prefill,
    prefill_chunk_size,
    row_keys,
    sampling_settings,
    speculative_generate,
    staged_generate,
)
from sdsl_jax.decoding.pair import measure_pair, run_records
from sdsl_jax.decoding.metrics import (
    Timing,
    mean_interval,
    output_tokens,
    record_batches,
    row_latencies,
    summarize,
    timed_generate,
)
from sdsl_jax.decoding.sampling import (
    Verdict,
    acceptance_probability,
    keep_mask,
    probabilities,
    residual,
    sample,
    speculative_accept,
    truncate,
)
from sdsl_jax.decoding.sharding import ShardingReport, describe_sharding, make_mesh, shard_decoder
from sdsl_jax.decoding.vocabulary import pad_vocabulary
