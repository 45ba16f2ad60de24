"""Measuring a (draft, target) pair: one JSON-ready record per finished prompt.

:func:`measure_pair` decodes prompts in batches with speculative sampling
(and, by default, with the target alone as the baseline), and yields each
prompt's record as soon as its batch finishes, so a caller (``sdsl measure``)
can append it to a JSON Lines file and a run killed midway keeps every
finished prompt. Randomness follows the prompt id, so rerunning only the
missing prompts gives what one uninterrupted run would have.

A record holds what the acceptance estimate needs (the accepted count K of
every iteration and the lookahead: :func:`~sdsl_jax.decoding.metrics.
acceptance_inputs` turns records into the arrays of
:func:`sdsl_jax.estimation.acceptance.estimate_acceptance`), the exact
acceptance probabilities (``beta_sum`` over ``beta_count`` judged positions),
and the latencies of :mod:`sdsl_jax.decoding.metrics`.

:func:`prompt_log_likelihood` scores the prompts themselves (teacher-forced),
for a model whose perplexity is not known otherwise (a checkpoint without an
``sdsl train`` card): the acceptance law's x and y are perplexities on the
prompts.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common import validation as _validate
from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.decoding import loop
from sdsl_jax.decoding.metrics import Timing, output_tokens, row_latencies, timed_generate


def _number(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def run_records(generation: loop.Generation, timing: Timing, *, prompt_ids: Sequence[int],
                prompt_lengths: Sequence[int], max_new_tokens: int, temperature: float,
                top_k: int = 0, top_p: float = 1.0, eos_token: int | None = None,
                draft: Decoder | None = None, target: Decoder | None = None,
                baseline: tuple[loop.Generation, Timing] | None = None,
                rows: int | None = None, batch_index: int | None = None) -> list[dict[str, Any]]:
    """Per-prompt records of a finished batch (the first ``rows`` rows; default all).

    Each record is a dict of plain JSON values:

      prompt_id, prompt_tokens (prompt length), lookahead, temperature,
      top_k, top_p, eos_token (the sampling settings the batch ran with; None:
      no stop), max_new_tokens, generated (tokens produced: >= max_new_tokens,
      or up to and including the end-of-sequence token), output_tokens (the
      tokens of the prompt's output, min(generated, max_new_tokens)),
      stopped_at_eos (its output ends with the end-of-sequence token),
      iterations, accepted (list: K per iteration; the iteration that
      committed the end-of-sequence token counts every test it ran, see
      :mod:`sdsl_jax.decoding.loop`), trials (judged drafted
      positions, sum min(K + 1, lookahead)), beta_sum and beta_count (exact
      acceptance probabilities of the judged positions), ttft_s, tpot_s,
      ttot_s (seconds; tpot_s is None for a one-token output), batch_size,
      batch_index (which timed batch of the run this is, when given: its rows
      share one timing, so latency intervals take the batch as the unit, see
      :func:`sdsl_jax.decoding.metrics.mean_interval`), device; draft_model,
      draft_params, target_model, target_params when the decoders are given;
      with a baseline run of the same batch, baseline_ttft_s,
      baseline_tpot_s, baseline_ttot_s, baseline_output_tokens and speedup
      (baseline TPOT over speculative TPOT: without a stop, the ratio of
      decode times; None where either TPOT is undefined).
    """
    batch = int(generation.tokens.shape[0])
    rows = batch if rows is None else int(rows)
    if len(prompt_ids) < rows or len(prompt_lengths) < rows:
        raise ValueError(f"need {rows} prompt_ids and prompt_lengths, got {len(prompt_ids)} and "
                         f"{len(prompt_lengths)}")
    accepted = np.asarray(generation.accepted)
    iterations = np.asarray(generation.num_iterations)
    betas = np.asarray(generation.betas, np.float64)
    generated = np.asarray(generation.num_generated)
    output = output_tokens(generation, max_new_tokens)
    stopped = np.asarray(generation.stopped)
    lat = row_latencies(generation, timing, max_new_tokens)
    base_lat = row_latencies(baseline[0], baseline[1], max_new_tokens) if baseline else None
    base_output = output_tokens(baseline[0], max_new_tokens) if baseline else None
    gamma = generation.lookahead
    device = jax.devices()[0].device_kind
    records = []
    for b in range(rows):
        k = [int(x) for x in accepted[b, :iterations[b]]]
        judged = betas[b, :iterations[b]]
        judged = judged[~np.isnan(judged)]
        rec: dict[str, Any] = {
            "prompt_id": int(prompt_ids[b]), "prompt_tokens": int(prompt_lengths[b]),
            "lookahead": gamma, "temperature": float(temperature), "top_k": int(top_k),
            "top_p": float(top_p), "eos_token": None if eos_token is None else int(eos_token),
            "max_new_tokens": int(max_new_tokens), "generated": int(generated[b]),
            "output_tokens": int(output[b]), "stopped_at_eos": bool(stopped[b]),
            "iterations": int(iterations[b]), "accepted": k,
            "trials": int(sum(min(x + 1, gamma) for x in k)),
            "beta_sum": float(judged.sum()), "beta_count": int(judged.size),
            "ttft_s": float(lat["ttft_s"][b]), "tpot_s": _number(lat["tpot_s"][b]),
            "ttot_s": float(lat["ttot_s"][b]), "batch_size": batch, "device": device,
        }
        if batch_index is not None:
            rec["batch_index"] = int(batch_index)
        for role, dec in (("draft", draft), ("target", target)):
            if dec is not None:
                rec[f"{role}_model"] = dec.name
                rec[f"{role}_params"] = int(dec.num_params)
        if base_lat is not None:
            rec["baseline_ttft_s"] = float(base_lat["ttft_s"][b])
            rec["baseline_tpot_s"] = _number(base_lat["tpot_s"][b])
            rec["baseline_ttot_s"] = float(base_lat["ttot_s"][b])
            rec["baseline_output_tokens"] = int(base_output[b])
            # Time per token: the two runs of a prompt may stop at different lengths.
            spec_tpot, base_tpot = lat["tpot_s"][b], base_lat["tpot_s"][b]
            rec["speedup"] = (float(base_tpot / spec_tpot) if spec_tpot > 0 and base_tpot > 0
                              else None)
        records.append(rec)
    return records


def measure_pair(draft: Decoder, target: Decoder, prompts: Sequence[Sequence[int]],
                 lookahead: int, max_new_tokens: int, temperature: float, key: jax.Array, *,
                 top_k: int = 0, top_p: float = 1.0, eos_token: int | None = None,
                 prompt_ids: Sequence[int] | None = None, batch_size: int = 1,
                 prompt_len: int | None = None, baseline: bool = True,
                 warmup: bool = True, first_batch: int = 0) -> Iterator[dict[str, Any]]:
    """Decode prompts with speculative sampling and yield one record per prompt.

    Prompts are padded to one length and batched in order; a short last batch
    is filled with copies of its last prompt (dropped from the output), so the
    loop compiles once. Records come out batch by batch (see
    :func:`run_records` for their fields); each names its batch in
    ``batch_index``, counted from ``first_batch``.

    Args:
      draft, target: the pair; vocabularies must match.
      prompts: token sequences, each of length >= 1.
      lookahead: gamma >= 1.
      max_new_tokens: tokens to generate per prompt, >= 2 (TPOT needs a
        token after the first).
      temperature: T >= 0 (0 is greedy).
      key: PRNG key; prompt i uses ``fold_in(key, prompt_ids[i])``.
      top_k, top_p, eos_token: the deployment's sampling settings (see
        :func:`~sdsl_jax.decoding.loop.prefill`), for the speculative run and
        the baseline alike: top_k >= 0 (0: off), top_p in (0, 1] (1: off),
        eos_token None or a token id (a prompt stops when it commits it).
      prompt_ids: ids for the records and the randomness (default 0..n-1);
        pass the original ids when resuming a run with the missing prompts.
      batch_size: prompts per batch (1 gives exact per-prompt latencies).
      prompt_len: pad length (default: the longest prompt).
      baseline: also decode each batch with the target alone, for the
        speedup (the same keys; timed separately).
      warmup: run the first batch once, untimed, before measuring (this is
        where compilation happens).
      first_batch: the ``batch_index`` of the first batch. Rows of one batch
        share its timing and their latency intervals treat the batch as the
        unit, so when extending a run (the missing prompts), pass one more
        than the run's highest index, or two calls' batches would count as one.
    """
    _validate.check_int("lookahead", lookahead, 1)
    _validate.check_int("max_new_tokens", max_new_tokens, 2)
    _validate.check_int("batch_size", batch_size, 1)
    _validate.check_int("first_batch", first_batch, 0)
    # Checked before the first batch, so a bad setting fails before any model runs.
    loop.sampling_settings(temperature, top_k, top_p, eos_token, vocab_size=target.vocab_size)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, eos_token=eos_token)
    prompts = list(prompts)
    if not prompts:
        return
    ids = list(range(len(prompts))) if prompt_ids is None else [int(i) for i in prompt_ids]
    if len(ids) != len(prompts):
        raise ValueError(f"prompt_ids has {len(ids)} entries for {len(prompts)} prompts")
    if len(set(ids)) != len(ids):
        raise ValueError("prompt_ids must be distinct (they key each prompt's randomness)")
    tokens, lengths = loop.pad_prompts(prompts, prompt_len)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    ids_arr = np.asarray(ids, np.int64)

    def batch_at(start):
        idx = np.minimum(np.arange(start, start + batch_size), len(prompts) - 1)
        return (jnp.asarray(tokens[idx]), jnp.asarray(lengths[idx]),
                loop.row_keys(key, jnp.asarray(ids_arr[idx])), idx)

    def run(tok, lens, keys):
        # Each run prefills its own state and the decode consumes only that
        # (donated): tok, lens and keys serve both runs, and the warmup's.
        spec = timed_generate(draft, target, tok, lens, keys, lookahead=lookahead,
                              max_new_tokens=max_new_tokens, **sampling)
        base = (timed_generate(None, target, tok, lens, keys, lookahead=0,
                               max_new_tokens=max_new_tokens, **sampling)
                if baseline else None)
        return spec, base

    if warmup:
        run(*batch_at(0)[:3])
    for number, start in enumerate(range(0, len(prompts), batch_size)):
        tok, lens, keys, idx = batch_at(start)
        (generation, timing), base = run(tok, lens, keys)
        rows = min(batch_size, len(prompts) - start)
        yield from run_records(generation, timing, prompt_ids=ids_arr[idx].tolist(),
                               prompt_lengths=lengths[idx].tolist(),
                               max_new_tokens=max_new_tokens, **sampling,
                               draft=draft, target=target, baseline=base, rows=rows,
                               batch_index=first_batch + number)


# --------------------------------------------------------------------------
# Perplexity on the prompts (theory, section 4: x and y are measured on the
# prompts the acceptance is measured on).


def _prompt_nll(forward, init_cache, chunk, params, tokens, lengths):
    """Summed next-token NLL per row, reading the prompts C = ``chunk`` positions
    per forward, so only one chunk's logits [B, C, V] exist at a time."""
    batch, width = tokens.shape
    chunk = min(chunk, width)
    # Position t predicts token t + 1: the next token of every position, and
    # only tokens inside the prompt are scored (the last column predicts none).
    following = jnp.concatenate([tokens[:, 1:], jnp.zeros((batch, 1), tokens.dtype)], axis=1)
    count = -(-width // chunk)
    # The last chunk ends at the prompt's end and may overlap the one before;
    # it scores only the positions from i * C on, so none is counted twice.
    firsts = np.arange(count) * chunk
    starts = np.minimum(firsts, width - chunk)

    def read(carry, start_first):
        cache, nll = carry
        start, first = start_first
        window = jax.lax.dynamic_slice_in_dim(tokens, start, chunk, axis=1)
        logits, cache = forward(params, window, jnp.zeros((batch,), jnp.int32) + start, cache)
        logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
        nexts = jax.lax.dynamic_slice_in_dim(following, start, chunk, axis=1)
        picked = jnp.take_along_axis(logp, nexts[..., None], axis=-1)[..., 0]
        position = start + jnp.arange(chunk)
        scored = (position[None, :] >= first) & (position[None, :] + 1 < lengths[:, None])
        return (cache, nll - jnp.sum(jnp.where(scored, picked, 0.0), axis=1)), None

    cache = init_cache(batch, width)
    logits = jax.eval_shape(forward, params, tokens[:, :chunk], jnp.zeros((batch,), jnp.int32),
                            cache)[0]
    nll = jnp.zeros((batch,), jnp.promote_types(logits.dtype, jnp.float32))
    (_, nll), _ = jax.lax.scan(read, (cache, nll),
                               (jnp.asarray(starts, jnp.int32), jnp.asarray(firsts, jnp.int32)))
    return nll, jnp.sum(jnp.arange(1, width)[None, :] < lengths[:, None], axis=1)


_prompt_nll_jit = jax.jit(_prompt_nll, static_argnums=(0, 1, 2))


def prompt_log_likelihood(decoder: Decoder, prompt_tokens, prompt_lengths, *,
                          prefill_chunk: int | None = None):
    """Teacher-forced negative log-likelihood of each prompt under ``decoder``.

    Args:
      prompt_tokens: int[B, P], left-aligned (see :func:`loop.pad_prompts`).
      prompt_lengths: int[B], in [1, P].
      prefill_chunk: C >= 1, the prompt positions each forward reads (None:
        :func:`loop.prefill_chunk_size` of the batch and the vocabulary), so
        the logits held at once are B x C x V, not B x P x V. The result is
        the same for every C up to float rounding.

    Returns:
      (nll, scored): float64[B] nats summed over tokens 1 .. length - 1 of
      each prompt (each predicted from the ones before it), and int64[B] how
      many tokens that is. exp(sum nll / sum scored) is the perplexity on the
      prompts.
    """
    tokens = jnp.asarray(prompt_tokens, jnp.int32)
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(f"prompt_tokens must be [B, P] and prompt_lengths [B], got shapes "
                         f"{tokens.shape} and {lengths.shape}")
    if prefill_chunk is None:
        chunk = loop.prefill_chunk_size(max(tokens.shape[0], 1), decoder.vocab_size)
    else:
        chunk = _validate.check_static_int("prefill_chunk", prefill_chunk, 1,
                                           fixes="the prefill's chunk shape")
    nll, scored = _prompt_nll_jit(decoder.forward, decoder.init_cache, chunk, decoder.params,
                                  tokens, lengths)
    return np.asarray(nll, np.float64), np.asarray(scored, np.int64)
