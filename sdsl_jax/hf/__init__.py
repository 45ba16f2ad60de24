"""Real checkpoints: GPT-2 and OPT weights from a local Hugging Face directory, as `Decoder`s.

``load_hf_decoder(path)`` reads ``path/config.json`` to pick the architecture
(``model_type`` "gpt2" or "opt"), reads the weights from ``model.safetensors``
or the shards named in ``model.safetensors.index.json``, and returns a
`Decoder` whose ``forward`` is a pure JAX function obeying the cache contract
of sdsl_jax/decoding/decoder.py. Nothing is downloaded and torch is not needed.

What a directory needs (fetch it once, e.g. ``hf download facebook/opt-125m
--include "*.json" --include "*.txt" --include "*.safetensors" --local-dir
opt-125m``):

- ``config.json`` and the safetensors weights. A repository that ships only
  ``pytorch_model.bin`` is converted once, where torch and transformers are
  installed: ``AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst,
  safe_serialization=True)``, then copy the tokenizer files across.
- for text prompts, ``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` +
  ``tokenizer_config.json``; `load_hf_tokenizer` reads them with the
  ``tokenizers`` package (for OPT it prepends ``</s>``, as the models were
  trained to see). Without them, prompts are token ids.

A draft and a target must share a vocabulary: OPT-125m/350m drafting for
OPT-1.3b .. 66b, or GPT-2 drafting for GPT-2 medium/large/xl::

    draft = load_hf_decoder("opt-125m", dtype=jnp.bfloat16)
    target = load_hf_decoder("opt-6.7b", dtype=jnp.bfloat16)
    prompt_ids = load_hf_tokenizer("opt-125m").encode("The capital of France is").ids

The cache length is bounded by the learned positions: 1024 for GPT-2, 2048
for OPT. For float32 logits that match transformers to 1e-4 on a GPU, set
``jax.config.update("jax_default_matmul_precision", "highest")``: by default
XLA runs float32 matmuls in TF32 on recent NVIDIA GPUs.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.hf.configured import Configured
from sdsl_jax.hf.gpt2 import GPT2Spec, gpt2_forward, gpt2_init_cache, gpt2_spec, load_gpt2_params
from sdsl_jax.hf.layout import CONFIG_FILE, read_config
from sdsl_jax.hf.opt import OPTSpec, load_opt_params, opt_forward, opt_init_cache, opt_spec
from sdsl_jax.hf.safetensors_io import SafetensorsCheckpoint
from sdsl_jax.hf.tokenizer import load_hf_tokenizer
from sdsl_jax.decoding.decoder import Decoder

# model_type -> (spec reader, params loader, forward, init_cache, tensors that may be present unused)
ARCHITECTURES = {
    # GPT-2 uploads carry the causal-mask buffers "h.N.attn.bias" / "attn.masked_bias".
    "gpt2": (gpt2_spec, load_gpt2_params, gpt2_forward, gpt2_init_cache,
             re.compile(r"(^|.*\.)attn\.(masked_)?bias$|^lm_head\.weight$")),
    "opt": (opt_spec, load_opt_params, opt_forward, opt_init_cache, re.compile(r"^lm_head\.weight$")),
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
    read_spec, load_params, forward, init_cache, may_skip = ARCHITECTURES[model_type]
    spec = read_spec(config, config_path, dtype)
    checkpoint = SafetensorsCheckpoint(path)
    params = load_params(spec, checkpoint)
    # A tensor the model never reads means config.json describes a different model
    # (extra heads, cross-attention): refuse rather than compute silently wrong logits.
    unused = sorted(n for n in checkpoint.names if n not in checkpoint.names_read and not may_skip.match(n))
    if unused:
        shown = ", ".join(repr(n) for n in unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise CheckpointError(
            f"{path}: the checkpoint holds tensors that a {model_type} model as described by {CONFIG_FILE} "
            f"does not use ({len(unused)} in all): {shown}"
        )
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
