"""A model's vocabulary widened with ids of probability zero, so a draft and a target agree in size.

Checkpoints of one family share a tokenizer but not always their number of
embedding rows: Qwen2.5-0.5B has 151936 and Qwen2.5-7B 152064; Pythia models
have 50304 or more. Rows beyond the tokenizer's ids are padding for matmul
efficiency; no text maps to them. The loop needs one vocabulary size V for
both models, so the smaller one is padded to the larger one's V.

`pad_vocabulary` appends logits equal to the lowest finite value of the
logits' dtype. Their probability after softmax is exactly 0 (``exp``
underflows), at any temperature and under top-k and top-p, so:

- a padded draft never proposes a padded id;
- a padded target never emits one: the exact sampling rule (Leviathan et al.
  2023; Chen et al. 2023) keeps its output distributed as the target's,
  which is unchanged on the target's own ids and 0 on the padded ones.

The value is finite rather than ``-inf`` so that arithmetic on logits
(subtracting a maximum, scaling by a temperature) never makes a NaN.

A padded model may still be fed a padded id as input: a target verifies
whatever the draft proposed, and a draft continues from whatever the target
emitted. Such an id has no embedding row, so it is read as the model's last
real id. This cannot change the output distribution: the target rejects
such a proposal with probability 1 and its logits after it are discarded; a
draft reading one only changes what it proposes next, which the target then
judges as usual.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.validation import is_concrete
from sdsl_jax.decoding.decoder import Decoder, ForwardFn


@dataclasses.dataclass(frozen=True)
class PaddedForward:
    """``forward`` with logits widened from ``model_vocab_size`` to ``vocab_size`` ids.

    A frozen dataclass, so it compares and hashes by value: compiled loops
    keyed on ``Decoder.forward`` are shared by equal paddings of equal models.
    """

    forward: ForwardFn
    model_vocab_size: int
    vocab_size: int

    def __call__(self, params, tokens, start, cache):
        if is_concrete(tokens):
            tok = np.asarray(tokens)
            if tok.size and tok.max() >= self.vocab_size:
                raise ValueError(f"tokens must lie in [0, {self.vocab_size}), got {int(tok.max())}")
        # A padded id has no embedding row; see the module docstring for why any real id will do.
        tokens = jnp.minimum(tokens, self.model_vocab_size - 1)
        logits, cache = self.forward(params, tokens, start, cache)
        padding = jnp.full((*logits.shape[:-1], self.vocab_size - self.model_vocab_size),
                           jnp.finfo(logits.dtype).min, logits.dtype)
        return jnp.concatenate([logits, padding], axis=-1), cache


def pad_vocabulary(decoder: Decoder, vocab_size: int) -> Decoder:
    """``decoder`` with ``vocab_size`` ids, those beyond its own of probability exactly 0.

    Args:
      decoder: any Decoder.
      vocab_size: at least ``decoder.vocab_size``; equal returns ``decoder``
        itself.

    Returns:
      A Decoder with the same params, cache, num_params, name, dtype and
      sharding annotations, whose forward returns logits [B, T, vocab_size].
      Padding a padded decoder pads the original once.

    Raises:
      ValueError: when ``vocab_size`` is not an integer or is smaller than
        the decoder's own vocabulary (padding cannot remove ids).
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise ValueError(f"vocab_size must be an integer, got {vocab_size!r}")
    vocab_size = int(vocab_size)
    if vocab_size < decoder.vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is smaller than {decoder.name}'s {decoder.vocab_size} ids; "
                         "padding cannot remove ids")
    if vocab_size == decoder.vocab_size:
        return decoder
    forward, model_vocab_size = decoder.forward, decoder.vocab_size
    if isinstance(forward, PaddedForward):
        forward, model_vocab_size = forward.forward, forward.model_vocab_size
    return dataclasses.replace(decoder, forward=PaddedForward(forward, model_vocab_size, vocab_size),
                               vocab_size=vocab_size)

