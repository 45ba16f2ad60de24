"""Speculative decoding on the device: the exact sampling rule, the compiled
draft-verify-accept loop, the autoregressive baseline, latency metrics and
per-prompt measurement records.

Everything is written against the :class:`sdsl_jax.decoder.Decoder` contract,
so the same code runs our flax transformers, adapted checkpoints and the exact
n-gram toys of :mod:`sdsl_jax.toy_models`.
"""

from sdsl_jax.speculative.baseline import autoregressive_generate
from sdsl_jax.speculative.loop import (
    DecodeState,
    Generation,
    decode,
    iteration_lookahead,
    pad_prompts,
    prefill,
    row_keys,
    speculative_generate,
)
from sdsl_jax.speculative.measure import measure_pair, run_records
from sdsl_jax.speculative.metrics import (
    Timing,
    mean_interval,
    row_latencies,
    student_t_quantile,
    summarize,
    timed_generate,
)
from sdsl_jax.speculative.sampling import (
    Verdict,
    acceptance_probability,
    probabilities,
    residual,
    sample,
    speculative_accept,
)
