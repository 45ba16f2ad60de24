"""Real checkpoints: Llama, Mistral, Qwen, GPT-NeoX (Pythia), GPT-2 and OPT weights from a
local Hugging Face directory, as `Decoder`s.

``load_hf_decoder(path)`` reads ``path/config.json`` to pick the architecture
by ``model_type``:

- "llama", "mistral", "qwen2", "qwen3": the Llama architecture
  (sdsl_jax/hf/llama.py): Llama 2 and 3 (with llama3 rope scaling),
  TinyLlama, SmolLM, Mistral, Qwen2/2.5 and Qwen3;
- "gpt_neox": GPT-NeoX and Pythia (sdsl_jax/hf/gpt_neox.py);
- "gpt2" and "opt" (sdsl_jax/hf/gpt2.py, sdsl_jax/hf/opt.py).

It reads the weights from ``model.safetensors`` or the shards named in
``model.safetensors.index.json`` and returns a `Decoder` whose ``forward`` is
a pure JAX function obeying the cache contract of
sdsl_jax/decoding/decoder.py, with tensor-parallel annotations for a device
mesh (sdsl_jax/hf/tensor_parallel.py); ``load_hf_decoder(path, mesh=mesh)``
loads the weights straight onto the mesh, for a target larger than one
device. Nothing is downloaded and torch is not
needed. What a checkpoint asks for that is not implemented (a rope scaling
other than default, linear or llama3; mixture-of-experts; a sliding window
shorter than the cache) is refused with a `CheckpointError` or, for the
cache, a ValueError, never approximated.

What a directory needs (fetch it once, e.g. ``hf download EleutherAI/pythia-160m
--include "*.json" --include "*.safetensors" --local-dir pythia-160m``):

- ``config.json`` and the safetensors weights. A repository that ships only
  ``pytorch_model.bin`` is converted once, where torch and transformers are
  installed: ``AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst,
  safe_serialization=True)``, then copy the tokenizer files across.
- for text prompts, ``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` +
  ``tokenizer_config.json``; `load_hf_tokenizer` reads them with the
  ``tokenizers`` package, adding a BOS token where the model's own
  post-processor does (Llama) and not otherwise (Qwen, Pythia). Without
  them, prompts are token ids.

A draft and a target must share a tokenizer: OPT-125m drafting for OPT-6.7b,
Pythia-70m for Pythia-6.9b, Qwen2.5-0.5B for Qwen2.5-7B, Llama-3.2-1B for
Llama-3.1-8B. Checkpoints of one family may still have different numbers of
embedding rows (Qwen2.5-0.5B 151936, -7B 152064; Pythia 50304 or more):
`check_shared_tokenizer` says whether two directories' tokenizers agree and
how many ids the tokenizer has, `padded_vocabulary_size` how many ids both
models run at, and `sdsl_jax.decoding.vocabulary.pad_vocabulary` pads the
smaller model's logits with zero-probability ids::

    draft = load_hf_decoder("pythia-160m", dtype=jnp.bfloat16)
    target = load_hf_decoder("pythia-6.9b", dtype=jnp.bfloat16)
    vocabulary = check_shared_tokenizer("pythia-160m", "pythia-6.9b")
    size = padded_vocabulary_size(vocabulary, draft, target)
    draft, target = pad_vocabulary(draft, size), pad_vocabulary(target, size)
    prompt_ids = load_hf_tokenizer("pythia-160m").encode("The capital of France is").ids

The cache length is bounded by the learned positions (1024 for GPT-2, 2048
for OPT) or the context the model was trained for (``max_position_embeddings``),
and by a sliding window where one is set. For float32 logits that match
transformers to 1e-4 on a GPU, set ``jax.config.update("jax_default_matmul_precision",
"highest")``: by default XLA runs float32 matmuls in TF32 on recent NVIDIA GPUs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.hf import gpt2, gpt_neox, llama, opt
from sdsl_jax.hf.configured import Configured
from sdsl_jax.hf.gpt2 import GPT2Spec
from sdsl_jax.hf.gpt_neox import GPTNeoXSpec
from sdsl_jax.hf.kv_cache import KV_CACHE_SHARDING
from sdsl_jax.hf.layout import CONFIG_FILE, read_config
from sdsl_jax.hf.llama import LlamaSpec
from sdsl_jax.hf.opt import OPTSpec
from sdsl_jax.hf.safetensors_io import SafetensorsCheckpoint
from sdsl_jax.hf.tokenizer import (TokenizerVocabulary, check_shared_tokenizer, load_hf_tokenizer,
                                   padded_vocabulary_size, read_tokenizer_vocabulary)
from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.decoding.sharding import shard_decoder

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one model_type is read, run and split over devices."""

    read_spec: Callable[[dict, str, Any], Any]  # (config, config path, dtype) -> frozen spec
    load_params: Callable[[Any, SafetensorsCheckpoint], dict]
    forward: Callable
    init_cache: Callable
    may_skip: re.Pattern  # tensors a checkpoint may hold that the model does not read
    param_sharding: tuple


# Old uploads carry rotary tables and causal-mask buffers; tied heads may be saved anyway.
_LLAMA = Architecture(llama.llama_spec, llama.load_llama_params, llama.llama_forward, llama.llama_init_cache,
                      re.compile(r".*rotary_emb\.inv_freq$|^lm_head\.weight$"), llama.PARAM_SHARDING)

ARCHITECTURES: dict[str, Architecture] = {
    **{family: _LLAMA for family in llama.FAMILIES},
    "gpt_neox": Architecture(
        gpt_neox.gpt_neox_spec, gpt_neox.load_gpt_neox_params, gpt_neox.gpt_neox_forward,
        gpt_neox.gpt_neox_init_cache,
        re.compile(r".*rotary_emb\.inv_freq$|(^|.*\.)attention\.(masked_)?bias$|^(embed_out|lm_head)\.weight$"),
        gpt_neox.PARAM_SHARDING),
    # GPT-2 uploads carry the causal-mask buffers "h.N.attn.bias" / "attn.masked_bias".
    "gpt2": Architecture(gpt2.gpt2_spec, gpt2.load_gpt2_params, gpt2.gpt2_forward, gpt2.gpt2_init_cache,
                         re.compile(r"(^|.*\.)attn\.(masked_)?bias$|^lm_head\.weight$"), gpt2.PARAM_SHARDING),
    "opt": Architecture(opt.opt_spec, opt.load_opt_params, opt.opt_forward, opt.opt_init_cache,
                        re.compile(r"^lm_head\.weight$"), opt.PARAM_SHARDING),
}


def load_hf_decoder(path: str | os.PathLike, dtype=jnp.float32, name: str | None = None, *,
                    mesh: Mesh | None = None) -> Decoder:
    """A `Decoder` for the checkpoint in directory ``path``, of any model_type in `ARCHITECTURES`.

    Args:
      path: a directory with ``config.json`` and safetensors weights.
      dtype: float32, bfloat16 or float16: the dtype of params, cache and
        activations (norm statistics, rotary embeddings and softmax are
        computed in at least float32, logits returned in at least float32).
        float32 reproduces transformers' logits; bfloat16 halves memory for
        large targets on a GPU.
      name: the label for reports; the directory's name by default.
      mesh: a device mesh with an axis "model"
        (:func:`sdsl_jax.decoding.sharding.make_mesh`). With one, each weight
        goes from the memory-mapped file straight to its shards on the mesh,
        one stacked tensor at a time, each device receiving only its slice:
        a target larger than one device (or than host memory) loads, and the
        result is what :func:`sdsl_jax.decoding.sharding.shard_decoder`
        returns for the same model (equal wrappers, so compiled loops are
        shared). Without one, the weights go to the default device.

    Returns:
      A Decoder whose ``dtype`` names the compute dtype, whose num_params
      counts every distinct weight once (a tied output head is the token
      embedding), as ``model.num_parameters()`` does in transformers, and
      whose ``param_sharding`` and ``cache_sharding`` split attention heads
      and MLP units over the mesh axis "model".

    Raises:
      CheckpointError: naming the file, key or tensor that is missing,
        malformed, disagrees with config.json, or asks for what is not
        implemented; all of it is checked against the files' headers before
        any weight is read.
      ValueError: for a dtype other than the three above, or a mesh without
        an axis "model".
    """
    compute_dtype = jnp.dtype(dtype).name
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype}")
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
    architecture = ARCHITECTURES[model_type]
    spec = architecture.read_spec(config, config_path, compute_dtype)
    checkpoint = SafetensorsCheckpoint(path)
    params = architecture.load_params(spec, checkpoint)
    # A tensor the model never reads means config.json describes a different model
    # (extra heads, cross-attention): refuse rather than compute silently wrong logits.
    unused = sorted(n for n in checkpoint.names if n not in checkpoint.names_read and not architecture.may_skip.match(n))
    if unused:
        shown = ", ".join(repr(n) for n in unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise CheckpointError(
            f"{path}: the checkpoint holds tensors that a {model_type} model as described by {CONFIG_FILE} "
            f"does not use ({len(unused)} in all): {shown}"
        )
    num_params = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
    if mesh is None:
        # One leaf at a time, each transfer finished before the next read: the host
        # holds one stacked tensor, not the model.
        params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(np.asarray(leaf)).block_until_ready(), params)
    decoder = Decoder(
        params=params,
        forward=Configured(architecture.forward, spec),
        init_cache=Configured(architecture.init_cache, spec),
        vocab_size=spec.vocab_size,
        num_params=num_params,
        name=name or os.path.basename(os.path.normpath(path)),
        dtype=compute_dtype,
        param_sharding=architecture.param_sharding,
        cache_sharding=KV_CACHE_SHARDING,
    )
    # shard_decoder reads each HostTensor leaf when it places it.
    return decoder if mesh is None else shard_decoder(decoder, mesh)


__all__ = [
    "ARCHITECTURES", "Architecture", "CheckpointError", "GPT2Spec", "GPTNeoXSpec", "LlamaSpec", "OPTSpec",
    "SafetensorsCheckpoint", "TokenizerVocabulary", "check_shared_tokenizer", "load_hf_decoder",
    "load_hf_tokenizer", "padded_vocabulary_size", "read_tokenizer_vocabulary",
]
