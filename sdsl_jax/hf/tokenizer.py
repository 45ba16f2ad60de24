"""Text to token ids for a checkpoint directory, via the `tokenizers` package, and
whether two checkpoints share one tokenizer.

A directory carries its tokenizer either as ``tokenizer.json`` (complete, used
as is: Llama 3, Qwen, Pythia and most recent uploads; its post-processor adds
the BOS token where the model was trained with one, as Llama's
``<|begin_of_text|>`` or ``<s>``, and Qwen and Pythia add none) or as
``vocab.json`` plus ``merges.txt`` with options in ``tokenizer_config.json``
(GPT-2, OPT); from the latter we build the same pipeline transformers does:
byte-level pre-tokenisation without a prefix space, the BPE merges, special
tokens matched whole, and for OPT (``"add_bos_token": true``) the ``</s>``
BOS token prepended, which the models were trained to see first.

Speculative decoding needs the draft and the target to read and write the
same ids. `read_tokenizer_vocabulary` summarises a tokenizer by what fixes
its ids (the model's vocabulary and merges, and the added tokens) as a
fingerprint, and its size; `check_shared_tokenizer` compares two
directories and names both vocabularies when they differ, and
`padded_vocabulary_size` says how many ids both models are padded to.

``tokenizers`` is imported only here, on demand, so the rest of the package
does not need it (``pip install tokenizers``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.common.io import read_json
from sdsl_jax.decoding.decoder import Decoder


def _token_content(value) -> str | None:
    # tokenizer_config.json writes a special token as a string or as an AddedToken dict.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def load_hf_tokenizer(path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` for the checkpoint in directory ``path``.

    ``tokenizer.encode(text).ids`` gives the prompt's token ids;
    ``tokenizer.decode(ids)`` turns generated ids back into text.
    """
    try:
        import tokenizers
        from tokenizers import decoders, models, pre_tokenizers, processors
    except ImportError as err:
        raise ImportError("load_hf_tokenizer needs the 'tokenizers' package: pip install tokenizers") from err
    path = os.fspath(path)
    full = os.path.join(path, "tokenizer.json")
    if os.path.isfile(full):
        try:
            return tokenizers.Tokenizer.from_file(full)
        except Exception as err:  # tokenizers raises its own exception types
            raise CheckpointError(f"cannot read {full}: {err}") from err
    vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        raise CheckpointError(f"{path}: no tokenizer.json, nor vocab.json with merges.txt")
    options = {}
    config_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config_path):
        try:
            options = read_json(config_path)
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read {config_path}: {err}") from err
    tokenizer = tokenizers.Tokenizer(models.BPE.from_file(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(options.get("add_prefix_space", False)))
    tokenizer.decoder = decoders.ByteLevel()
    specials = []
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        token = _token_content(options.get(key))
        if token is not None and token not in specials:
            specials.append(token)
    tokenizer.add_special_tokens(specials)
    bos = _token_content(options.get("bos_token"))
    if options.get("add_bos_token") and bos is not None:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizerVocabulary:
    """What fixes a tokenizer's ids.

    Attributes:
      directory: the checkpoint directory it was read from.
      files: the tokenizer file(s) read, for messages.
      size: the number of ids it can produce, ``max id + 1`` over its
        vocabulary and added tokens. A model needs at least this many
        embedding rows; it may have more (padding to a multiple of 64 or 128).
      fingerprint: SHA-256 of the model kind, the vocabulary (token -> id),
        the merges and the added tokens (id, content, special). Equal
        fingerprints encode and decode every text the same way up to the
        normaliser and pre-tokeniser, which the families share.
    """

    directory: str
    files: str
    size: int
    fingerprint: str
    tokens: tuple = dataclasses.field(repr=False, compare=False, default=())  # id -> token, for messages


def read_tokenizer_vocabulary(path: str | os.PathLike) -> TokenizerVocabulary:
    """The `TokenizerVocabulary` of the tokenizer in checkpoint directory ``path``.

    Raises:
      CheckpointError: when the directory has no tokenizer files or they cannot be read.
    """
    path = os.fspath(path)
    tokenizer = load_hf_tokenizer(path)
    files = "tokenizer.json" if os.path.isfile(os.path.join(path, "tokenizer.json")) else "vocab.json + merges.txt"
    # The library's own serialisation writes both file forms alike (merges as pairs, added
    # tokens with their ids), so a tokenizer.json and the vocab/merges it came from agree.
    state = json.loads(tokenizer.to_str())
    model = state.get("model") or {}
    added = sorted((t["id"], t["content"], bool(t.get("special"))) for t in state.get("added_tokens") or [])
    canonical = {
        "type": model.get("type"),
        "vocab": model.get("vocab"),
        "merges": [" ".join(m) if isinstance(m, list) else m for m in model.get("merges") or []],
        "added_tokens": added,
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    tokens = [None] * size
    for token, index in vocab.items():
        tokens[index] = token
    return TokenizerVocabulary(directory=path, files=files, size=size, fingerprint=digest, tokens=tuple(tokens))


def check_shared_tokenizer(draft_path: str | os.PathLike, target_path: str | os.PathLike) -> TokenizerVocabulary:
    """The tokenizer the draft and target checkpoints share, or a `CheckpointError` naming both.

    Returns:
      The draft's `TokenizerVocabulary` (equal to the target's). Its ``size``
      is how many ids prompts and outputs use; the two models may have more
      embedding rows than that, and differently many, which
      `sdsl_jax.decoding.vocabulary.pad_vocabulary` reconciles.

    Raises:
      CheckpointError: when either directory has no readable tokenizer, or the
        two tokenizers assign different ids (naming both, their sizes and the
        first id on which they differ).
    """
    draft = read_tokenizer_vocabulary(draft_path)
    target = read_tokenizer_vocabulary(target_path)
    if draft.fingerprint == target.fingerprint:
        return draft
    first = next((i for i, (a, b) in enumerate(zip(draft.tokens, target.tokens)) if a != b),
                 min(draft.size, target.size))
    if first < min(draft.size, target.size):
        where = f"id {first} is {draft.tokens[first]!r} in the draft's and {target.tokens[first]!r} in the target's"
    elif draft.size != target.size:
        where = f"one has {abs(draft.size - target.size)} ids more"
    else:
        where = "they have the same tokens at every id but differ in their merges or special tokens"
    raise CheckpointError(
        f"draft and target tokenizers differ: the draft's {os.path.join(draft.directory, draft.files)} has "
        f"{draft.size} ids (vocabulary {draft.fingerprint[:12]}), the target's "
        f"{os.path.join(target.directory, target.files)} has {target.size} ids (vocabulary "
        f"{target.fingerprint[:12]}); {where}. Speculative decoding needs one shared tokenizer"
    )


def padded_vocabulary_size(vocabulary: TokenizerVocabulary, draft: Decoder, target: Decoder) -> int:
    """The vocabulary size a draft and a target of one tokenizer run at: the larger model's.

    Pad the other with `sdsl_jax.decoding.vocabulary.pad_vocabulary`; rows
    beyond the tokenizer's ids are padding no text maps to.

    Raises:
      CheckpointError: when a model has fewer embedding rows than the
        tokenizer has ids, so that some prompts could not be read.
    """
    for role, decoder in (("draft", draft), ("target", target)):
        if decoder.vocab_size < vocabulary.size:
            raise CheckpointError(
                f"the {role} {decoder.name} has {decoder.vocab_size} token embeddings but its tokenizer "
                f"{os.path.join(vocabulary.directory, vocabulary.files)} has {vocabulary.size} ids")
    return max(draft.vocab_size, target.vocab_size)
