"""Autoregressive decoding with the target alone: the baseline speculation must beat.

It is the speculative loop with lookahead 0: no draft, one target forward per
iteration over the last token, and the "bonus" token of the acceptance rule is
a plain draw from p (the argmax at temperature 0). Sharing the machinery means
the baseline pays the same prefill, the same per-iteration bookkeeping and the
same compiled-loop structure, so a measured speedup compares decoding
strategies, not implementations. It samples under the same settings (top-k,
top-p, the stop at the end-of-sequence token) as the speculative run it is
compared with.
"""

from __future__ import annotations

import jax

from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.decoding.loop import DecodeState, Generation, decode, prefill, speculative_generate


def autoregressive_prefill(target: Decoder, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                           row_keys: jax.Array, *, max_new_tokens: int, temperature=1.0,
                           top_k: int = 0, top_p: float = 1.0,
                           eos_token: int | None = None) -> DecodeState:
    """Read the prompts and sample each row's first token (see :func:`loop.prefill`)."""
    return prefill(None, target, prompt_tokens, prompt_lengths, row_keys, lookahead=0,
                   max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, eos_token=eos_token)


def autoregressive_decode(target: Decoder, state: DecodeState, *,
                          max_new_tokens: int) -> Generation:
    """One target forward and one token per iteration until every row is done (the
    sampling settings are the state's; the state is consumed, as in :func:`loop.decode`)."""
    return decode(None, target, state, lookahead=0, max_new_tokens=max_new_tokens)


def autoregressive_generate(target: Decoder, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                            key: jax.Array, *, max_new_tokens: int, temperature=1.0,
                            top_k: int = 0, top_p: float = 1.0, eos_token: int | None = None,
                            row_ids: jax.Array | None = None) -> Generation:
    """Sample ``max_new_tokens`` tokens per prompt from the target alone.

    Same arguments and randomness convention as
    :func:`~sdsl_jax.decoding.loop.speculative_generate`; the returned
    ``accepted`` counts are all 0 and ``lookahead`` is 0.
    """
    return speculative_generate(None, target, prompt_tokens, prompt_lengths, key, lookahead=0,
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, eos_token=eos_token, row_ids=row_ids)
