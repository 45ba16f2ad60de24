r"""The draft-verify-accept loop, compiled once and kept on the device.

Layout of a row
---------------
Each batch row holds its own sequence, left-aligned: the prompt at positions
``0 .. P_b - 1``, then the generated tokens. ``length[b] = n`` counts the
committed tokens. Between iterations both caches hold correct entries for
every position ``<= n - 2``; the last committed token, at ``n - 1``, has not
been fed to the models yet. An iteration then:

1. drafts: one draft forward over the two tokens at ``n - 2, n - 1`` (the
   first is usually already cached and is rewritten identically; after an
   iteration that accepted every draft it is the draft's last token, which
   the draft never saw), then ``gamma - 1`` single-token forwards, sampling
   x_1..x_gamma from q under the run's sampling settings;
2. verifies: one target forward over ``[token n - 1, x_1 .. x_gamma]`` at
   ``n - 1``, giving p_1..p_{gamma+1};
3. accepts K drafts and emits one more token
   (:func:`~sdsl_jax.decoding.sampling.speculative_accept`), so
   ``n <- n + K + 1``.

Rejected drafts are rolled back by not advancing ``n``: the stale cache
entries beyond it are never read (the Decoder contract) and are overwritten by
the next iteration. Rows advance independently; a row that has its
``max_new_tokens``, or has committed the end-of-sequence token, stops
changing while the others finish (its forwards still run, as shapes are
static, at positions clamped inside the cache).

The whole loop is one ``lax.while_loop`` inside ``jit``; the draft steps are a
``lax.scan``. Nothing returns to the host until every row is done. It is
compiled once per (decoder functions, batch and prompt shape, lookahead,
max_new_tokens, acceptance rule); the weights and the sampling settings
(temperature, top-k, top-p, the end-of-sequence token) are traced, so one
compilation serves every setting.

Sampling settings
-----------------
Draft and target both sample from their truncated distributions
(:func:`~sdsl_jax.decoding.sampling.probabilities`: temperature, then top-k,
then top-p), so the output follows the target's truncated distribution: what
a deployment with those settings serves, and the acceptance it measures is
that deployment's. With ``eos_token`` a row stops at the first end-of-sequence
token it commits: the tokens after it are not part of its output (the
iteration may have accepted drafts beyond it; they are discarded), its
``num_generated`` counts up to and including it, and the row is done. This is
exactly the target sampled until it emits the token. What the iteration that
contained it records: ``accepted`` is its full K and ``betas`` every position
it judged, drafts beyond the end-of-sequence token included. Those acceptance
tests ran, each a genuine draw with probability beta at its prefix; cutting K
at the token would keep the rejection-free prefix of an iteration chosen by
its outcome and bias the acceptance estimate (trials = min(K + 1, gamma)
assumes a rejection after K unless K = gamma).

Memory
------
The decode program takes the :class:`DecodeState` by donation and returns the
final state in the same buffers, so the caches (the largest thing the loop
holds besides the weights) are updated in place and never copied: without
donation XLA would copy the input caches into the loop's carry, doubling
their memory. A state can therefore be decoded once; :func:`decode` drops the
final state and returns only the :class:`Generation`. The prefill creates the
caches itself (``init_cache`` inside the program), so nothing of its inputs
is worth donating: the prompts, lengths and keys are small and a caller
(:func:`staged_generate`, a warmup run) may prefill the same inputs again.
:func:`compiled_memory` reports what both programs need (arguments, outputs,
temporaries) from XLA's compiled memory analysis, on any device. It compiles
them ahead of time for the run's shapes, and JAX keeps those executables for
the run's own calls: the run compiles nothing more, so the estimate is free.

The prefill reads a long prompt in chunks of C positions (a ``lax.scan``
over one compiled forward, each chunk writing the caches as one call over
the whole prompt would), keeping only each row's logits at its last prompt
position. A forward over the whole padded prompt [B, P] would hold float32
logits [B, P, V], which for Llama 3's 128,256-token vocabulary and 8
prompts of 3,840 tokens is 15.8 GB, more than the target's cache; chunked,
the logits peak at B x C x V, and the attention scores shrink with them.
C comes from a byte budget (:data:`PREFILL_LOGITS_BYTES`, see
:func:`prefill_chunk_size`); a prompt no longer than C is read in one call.
The draft's prefill keeps no logits at all.

The prefill is separate so that it can be timed on its own (time to first
token): both models read the prompt and the target samples the first token.

Randomness
----------
The prefill draws all of a row's uniforms at once from its own key: one for
the first token, and 2 gamma + 1 per iteration (gamma draft draws, gamma
acceptance tests, one emitted token), every draw by inverse CDF. So no PRNG
runs inside the loop (which also keeps it quick to compile), and a prompt's
output depends on its own key only, not on the batch it was decoded in.

Lookahead 0 is plain autoregressive sampling from the target through the same
machinery (no draft model is needed): see :mod:`sdsl_jax.decoding.baseline`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common import validation as _validate
from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.decoding.sampling import AcceptFn, probabilities, sample, speculative_accept

PyTree = Any


class DecodeState(NamedTuple):
    """The loop's carry (B rows, a buffer of L positions, I iterations at most)."""

    sequence: jax.Array  # int32[B, L]: prompt then generated tokens
    length: jax.Array  # int32[B]: committed tokens n
    prompt_length: jax.Array  # int32[B]
    draft_cache: PyTree  # None without a draft
    target_cache: PyTree
    uniforms: jax.Array  # float[B, I, 2 gamma + 1]: each iteration's U[0, 1) draws
    temperature: jax.Array  # scalar
    top_k: jax.Array  # int32 scalar, 0: off
    top_p: jax.Array  # float scalar in (0, 1], 1: off
    eos_token: jax.Array  # int32 scalar, -1: no stop at end of sequence
    iteration: jax.Array  # int32[B]: iterations done
    accepted: jax.Array  # int32[B, I]
    betas: jax.Array  # float[B, I, gamma]
    finish_step: jax.Array  # int32[B]: loop step after which the row was done
    step: jax.Array  # int32 scalar: loop steps run


@chex.dataclass(frozen=True)
class Generation:
    """A finished run over a batch of B prompts.

    Attributes:
      tokens: int32[B, max_new_tokens], the generated tokens (the last
        iteration may have produced more; they are cut off here). A row that
        stopped at the end-of-sequence token holds it at
        ``num_generated - 1`` and is filled with it after that.
      num_generated: int32[B], tokens produced: >= max_new_tokens, or up to
        and including the end-of-sequence token for a row that stopped there
        (:attr:`stopped`).
      accepted: int32[B, I], K of each iteration (I = max_new_tokens - 1;
        0 beyond ``num_iterations``).
      betas: float[B, I, lookahead], sum_v min(p, q) at each judged drafted
        position (the accepted ones and the first rejected one); NaN at
        positions after a rejection, whose prefixes are counterfactual, and
        beyond ``num_iterations``.
      num_iterations: int32[B].
      finish_step: int32[B], the loop step (1-based) in which the row finished;
        every step of a batch costs the same, so this apportions the decode
        time among rows.
      num_steps: int32 scalar, loop steps run (the maximum of finish_step).
      stopped: bool[B], the row stopped at the end-of-sequence token within
        its first max_new_tokens tokens (always False without ``eos_token``).
        Its iteration that committed the token is recorded in full in
        ``accepted`` and ``betas`` (module docstring), so for such a row
        num_generated can be less than 1 + sum(K + 1).
      lookahead: gamma (a Python int).
    """

    tokens: jax.Array
    num_generated: jax.Array
    accepted: jax.Array
    betas: jax.Array
    num_iterations: jax.Array
    finish_step: jax.Array
    num_steps: jax.Array
    stopped: jax.Array
    lookahead: int


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about a compiled loop (hashable: the jit cache key)."""

    draft_forward: Callable | None
    draft_init_cache: Callable | None
    target_forward: Callable
    target_init_cache: Callable
    lookahead: int
    max_new_tokens: int
    accept_fn: Callable
    vocab_size: int = 0  # V, for the prefill's default chunk
    prefill_chunk: int | None = None  # positions per prefill forward; None: from the budget


# The most bytes of float32 logits one prefill forward may produce
# (B x C x V x 4): 256 MiB keeps them well below a large target's cache.
PREFILL_LOGITS_BYTES = 256 * 2**20


def prefill_chunk_size(batch_size: int, vocab_size: int,
                       budget_bytes: int = PREFILL_LOGITS_BYTES) -> int:
    """C, the prompt positions one prefill forward reads by default.

    The largest power of two (at least 1) whose float32 logits, ``batch_size
    x C x vocab_size x 4`` bytes, fit in ``budget_bytes``: for 8 rows of
    Llama 3's 128,256-token vocabulary and the default 256 MiB, C = 64. A
    power of two keeps the chunk's matrix shapes friendly to the hardware.
    Computed from static shapes, so it never causes a recompilation of its own.
    """
    batch_size = _validate.check_static_int("batch_size", batch_size, 1)
    vocab_size = _validate.check_static_int("vocab_size", vocab_size, 1)
    budget_bytes = _validate.check_static_int("budget_bytes", budget_bytes, 1)
    fits = max(1, budget_bytes // (batch_size * vocab_size * 4))
    return 1 << (fits.bit_length() - 1)


def _take(sequence, positions):
    """sequence[b, positions[b, ...]] for each row b."""
    return jax.vmap(lambda row, idx: row[idx])(sequence, positions)


def _chunk_starts(prompt_len: int, chunk: int) -> np.ndarray:
    """First position of each chunk of a prompt read C positions at a time.

    The last chunk ends at the prompt's end, overlapping the one before it
    when C does not divide P: its overlapping positions are written again
    with what they already hold (the same tokens at the same positions, over
    a cache that is correct before them), so every chunk is one shape, read
    by one compiled forward, and the cache never needs room beyond P."""
    count = -(-prompt_len // chunk)
    return np.minimum(np.arange(count) * chunk, prompt_len - chunk).astype(np.int32)


def _read_prompt(forward, params, prompt_tokens, prompt_lengths, cache, chunk: int, *,
                 keep_last: bool):
    """Feed the prompts to a model, C positions per forward.

    Returns (the logits at each row's last prompt position [B, V], or None
    when ``keep_last`` is False; the cache). Only one chunk's logits [B, C, V]
    exist at a time; the row's last position is selected as the chunks pass."""
    batch, prompt_len = prompt_tokens.shape
    zeros = jnp.zeros((batch,), jnp.int32)
    if prompt_len <= chunk:
        logits, cache = forward(params, prompt_tokens, zeros, cache)
        return (_take(logits, prompt_lengths - 1) if keep_last else None), cache
    last_at = prompt_lengths - 1

    def read(carry, start):
        cache, last = carry
        window = jax.lax.dynamic_slice_in_dim(prompt_tokens, start, chunk, axis=1)
        logits, cache = forward(params, window, zeros + start, cache)
        if keep_last:
            offset = last_at - start
            inside = (offset >= 0) & (offset < chunk)
            last = jnp.where(inside[:, None], _take(logits, jnp.clip(offset, 0, chunk - 1)), last)
        return (cache, last), None

    last = None
    if keep_last:
        shape = jax.eval_shape(forward, params, prompt_tokens[:, :chunk], zeros, cache)[0]
        last = jnp.zeros((batch, shape.shape[-1]), shape.dtype)
    (cache, last), _ = jax.lax.scan(read, (cache, last),
                                    jnp.asarray(_chunk_starts(prompt_len, chunk)))
    return last, cache


def _prefill(draft_params, target_params, prompt_tokens, prompt_lengths, row_keys,
             settings, spec: _Spec) -> DecodeState:
    batch, prompt_len = prompt_tokens.shape
    gamma = spec.lookahead
    max_len = prompt_len + spec.max_new_tokens + gamma + 1
    zeros = jnp.zeros((batch,), jnp.int32)
    chunk = spec.prefill_chunk or prefill_chunk_size(batch, spec.vocab_size)
    target_cache = spec.target_init_cache(batch, max_len)
    last, target_cache = _read_prompt(spec.target_forward, target_params, prompt_tokens,
                                      prompt_lengths, target_cache, chunk, keep_last=True)
    # Sampling runs in float32 at least, whatever precision the model computes in.
    dtype = jnp.promote_types(last.dtype, jnp.float32)
    temperature, top_k, top_p, eos_token = settings
    temperature = jnp.asarray(temperature, dtype)
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, dtype)
    eos_token = jnp.asarray(eos_token, jnp.int32)
    num_iterations = spec.max_new_tokens - 1
    per_iteration = 2 * gamma + 1
    uniforms = jax.vmap(lambda k: jax.random.uniform(
        k, (1 + num_iterations * per_iteration,), dtype))(row_keys)
    first = sample(uniforms[:, 0], probabilities(last, temperature, top_k, top_p))
    draft_cache = None
    if spec.draft_forward is not None:
        draft_cache = spec.draft_init_cache(batch, max_len)
        _, draft_cache = _read_prompt(spec.draft_forward, draft_params, prompt_tokens,
                                      prompt_lengths, draft_cache, chunk, keep_last=False)
    sequence = jnp.zeros((batch, max_len), jnp.int32).at[:, :prompt_len].set(prompt_tokens)
    sequence = sequence.at[jnp.arange(batch), prompt_lengths].set(first)
    return DecodeState(
        sequence=sequence, length=prompt_lengths + 1,
        # A buffer of its own, not the caller's lengths: the decode consumes
        # (donates) the state, and the caller may prefill the same inputs again.
        prompt_length=jnp.copy(prompt_lengths),
        draft_cache=draft_cache, target_cache=target_cache,
        uniforms=uniforms[:, 1:].reshape(batch, num_iterations, per_iteration),
        temperature=jnp.copy(temperature), top_k=jnp.copy(top_k), top_p=jnp.copy(top_p),
        eos_token=jnp.copy(eos_token), iteration=zeros,
        accepted=jnp.zeros((batch, num_iterations), jnp.int32),
        betas=jnp.full((batch, num_iterations, gamma), jnp.nan, dtype),
        finish_step=zeros, step=jnp.zeros((), jnp.int32))


def _stopped(state: DecodeState):
    """The row's last committed token is the end-of-sequence token (-1, off, never is).

    Rows never commit past that token, so it can only be the last one."""
    return _take(state.sequence, state.length - 1) == state.eos_token


def _active(state: DecodeState, spec: _Spec):
    return (state.length - state.prompt_length < spec.max_new_tokens) & ~_stopped(state)


def _draft(draft_params, state: DecodeState, draft_uniforms, spec: _Spec):
    """gamma draft tokens and their distributions q, for every row."""
    gamma = spec.lookahead
    max_len = state.sequence.shape[1]
    n = state.length

    def truncated(logits):
        return probabilities(logits, state.temperature, state.top_k, state.top_p)

    def start_at(pos, width):
        # Only finished rows can reach past the buffer; keep their writes inside.
        return jnp.minimum(pos, max_len - width).astype(jnp.int32)

    last_two = _take(state.sequence, jnp.stack([n - 2, n - 1], axis=1))
    logits, cache = spec.draft_forward(draft_params, last_two, start_at(n - 2, 2),
                                       state.draft_cache)
    q = truncated(logits[:, 1])
    token = sample(draft_uniforms[:, 0], q)

    def step(carry, i):
        cache, token = carry
        logits, cache = spec.draft_forward(draft_params, token[:, None],
                                           start_at(n - 1 + i, 1), cache)
        q = truncated(logits[:, 0])
        token = sample(draft_uniforms[:, i], q)
        return (cache, token), (token, q)

    (cache, _), (tokens, qs) = jax.lax.scan(step, (cache, token), jnp.arange(1, gamma))
    draft_tokens = jnp.concatenate([token[:, None], tokens.T], axis=1)  # [B, gamma]
    draft_probs = jnp.concatenate([q[:, None], jnp.swapaxes(qs, 0, 1)], axis=1)
    return draft_tokens, draft_probs, cache


def _iteration(draft_params, target_params, state: DecodeState, spec: _Spec) -> DecodeState:
    gamma = spec.lookahead
    batch, max_len = state.sequence.shape
    n = state.length
    active = _active(state, spec)
    # Finished rows have used all their uniforms; any index in range will do.
    u = _take(state.uniforms, jnp.minimum(state.iteration, state.uniforms.shape[1] - 1))
    last = _take(state.sequence, n - 1)
    if gamma > 0:
        draft_tokens, draft_probs, draft_cache = _draft(draft_params, state, u[:, :gamma], spec)
    else:
        draft_tokens = jnp.zeros((batch, 0), jnp.int32)
        draft_cache = state.draft_cache
    verify = jnp.concatenate([last[:, None], draft_tokens], axis=1)  # [B, gamma + 1]
    verify_start = jnp.minimum(n - 1, max_len - (gamma + 1)).astype(jnp.int32)
    logits, target_cache = spec.target_forward(target_params, verify, verify_start,
                                               state.target_cache)
    target_probs = probabilities(logits, state.temperature, state.top_k, state.top_p)
    if gamma == 0:
        draft_probs = jnp.zeros((batch, 0, logits.shape[-1]), target_probs.dtype)
    verdict = jax.vmap(spec.accept_fn)(u[:, gamma:], draft_tokens, draft_probs, target_probs)
    k = verdict.num_accepted.astype(jnp.int32)

    # Commit x_1..x_K and the emitted token at n; what lands beyond n + K is
    # past the new length and is never read.
    slots = jnp.arange(gamma + 1)
    padded = jnp.concatenate([draft_tokens, jnp.zeros((batch, 1), jnp.int32)], axis=1)
    window = jnp.where(slots < k[:, None], padded, verdict.next_token[:, None].astype(jnp.int32))
    write_at = jnp.minimum(n, max_len - (gamma + 1)).astype(jnp.int32)
    written = jax.vmap(lambda row, w, s: jax.lax.dynamic_update_slice(row, w, (s,)))(
        state.sequence, window, write_at)
    sequence = jnp.where(active[:, None], written, state.sequence)
    # The row's output ends at the first end-of-sequence token it commits;
    # what the window holds after it is beyond the new length, never read.
    eos_at = (window == state.eos_token) & (slots <= k[:, None])
    emitted = jnp.where(jnp.any(eos_at, axis=1), jnp.argmax(eos_at, axis=1) + 1, k + 1)
    length = jnp.where(active, n + emitted, n)

    # Record this iteration in each active row's slot; finished rows point
    # past the end and their writes are dropped (O(B gamma), not O(B I gamma)).
    rows = jnp.arange(batch)
    slot = jnp.where(active, state.iteration, state.accepted.shape[1])
    accepted = state.accepted.at[rows, slot].set(k, mode="drop")
    judged = jnp.arange(gamma) < jnp.minimum(k + 1, gamma)[:, None]
    betas_now = jnp.where(judged, verdict.betas.astype(state.betas.dtype), jnp.nan)
    betas = state.betas.at[rows, slot].set(betas_now, mode="drop")
    step = state.step + 1
    state = state._replace(
        sequence=sequence, length=length, draft_cache=draft_cache, target_cache=target_cache,
        iteration=state.iteration + active.astype(jnp.int32), accepted=accepted, betas=betas,
        step=step)
    done_now = active & ~_active(state, spec)
    return state._replace(finish_step=jnp.where(done_now, step, state.finish_step))


def _decode(draft_params, target_params, state: DecodeState, spec: _Spec):
    max_steps = spec.max_new_tokens - 1  # every iteration emits at least one token

    def cond(s):
        return jnp.any(_active(s, spec)) & (s.step < max_steps)

    if max_steps > 0:
        state = jax.lax.while_loop(
            cond, lambda s: _iteration(draft_params, target_params, s, spec), state)
    tokens = jax.vmap(lambda row, p: jax.lax.dynamic_slice(row, (p,), (spec.max_new_tokens,)))(
        state.sequence, state.prompt_length)
    num_generated = state.length - state.prompt_length
    # A stopped row's output ends at its end-of-sequence token; the rest of
    # its window is filled with that token, so a row reads as its output.
    tokens = jnp.where(jnp.arange(spec.max_new_tokens) < num_generated[:, None], tokens,
                       state.eos_token)
    stopped = _stopped(state) & (num_generated <= spec.max_new_tokens)
    # With max_new_tokens = 1 every row is done after the prefill: step 0.
    # The final state goes back out in the donated buffers (module docstring).
    return (tokens, num_generated, stopped), state


def _generation(out, lookahead: int) -> Generation:
    """The decode program's outputs as a :class:`Generation` (the final state's caches,
    sequence and uniforms are dropped here, freeing them)."""
    (tokens, num_generated, stopped), state = out
    return Generation(tokens=tokens, num_generated=num_generated, accepted=state.accepted,
                      betas=state.betas, num_iterations=state.iteration,
                      finish_step=state.finish_step, num_steps=state.step, stopped=stopped,
                      lookahead=lookahead)


_prefill_jit = jax.jit(_prefill, static_argnames=("spec",))
# The state (caches included) is donated: updated in place, never copied.
_decode_jit = jax.jit(_decode, static_argnames=("spec",), donate_argnames=("state",))


# --------------------------------------------------------------------------
# Public API.


def pad_prompts(prompts: Sequence[Sequence[int]], length: int | None = None,
                pad_token: int = 0) -> tuple[jax.Array, jax.Array]:
    """Left-aligned, right-padded prompts: (tokens int32[B, P], lengths int32[B]).

    Args:
      prompts: B token sequences, each of length >= 1.
      length: P, at least the longest prompt (default: the longest prompt).
        A fixed P keeps every batch at one shape, so the loop compiles once.
      pad_token: the filler (never attended to; any valid token id).
    """
    prompts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    if not prompts:
        raise ValueError("prompts is empty")
    lengths = np.array([p.size for p in prompts], dtype=np.int32)
    if np.any(lengths < 1):
        raise ValueError(f"every prompt needs at least one token; prompt {int(np.argmin(lengths))} "
                         "is empty")
    longest = int(lengths.max())
    length = longest if length is None else int(length)
    if length < longest:
        raise ValueError(f"length must be >= the longest prompt ({longest}), got {length}")
    tokens = np.full((len(prompts), length), pad_token, dtype=np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :p.size] = p
    return jnp.asarray(tokens), jnp.asarray(lengths)


def row_keys(key: jax.Array, row_ids: jax.Array) -> jax.Array:
    """One key per row, ``fold_in(key, row_id)``: a prompt's randomness follows its id."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(row_ids))


class SamplingSettings(NamedTuple):
    """The traced sampling settings of a run, checked (see :func:`sampling_settings`)."""

    temperature: jax.Array  # float scalar >= 0
    top_k: jax.Array  # int32 scalar >= 0
    top_p: jax.Array  # float scalar in (0, 1]
    eos_token: jax.Array  # int32 scalar, -1 for none


def sampling_settings(temperature=1.0, top_k=0, top_p=1.0, eos_token: int | None = None, *,
                      vocab_size: int) -> SamplingSettings:
    """Check a run's sampling settings and return them as the arrays the loop traces.

    Every setting is a traced scalar of one dtype whatever the caller passed
    (a Python float and an array would otherwise be two signatures and two
    compilations), so one compiled loop serves every value.

    Args:
      temperature: T >= 0, finite; 0 is greedy decoding.
      top_k: an integer >= 0; 0 keeps every token.
      top_p: a number in (0, 1]; 1 keeps every token.
      eos_token: None, or the end-of-sequence token id in [0, vocab_size).
      vocab_size: V, for the range of ``eos_token``.
    """
    _validate.check_nonnegative_scalar("temperature", temperature)
    k = np.asarray(top_k)  # a bool's dtype is not an integer one: refused
    if k.shape != () or not np.issubdtype(k.dtype, np.integer) or k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 keeps every token), got {top_k!r}")
    try:
        p = None if isinstance(top_p, bool) else _validate.as_float64(top_p)
    except (TypeError, ValueError):
        p = None
    if p is None or p.shape != () or not 0 < p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1] (1 keeps every token), got "
                         f"{top_p!r}")
    if eos_token is not None and (not _validate.is_int(eos_token)
                                  or not 0 <= eos_token < vocab_size):
        raise ValueError(f"eos_token must be None or a token id in [0, {vocab_size}), got "
                         f"{eos_token!r}")
    real = jnp.result_type(float)
    # top_k beyond the vocabulary keeps every token; int32 holds any real one.
    top_k = min(int(k), np.iinfo(np.int32).max)
    eos_token = -1 if eos_token is None else int(eos_token)
    return SamplingSettings(temperature=jnp.asarray(temperature, real),
                            top_k=jnp.asarray(top_k, jnp.int32), top_p=jnp.asarray(p, real),
                            eos_token=jnp.asarray(eos_token, jnp.int32))


def _check_inputs(draft, target, prompt_tokens, prompt_lengths, lookahead, max_new_tokens,
                  temperature, top_k, top_p, eos_token):
    lookahead = _validate.check_static_int("lookahead", lookahead, 0)
    max_new_tokens = _validate.check_static_int("max_new_tokens", max_new_tokens, 1)
    if not isinstance(target, Decoder):
        raise ValueError(f"target must be a Decoder, got {type(target).__name__}")
    if lookahead > 0:
        if not isinstance(draft, Decoder):
            raise ValueError(f"draft must be a Decoder when lookahead > 0, got "
                             f"{type(draft).__name__}")
        if draft.vocab_size != target.vocab_size:
            raise ValueError(f"draft and target vocabularies differ: draft.vocab_size = "
                             f"{draft.vocab_size}, target.vocab_size = {target.vocab_size}")
    tokens = jnp.asarray(prompt_tokens)
    lengths = jnp.asarray(prompt_lengths)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"prompt_tokens must be an integer array [batch, prompt_len], got "
                         f"{tokens.dtype}{list(tokens.shape)}")
    if lengths.shape != tokens.shape[:1] or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"prompt_lengths must be an integer array [{tokens.shape[0]}], got "
                         f"{lengths.dtype}{list(lengths.shape)}")
    tok_np, len_np = np.asarray(tokens), np.asarray(lengths)
    bad = (len_np < 1) | (len_np > tokens.shape[1])
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"prompt_lengths must lie in [1, {tokens.shape[1]}], got {len_np[i]} "
                         f"at row {i}")
    bad = (tok_np < 0) | (tok_np >= target.vocab_size)
    if np.any(bad):
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"prompt_tokens must lie in [0, {target.vocab_size}), got {tok_np[i, j]} "
                         f"at row {i}, position {j}")
    settings = sampling_settings(temperature, top_k, top_p, eos_token,
                                 vocab_size=target.vocab_size)
    return tokens.astype(jnp.int32), lengths.astype(jnp.int32), lookahead, max_new_tokens, settings


def _spec(draft, target, lookahead, max_new_tokens, accept_fn=None,
          prefill_chunk=None) -> _Spec:
    """The static part of a run. The prefill does not use the acceptance rule
    and the decode does not use the prefill's chunk; leaving each None where it
    is not used lets runs that differ only in it share the other program."""
    use_draft = lookahead > 0
    return _Spec(draft_forward=draft.forward if use_draft else None,
                 draft_init_cache=draft.init_cache if use_draft else None,
                 target_forward=target.forward, target_init_cache=target.init_cache,
                 lookahead=lookahead, max_new_tokens=max_new_tokens, accept_fn=accept_fn,
                 vocab_size=target.vocab_size, prefill_chunk=prefill_chunk)


def _check_prefill_chunk(prefill_chunk):
    if prefill_chunk is None:
        return None
    return _validate.check_static_int("prefill_chunk", prefill_chunk, 1,
                                      fixes="the prefill's chunk shape")


def prefill(draft: Decoder | None, target: Decoder, prompt_tokens: jax.Array,
            prompt_lengths: jax.Array, row_keys: jax.Array, *, lookahead: int,
            max_new_tokens: int, temperature=1.0, top_k: int = 0, top_p: float = 1.0,
            eos_token: int | None = None, prefill_chunk: int | None = None) -> DecodeState:
    """Read the prompts with both models and sample each row's first token from the target.

    Args:
      draft: the draft model (ignored, and may be None, when lookahead is 0).
      target: the target model.
      prompt_tokens: int[B, P], left-aligned (see :func:`pad_prompts`).
      prompt_lengths: int[B], in [1, P].
      row_keys: B PRNG keys (see :func:`row_keys`).
      lookahead: gamma >= 0, the drafted tokens per iteration.
      max_new_tokens: tokens to generate per row, >= 1.
      temperature: T >= 0; 0 is greedy decoding (which ignores top_k and top_p).
      top_k: keep the k most probable tokens of the draft's and the target's
        distributions (ties kept); 0 is off.
      top_p: then keep the most probable tokens until their mass reaches
        top_p, in (0, 1]; 1 is off.
      eos_token: a row stops when it commits this token (None: rows run to
        max_new_tokens).
      prefill_chunk: C >= 1, the prompt positions each forward reads (None:
        :func:`prefill_chunk_size` of the batch and the vocabulary). The
        logits held at once are B x C x V; the result is the same for every C
        up to float rounding.

    Returns:
      The :class:`DecodeState` to pass, once, to :func:`decode` with the same
      draft, target, lookahead and max_new_tokens. It carries the sampling
      settings, so :func:`decode` takes none.
    """
    tokens, lengths, lookahead, max_new_tokens, settings = _check_inputs(
        draft, target, prompt_tokens, prompt_lengths, lookahead, max_new_tokens, temperature,
        top_k, top_p, eos_token)
    spec = _spec(draft, target, lookahead, max_new_tokens,
                 prefill_chunk=_check_prefill_chunk(prefill_chunk))
    return _prefill_jit(draft.params if lookahead > 0 else None, target.params, tokens, lengths,
                        row_keys, settings, spec=spec)


def decode(draft: Decoder | None, target: Decoder, state: DecodeState, *, lookahead: int,
           max_new_tokens: int, accept_fn: AcceptFn = speculative_accept) -> Generation:
    """Run draft-verify-accept iterations on the device until every row is done.

    The sampling settings (temperature, top_k, top_p, eos_token) are those
    the state was prefilled with. The state is donated: its buffers, caches
    included, become the loop's and must not be used after this call.

    ``accept_fn`` is the acceptance rule (tests substitute wrong ones); it
    must be hashable, as it is part of what the loop is compiled for.
    """
    lookahead = _validate.check_static_int("lookahead", lookahead, 0)
    max_new_tokens = _validate.check_static_int("max_new_tokens", max_new_tokens, 1)
    if state.betas.shape[1:] != (max_new_tokens - 1, lookahead):
        raise ValueError(f"state was prefilled for other settings: its buffers fit "
                         f"(max_new_tokens - 1, lookahead) = {state.betas.shape[1:]}, got "
                         f"({max_new_tokens - 1}, {lookahead})")
    if _validate.is_concrete(state) and any(
            leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state)
            if isinstance(leaf, jax.Array)):
        raise ValueError("state was already decoded (decode consumes its buffers); prefill "
                         "again to decode the same prompts")
    spec = _spec(draft, target, lookahead, max_new_tokens, accept_fn)
    out = _decode_jit(draft.params if lookahead > 0 else None, target.params, state, spec=spec)
    return _generation(out, lookahead)


def staged_generate(draft: Decoder | None, target: Decoder, prompt_tokens: jax.Array,
                    prompt_lengths: jax.Array, row_keys: jax.Array, *, lookahead: int,
                    max_new_tokens: int, temperature=1.0, top_k: int = 0, top_p: float = 1.0,
                    eos_token: int | None = None, accept_fn: AcceptFn = speculative_accept,
                    prefill_chunk: int | None = None):
    """:func:`prefill` and :func:`decode` as two stages that run only compiled code.

    Inputs are checked and put on the device here, before either stage runs,
    so a caller that times the stages (:func:`sdsl_jax.decoding.metrics.
    timed_generate`) sees the device's work and dispatch, not host-side
    checks and copies.

    Returns:
      (prefill_stage, decode_stage): ``prefill_stage()`` returns a fresh
      :class:`DecodeState` (it may be called again: its inputs are kept);
      ``decode_stage(state)`` consumes a state (donated, as in
      :func:`decode`) and returns the :class:`Generation`. Neither waits for
      the device.
    """
    tokens, lengths, lookahead, max_new_tokens, settings = _check_inputs(
        draft, target, prompt_tokens, prompt_lengths, lookahead, max_new_tokens, temperature,
        top_k, top_p, eos_token)
    # The prefill leaves the acceptance rule out of its static settings, so
    # runs that differ only in the rule share its compilation.
    prefill_spec = _spec(draft, target, lookahead, max_new_tokens,
                         prefill_chunk=_check_prefill_chunk(prefill_chunk))
    decode_spec = _spec(draft, target, lookahead, max_new_tokens, accept_fn)
    draft_params = draft.params if lookahead > 0 else None
    tokens, lengths, row_keys, settings = jax.block_until_ready(
        jax.device_put((tokens, lengths, row_keys, settings)))

    def prefill_stage() -> DecodeState:
        return _prefill_jit(draft_params, target.params, tokens, lengths, row_keys, settings,
                            spec=prefill_spec)

    def decode_stage(state: DecodeState) -> Generation:
        out = _decode_jit(draft_params, target.params, state, spec=decode_spec)
        return _generation(out, lookahead)

    return prefill_stage, decode_stage


def speculative_generate(draft: Decoder | None, target: Decoder, prompt_tokens: jax.Array,
                         prompt_lengths: jax.Array, key: jax.Array, *, lookahead: int,
                         max_new_tokens: int, temperature=1.0, top_k: int = 0,
                         top_p: float = 1.0, eos_token: int | None = None,
                         row_ids: jax.Array | None = None,
                         accept_fn: AcceptFn = speculative_accept,
                         prefill_chunk: int | None = None) -> Generation:
    """Speculative decoding of a batch of prompts: :func:`prefill` then :func:`decode`.

    Args:
      key: a PRNG key; row b uses ``fold_in(key, row_ids[b])``.
      row_ids: int[B], default 0..B-1 (pass prompt ids to make each prompt's
        output independent of how prompts are batched).
      Others: as in :func:`prefill`.

    Returns:
      A :class:`Generation`; lookahead 0 gives target-only sampling.
    """
    batch = jnp.shape(prompt_tokens)[0] if jnp.ndim(prompt_tokens) else 0
    ids = jnp.arange(batch) if row_ids is None else jnp.asarray(row_ids)
    state = prefill(draft, target, prompt_tokens, prompt_lengths, row_keys(key, ids),
                    lookahead=lookahead, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_k=top_k, top_p=top_p, eos_token=eos_token, prefill_chunk=prefill_chunk)
    return decode(draft, target, state, lookahead=lookahead, max_new_tokens=max_new_tokens,
                  accept_fn=accept_fn)


@chex.dataclass(frozen=True)
class ProgramMemory:
    """What one compiled program needs on a device, in bytes (XLA's memory analysis).

    Attributes:
      argument_bytes: its inputs (weights, prompts, the state).
      output_bytes: its outputs.
      alias_bytes: the outputs written into donated inputs' buffers (counted
        in both of the above, held once).
      temp_bytes: temporaries while it runs.
      code_bytes: the generated code.
      peak_bytes: XLA's peak estimate where it gives one, else arguments +
        outputs - aliased + temporaries: what the program holds at once.
    """

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    peak_bytes: int


def _program_memory(compiled) -> ProgramMemory | None:
    stats = compiled.memory_analysis()
    if stats is None:  # a backend without the analysis
        return None
    argument, output = int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes)
    alias, temp = int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes)
    peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    return ProgramMemory(argument_bytes=argument, output_bytes=output, alias_bytes=alias,
                         temp_bytes=temp, code_bytes=int(stats.generated_code_size_in_bytes),
                         peak_bytes=peak if peak > 0 else argument + output - alias + temp)


def _state_as_passed(state_info, prefill_args):
    """The prefill's outputs as the decode will be called with them.

    A jit's outputs are committed to their devices only when one of its inputs
    was, or the program spans several devices; an uncommitted argument is
    lowered with no sharding, a committed one with its sharding. Lowered for
    the state exactly as a run passes it, the decode compiled here is the one
    the run then calls (JAX keeps it for the call), not a second compilation.
    """
    leaves = jax.tree_util.tree_leaves(state_info)
    committed = (any(getattr(x, "committed", False)
                     for x in jax.tree_util.tree_leaves(prefill_args))
                 or any(len(leaf.sharding.device_set) > 1 for leaf in leaves))
    if committed:
        return state_info
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=leaf.weak_type),
        state_info)


def compiled_memory(draft: Decoder | None, target: Decoder, *, batch_size: int, prompt_len: int,
                    lookahead: int, max_new_tokens: int,
                    accept_fn: AcceptFn = speculative_accept,
                    prefill_chunk: int | None = None) -> dict[str, ProgramMemory | None]:
    """The memory the prefill and decode programs of a run need, for the given shapes.

    Compiles both programs for ``batch_size`` prompts padded to
    ``prompt_len`` (nothing runs, no state is allocated) and reads XLA's
    analysis of each. JAX keeps these executables for the calls of a run of
    the same shapes and weights, which then compiles nothing more: the
    estimate costs no second compilation
    (tests/decoding/test_compiled_programs.py). The figures are those a
    device's memory statistics would show, also where the device keeps none
    (CPU). The decode's arguments hold the
    donated state, so its ``alias_bytes`` covers the caches, updated in place.
    Per device, with the weights' shardings as given (their arrays are only
    looked at, not used). ``prefill_chunk`` is the prefill's, as in
    :func:`prefill` (None: the default a run uses).

    Returns:
      ``{"prefill": ProgramMemory, "decode": ProgramMemory}`` (None for a
      program whose backend gives no analysis).
    """
    batch_size = _validate.check_static_int("batch_size", batch_size, 1)
    prompt_len = _validate.check_static_int("prompt_len", prompt_len, 1)
    tokens = jnp.zeros((batch_size, prompt_len), jnp.int32)
    lengths = jnp.ones((batch_size,), jnp.int32)
    tokens, lengths, lookahead, max_new_tokens, settings = _check_inputs(
        draft, target, tokens, lengths, lookahead, max_new_tokens, 1.0, 0, 1.0, None)
    keys = row_keys(jax.random.PRNGKey(0), jnp.arange(batch_size))
    draft_params = draft.params if lookahead > 0 else None
    prefill = _prefill_jit.lower(draft_params, target.params, tokens, lengths, keys, settings,
                                 spec=_spec(draft, target, lookahead, max_new_tokens,
                                            prefill_chunk=_check_prefill_chunk(prefill_chunk))
                                 ).compile()
    # The decode is compiled for the state the prefill returns, shardings included.
    state = _state_as_passed(prefill.out_info, (draft_params, target.params, tokens, lengths,
                                                keys, settings))
    decode = _decode_jit.lower(draft_params, target.params, state,
                               spec=_spec(draft, target, lookahead, max_new_tokens,
                                          accept_fn)).compile()
    return {"prefill": _program_memory(prefill), "decode": _program_memory(decode)}


def iteration_lookahead(generation: Generation) -> jax.Array:
    """int32[B, I]: gamma for the iterations that ran, 0 for padding.

    With ``generation.accepted`` this is what
    :func:`sdsl_jax.estimation.acceptance.estimate_acceptance` takes (lookahead
    0 marks an iteration that contributes nothing).
    """
    ran = jnp.arange(generation.accepted.shape[1]) < generation.num_iterations[:, None]
    return jnp.where(ran, generation.lookahead, 0).astype(jnp.int32)
