"""Text to token ids for a GPT-2 or OPT checkpoint directory, via the `tokenizers` package.

Both families use GPT-2's byte-level BPE. A directory carries it either as
``tokenizer.json`` (complete, used as is) or as ``vocab.json`` plus
``merges.txt`` with options in ``tokenizer_config.json``; from the latter we
build the same pipeline transformers does: byte-level pre-tokenisation
without a prefix space, the BPE merges, special tokens matched whole, and for
OPT (``"add_bos_token": true``) the ``</s>`` BOS token prepended, which the
models were trained to see first.

``tokenizers`` is imported only here, on demand, so the rest of the package
does not need it (``pip install tokenizers``).
"""

from __future__ import annotations

import json
import os

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.common.io import read_json


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
