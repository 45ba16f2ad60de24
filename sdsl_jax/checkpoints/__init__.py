"""Real checkpoints: GPT-2 and OPT weights from a local Hugging Face directory, as `Decoder`s.

``load_hf_decoder(path)`` reads ``path/config.json`` to pick the architecture
(``model_type`` "gpt2" or "opt"), reads the weights from ``model.safetensors``
or the shards named in ``model.safetensors.index.json``, and returns a
`Decoder` whose ``forward`` is a pure JAX function obeying the cache contract
of sdsl_jax/decoder.py. Nothing is downloaded: fetch a checkpoint once
(e.g. ``huggingface-cli download facebook/opt-125m --include "*.json" "*.txt"
"*.safetensors" --local-dir opt-125m``) and point at the directory. torch is
not needed; weights stored as .bin must be re-saved as safetensors first.

A draft and a target must share a vocabulary: OPT-125m drafting for
OPT-1.3b/2.7b/6.7b/13b, or GPT-2 drafting for GPT-2 medium/large/xl.
Prompts are token ids; `load_hf_tokenizer` turns text into them when the
``tokenizers`` package is installed (for OPT it prepends ``</s>``, as the
models were trained to see).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from sdsl_jax.checkpoints.configured import Configured
from sdsl_jax.checkpoints.gpt2 import GPT2Spec, gpt2_forward, gpt2_init_cache, gpt2_spec, load_gpt2_params
from sdsl_jax.checkpoints.hf_layout import CONFIG_FILE, read_config
from sdsl_jax.checkpoints.opt import OPTSpec, load_opt_params, opt_forward, opt_init_cache, opt_spec
from sdsl_jax.checkpoints.safetensors_io import CheckpointError, SafetensorsCheckpoint
from sdsl_jax.checkpoints.tokenizer import load_hf_tokenizer
from sdsl_jax.decoder import Decoder

# model_type -> (spec reader, params loader, forward, init_cache)
ARCHITECTURES = {
    "gpt2": (gpt2_spec, load_gpt2_params, gpt2_forward, gpt2_init_cache),
    "opt": (opt_spec, load_opt_params, opt_forward, opt_init_cache),
}


def load_hf_decoder(path: str | os.PathLike, dtype=jnp.float32, name: str | None = None) -> Decoder:
    """A `Decoder` for the GPT-2 or OPT checkpoint in directory ``path``.

    Args:
      path: a directory with ``config.json`` and safetensors weights.
      dtype: the dtype of params, cache and activations (layer norm and
        softmax are computed in at least float32, logits returned in at least
        float32). float32 reproduces transformers' logits; bfloat16 halves
        memory for large targets on a GPU.
      name: the label for reports; the directory's name by default.

    Returns:
      A Decoder whose num_params counts every distinct weight once (a tied
      output head is the token embedding), as ``model.num_parameters()``
      does in transformers.

    Raises:
      CheckpointError: naming the file, key or tensor that is missing,
        malformed, or disagrees with config.json.
    """
    path = os.fspath(path)
    config = read_config(path)
    config_path = os.path.join(path, CONFIG_FILE)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        architectures = config.get("architectures")
        raise CheckpointError(
            f"{config_path}: unsupported model_type {model_type!r}"
            + (f" (architectures {architectures})" if architectures else "")
            + f"; supported: {', '.join(ARCHITECTURES)}"
        )
    read_spec, load_params, forward, init_cache = ARCHITECTURES[model_type]
    spec = read_spec(config, config_path, dtype)
    params = load_params(spec, SafetensorsCheckpoint(path))
    num_params = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
    return Decoder(
        params=params,
        forward=Configured(forward, spec),
        init_cache=Configured(init_cache, spec),
        vocab_size=spec.vocab_size,
        num_params=num_params,
        name=name or os.path.basename(os.path.normpath(path)),
    )


__all__ = [
    "ARCHITECTURES", "CheckpointError", "GPT2Spec", "OPTSpec", "SafetensorsCheckpoint",
    "load_hf_decoder", "load_hf_tokenizer",
]
