"""The draft and target of ``sdsl measure``: a model directory of ``sdsl train`` or Hugging Face.

:func:`load_model` tells the two kinds apart, loads the decoder and what a
measurement records of it (name, training tokens, the card's held-out
perplexity), and :func:`check_pair` refuses a pair that cannot be measured
together (different vocabularies, prompts longer than a cache).
:func:`load_pair` loads both at --dtype and shards them over --devices;
:func:`check_pair` also pads two checkpoints of one tokenizer to one
vocabulary size;
:func:`check_sampling` checks --top-k and --stop-at-eos against them. Every
mistake is one usage line naming the flag.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

from sdsl_jax.cli.options import UsageError


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded draft or target and what a measurement row needs of it."""

    decoder: Any
    path: str
    kind: str  # "sdsl" (trained by sdsl train) or "hf"
    name: str
    tokens: float | None  # training tokens D
    perplexity: float | None  # held-out per-byte perplexity from the card (sdsl only)
    family: str | None
    corpus_fingerprint: str | None
    encode: Callable[[str], list]  # text -> token ids
    eos_token: int | None = None  # the end-of-sequence id (a Hugging Face config's), if any

    def run_model(self):
        """The model as :mod:`sdsl_jax.decoding.run` records it."""
        from sdsl_jax.decoding.run import RunModel
        return RunModel(decoder=self.decoder, name=self.name, tokens=self.tokens,
                        perplexity=self.perplexity, family=self.family)


def _kind(path: str, flag: str) -> str:
    """"sdsl" or "hf": which kind of model directory ``path`` is."""
    if not os.path.exists(path):
        raise UsageError(f"sdsl measure: argument {flag}: {path} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"sdsl measure: argument {flag}: {path} is not a directory")
    from sdsl_jax.models import store as ckpt
    if os.path.isfile(os.path.join(path, ckpt.CARD_FILE)):
        return "sdsl"
    config_path = os.path.join(path, ckpt.CONFIG_FILE)
    if os.path.isfile(config_path):
        from sdsl_jax.common.tables import InputFileError, read_json
        try:
            config = read_json(config_path)
        except InputFileError as err:
            raise UsageError(f"sdsl measure: argument {flag}: {err}") from None
        if isinstance(config, dict) and "model_type" in config:
            return "hf"
        if isinstance(config, dict) and "model" in config and "settings" in config:
            return "sdsl"  # load_card explains that training has not finished
    raise UsageError(f"sdsl measure: argument {flag}: {path} is not a model directory (expected "
                     "model.json from `sdsl train`, or a Hugging Face config.json with model_type)")


def load_model(path: str, flag: str, tokens_flag: str, tokens_text: str | None,
               dtype: str = "float32", mesh=None) -> Model:
    """The model in directory ``path`` (given as ``flag``), its training tokens from
    ``tokens_text`` (``tokens_flag``) or its card, computing in ``dtype``, and sharded
    over ``mesh`` when one is given.

    A Hugging Face checkpoint is read straight onto the mesh, one device's block
    at a time, so a target larger than one device loads; our own models are
    small and are sharded after loading."""
    kind = _kind(path, flag)
    from sdsl_jax.common.quantities import parse_count
    tokens = None
    if tokens_text is not None:
        try:
            tokens = parse_count(tokens_text)
        except ValueError as err:
            raise UsageError(f"sdsl measure: argument {tokens_flag}: {err}") from None
        if tokens < 1:
            raise UsageError(f"sdsl measure: argument {tokens_flag}: must be at least one "
                             f"token, got {tokens_text}")
    if kind == "sdsl":
        from sdsl_jax.models import tokenizer
        from sdsl_jax.models import CheckpointError, load_card, load_decoder
        # orbax warns that a read-only checkpoint manager will not save: true, and noise here.
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            card = load_card(path)
            decoder = load_decoder(path, dtype=dtype)
            if mesh is not None:
                from sdsl_jax.decoding.sharding import shard_decoder
                decoder = shard_decoder(decoder, mesh)
        except (CheckpointError, ValueError) as err:
            raise UsageError(f"sdsl measure: argument {flag}: {err}") from None
        finally:
            absl.setLevel(level)
        return Model(decoder=decoder, path=path, kind=kind, name=str(card.get("name", decoder.name)),
                     tokens=float(card["tokens"]) if tokens is None else tokens,
                     perplexity=float(card["perplexity"]), family=card.get("family"),
                     corpus_fingerprint=card.get("corpus", {}).get("fingerprint"),
                     encode=lambda text: tokenizer.encode(text, bos=True).tolist())
    from sdsl_jax.hf import CheckpointError, load_hf_decoder, load_hf_tokenizer
    if tokens is None:
        raise UsageError(f"sdsl measure: argument {tokens_flag}: {path} is a Hugging Face "
                         "checkpoint, which does not record how many tokens it was trained on; "
                         f"give {tokens_flag} (e.g. 180B for OPT)")
    import jax.numpy as jnp
    try:
        decoder = _as_computed(load_hf_decoder(path, dtype=jnp.dtype(dtype), mesh=mesh))
        hf_tokenizer = load_hf_tokenizer(path)
    except (CheckpointError, ValueError, ImportError) as err:
        raise UsageError(f"sdsl measure: argument {flag}: {err}") from None
    return Model(decoder=decoder, path=path, kind=kind, name=decoder.name, tokens=tokens,
                 perplexity=None, family=None, corpus_fingerprint=None,
                 encode=lambda text: list(hf_tokenizer.encode(text).ids),
                 eos_token=_eos_token(path))


def _as_computed(decoder):
    """``decoder`` with ``dtype`` the dtype its floating params are in: what the records
    state is what ran, whatever a loader wrote in the field."""
    import dataclasses
    import jax
    import jax.numpy as jnp
    kinds = {str(leaf.dtype) for leaf in jax.tree.leaves(decoder.params)
             if jnp.issubdtype(leaf.dtype, jnp.floating)}
    if len(kinds) == 1 and decoder.dtype not in kinds:
        return dataclasses.replace(decoder, dtype=kinds.pop())
    return decoder


def _eos_token(path: str) -> int | None:
    """The end-of-sequence id of a Hugging Face config.json (the first, if it lists several)."""
    from sdsl_jax.common.tables import InputFileError, read_json
    from sdsl_jax.models.store import CONFIG_FILE
    try:
        eos = read_json(os.path.join(path, CONFIG_FILE)).get("eos_token_id")
    except (InputFileError, AttributeError):
        return None
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos if isinstance(eos, int) and not isinstance(eos, bool) and eos >= 0 else None


def load_pair(args) -> tuple[Model, Model]:
    """(draft, target) at --dtype, sharded over --devices (a count by now) when more than one."""
    mesh = None
    if args.devices != 1:
        from sdsl_jax.decoding.sharding import make_mesh
        try:
            mesh = make_mesh(args.devices)
        except ValueError as err:
            raise UsageError(f"sdsl measure: argument --devices: {err}") from None
    draft = load_model(args.draft, "--draft", "--draft-tokens", args.draft_tokens, args.dtype, mesh)
    target = load_model(args.target, "--target", "--target-tokens", args.target_tokens,
                        args.dtype, mesh)
    return draft, target


def check_sampling(args, draft: Model, target: Model) -> int | None:
    """--top-k within the vocabulary; the end-of-sequence id --stop-at-eos stops at (None
    without it), which the target must define and the draft, if it defines one, share."""
    vocab = target.decoder.vocab_size
    if args.top_k is not None and args.top_k > vocab:
        raise UsageError(f"sdsl measure: argument --top-k: {args.top_k} is more than the "
                         f"{vocab:,} tokens of the vocabulary")
    if not args.stop_at_eos:
        return None
    if target.eos_token is None:
        what = (f"{target.name} is a byte-level model of `sdsl train`, which has no "
                "end-of-sequence token" if target.kind == "sdsl" else
                f"{target.name}'s config.json gives no eos_token_id")
        raise UsageError(f"sdsl measure: argument --stop-at-eos: the target {what}")
    if draft.eos_token is not None and draft.eos_token != target.eos_token:
        raise UsageError(f"sdsl measure: argument --stop-at-eos: the draft's end-of-sequence "
                         f"token is {draft.eos_token}, the target's {target.eos_token}")
    if not 0 <= target.eos_token < vocab:
        raise UsageError(f"sdsl measure: argument --stop-at-eos: the end-of-sequence token "
                         f"{target.eos_token} is outside the vocabulary of {vocab:,}")
    return target.eos_token


def check_pair(draft: Model, target: Model, max_len: int,
               what: str = "prompt length + new tokens + lookahead + 1",
               lower: str = "--prompt-len or --max-new-tokens") -> tuple[Model, Model]:
    """One tokenizer for both, and ``max_len`` positions (``what``) fit both caches; the pair
    as it is measured.

    Two Hugging Face checkpoints must have one tokenizer (the same ids for the
    same text: :func:`sdsl_jax.hf.check_shared_tokenizer`). Where they do but
    their embeddings have different numbers of rows (Qwen2.5-0.5B and -7B,
    Pythia sizes), the smaller is padded with ids of probability zero
    (:func:`sdsl_jax.decoding.vocabulary.pad_vocabulary`), which leaves both
    models' distributions over the tokenizer's ids as they were.
    """
    import jax
    kinds = {"sdsl": "byte-level (sdsl train)", "hf": "Hugging Face"}
    if draft.kind != target.kind or (draft.kind == "sdsl" and
                                     draft.decoder.vocab_size != target.decoder.vocab_size):
        raise UsageError(
            f"sdsl measure: draft and target vocabularies differ: draft {draft.name} is "
            f"{kinds[draft.kind]} with {draft.decoder.vocab_size} tokens, target {target.name} is "
            f"{kinds[target.kind]} with {target.decoder.vocab_size}; speculative decoding needs "
            "one shared tokenizer")
    if draft.kind == "hf":
        draft, target = _share_vocabulary(draft, target)
    for role, model in (("draft", draft), ("target", target)):
        try:  # shapes only: the cache's own checks run without allocating it
            jax.eval_shape(lambda: model.decoder.init_cache(1, max_len))
        except ValueError as err:
            raise UsageError(f"sdsl measure: prompts do not fit the {role}'s cache: {what} = "
                             f"{max_len} positions ({err}); lower {lower}") from None
    return draft, target


def _share_vocabulary(draft: Model, target: Model) -> tuple[Model, Model]:
    """Two Hugging Face models of one tokenizer, padded to one vocabulary size."""
    from sdsl_jax.decoding.vocabulary import pad_vocabulary
    from sdsl_jax.hf import CheckpointError, check_shared_tokenizer
    try:
        check_shared_tokenizer(draft.path, target.path)
    except CheckpointError as err:
        raise UsageError(f"sdsl measure: draft and target vocabularies differ "
                         f"({draft.decoder.vocab_size} and {target.decoder.vocab_size} embedding "
                         f"rows): {err}") from None
    size = max(draft.decoder.vocab_size, target.decoder.vocab_size)
    return tuple(dataclasses.replace(model, decoder=pad_vocabulary(model.decoder, size))
                 for model in (draft, target))


def check_memory(draft: Model, target: Model, batch_size: int, prompt_len: int, max_len: int,
                 lower: str = "--prompt-len, --max-new-tokens or --batch-size") -> None:
    """Refuse a run whose prefill of ``batch_size`` prompts of ``prompt_len`` tokens into
    caches of ``max_len`` positions cannot fit in the device's memory.

    Found now, before a model runs, rather than as an allocation failure in
    the first batch. The compiled prefill's own memory analysis is exact but
    costs a compilation, so it runs only when a cheap lower bound (one
    attention head's scores, float32) says the run is large enough to matter.
    """
    import jax
    import jax.numpy as jnp
    available = _device_memory()
    if available is None or 64 * batch_size * prompt_len * max_len * 4 < available / 4:
        return
    needed = 0
    for model in (draft, target):
        decoder = model.decoder
        cache = jax.eval_shape(lambda: decoder.init_cache(batch_size, max_len))
        tokens = jax.ShapeDtypeStruct((batch_size, prompt_len), jnp.int32)
        start = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        stats = jax.jit(decoder.forward).lower(decoder.params, tokens, start, cache) \
            .compile().memory_analysis()
        if stats is None:
            return
        needed += (stats.temp_size_in_bytes + stats.argument_size_in_bytes
                   + stats.output_size_in_bytes)
    if needed > 0.9 * available:
        raise UsageError(f"sdsl measure: the prefill of {batch_size} x {prompt_len} tokens needs "
                         f"about {needed / 2**30:.3g} GiB, more than the "
                         f"{available / 2**30:.3g} GiB of the device; lower {lower}")


def _device_memory() -> int | None:
    """Bytes the first device can hold: an accelerator's limit, or the host's memory."""
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
