"""OPT as a pure JAX function over a Hugging Face checkpoint's weights.

The architecture (Zhang et al. 2022, "OPT: Open Pre-trained Transformer
Language Models") in both forms its released checkpoints use:

- pre-norm (``do_layer_norm_before=True``; OPT-125m and every size from 1.3b
  up): ``h += attn(ln(h)); h += mlp(ln(h))``, then a final layer norm;
- post-norm (``do_layer_norm_before=False``; OPT-350m): ``h = ln(h + attn(h));
  h = ln(h + mlp(h))``, no final layer norm, and a token embedding narrower
  than the model (``word_embed_proj_dim``) bridged by ``project_in`` and
  ``project_out``.

Learned positions are looked up at ``position + 2``: fairseq reserved the
first two rows of the table, which is why it holds ``max_position_embeddings
+ 2`` rows. Queries are scaled by ``head_dim ** -0.5`` after their bias.
Torch ``Linear`` weights ([out, in]) are transposed to kernels [in, out] on
load, the attention's with their heads axis apart (q, k, v [D, H, Dh], output
[H, Dh, D]) so that they are split over devices by whole heads. The output head is tied to the token embedding unless the config says
otherwise.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.hf.layout import ConfigReader, WeightReader
from sdsl_jax.hf.kv_cache import cached_attention, check_forward_inputs, init_kv_cache, positions
from sdsl_jax.hf.layers import ACTIVATIONS, dense, from_heads, layer_norm, to_heads
from sdsl_jax.hf.safetensors_io import SafetensorsCheckpoint
from sdsl_jax.hf.tensor_parallel import tensor_parallel_rules

POSITION_OFFSET = 2
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which OPT never overrides

PARAM_SHARDING = tensor_parallel_rules("layers", to_heads=("q_proj", "k_proj", "v_proj"), from_heads=("out_proj",),
                                       column=("fc1",), row=("fc2",))


@dataclasses.dataclass(frozen=True)
class OPTSpec:
    """The static shape and options of an OPT checkpoint, from its config.json."""

    vocab_size: int
    max_positions: int
    num_layers: int
    num_heads: int
    hidden_size: int
    ffn_size: int
    word_embed_dim: int
    layer_norm_before: bool
    final_layer_norm: bool
    layer_norm_affine: bool
    enable_bias: bool
    activation: str
    tie_word_embeddings: bool
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def projects_embeddings(self) -> bool:
        return self.word_embed_dim != self.hidden_size


def opt_spec(config: dict, path: str, dtype) -> OPTSpec:
    """Read an OPT config.json (keys as transformers writes them, its defaults where absent)."""
    cfg = ConfigReader(config, path)
    hidden = cfg.positive_int("hidden_size", 768)
    heads = cfg.positive_int("num_attention_heads", 12)
    if hidden % heads:
        raise CheckpointError(f"{path}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    embed = config.get("word_embed_proj_dim")
    embed = hidden if embed is None else cfg.positive_int("word_embed_proj_dim")
    before = cfg.flag("do_layer_norm_before", True)
    spec = OPTSpec(
        vocab_size=cfg.positive_int("vocab_size", 50272),
        max_positions=cfg.positive_int("max_position_embeddings", 2048),
        num_layers=cfg.positive_int("num_hidden_layers", 12),
        num_heads=heads,
        hidden_size=hidden,
        ffn_size=cfg.positive_int("ffn_dim", 3072),
        word_embed_dim=embed,
        layer_norm_before=before,
        final_layer_norm=before and not cfg.flag("_remove_final_layer_norm", False),
        layer_norm_affine=cfg.flag("layer_norm_elementwise_affine", True),
        enable_bias=cfg.flag("enable_bias", True),
        activation=cfg.choice("activation_function", "relu", ACTIVATIONS),
        tie_word_embeddings=cfg.flag("tie_word_embeddings", True),
        dtype=jnp.dtype(dtype).name,
    )
    return spec


def load_opt_params(spec: OPTSpec, checkpoint: SafetensorsCheckpoint) -> dict:
    # OPTForCausalLM saves "model.decoder.*"; OPTModel (older hub uploads) "decoder.*".
    w = WeightReader(checkpoint, ("model.decoder.", "decoder."), "embed_tokens.weight", spec.dtype)
    D, L, V, F, E = spec.hidden_size, spec.num_layers, spec.vocab_size, spec.ffn_size, spec.word_embed_dim
    H, Dh = spec.num_heads, spec.head_dim

    def norm(template, stacked=True):
        if not spec.layer_norm_affine:
            return {}
        read = (lambda name, shape: w.stacked(name, L, shape)) if stacked else w.param
        return {"scale": read(template + ".weight", (D,)), "bias": read(template + ".bias", (D,))}

    def linear(template, n_in, n_out, kernel_view=None, bias_view=None):
        p = {"kernel": w.stacked(template + ".weight", L, (n_out, n_in), transpose=True, view=kernel_view)}
        if spec.enable_bias:
            p["bias"] = w.stacked(template + ".bias", L, (n_out,), view=bias_view)
        return p

    def into_heads(template):  # kernel [D, H, Dh], bias [H, Dh]
        return linear(template, D, D, (D, H, Dh), (H, Dh))

    params = {
        "embed_tokens": w.param("embed_tokens.weight", (V, E)),
        "embed_positions": w.param("embed_positions.weight", (spec.max_positions + POSITION_OFFSET, D)),
        "layers": {
            "attn_norm": norm("layers.{}.self_attn_layer_norm"),
            "q_proj": into_heads("layers.{}.self_attn.q_proj"),
            "k_proj": into_heads("layers.{}.self_attn.k_proj"),
            "v_proj": into_heads("layers.{}.self_attn.v_proj"),
            "out_proj": linear("layers.{}.self_attn.out_proj", D, D, kernel_view=(H, Dh, D)),
            "mlp_norm": norm("layers.{}.final_layer_norm"),
            "fc1": linear("layers.{}.fc1", D, F),
            "fc2": linear("layers.{}.fc2", F, D),
        },
    }
    if spec.projects_embeddings:
        params["project_in"] = {"kernel": w.param("project_in.weight", (D, E), transpose=True)}
        params["project_out"] = {"kernel": w.param("project_out.weight", (E, D), transpose=True)}
    if spec.final_layer_norm:
        params["final_norm"] = norm("final_layer_norm", stacked=False)
    if not spec.tie_word_embeddings:
        head = WeightReader(checkpoint, ("",), "lm_head.weight", spec.dtype)
        params["lm_head"] = head.param("lm_head.weight", (V, E))
    return params


def opt_init_cache(spec: OPTSpec, batch_size: int, max_len: int) -> dict:
    return init_kv_cache(spec.num_layers, batch_size, max_len, spec.num_heads, spec.head_dim,
                         spec.dtype, spec.max_positions)


def opt_forward(spec: OPTSpec, params: dict, tokens: jax.Array, start: jax.Array,
                cache: dict) -> tuple[jax.Array, dict]:
    """Logits [B, T, V] for ``tokens`` at positions ``start[b] + t``, and the updated cache."""
    check_forward_inputs(tokens, start, cache, spec.vocab_size)
    num_tokens = tokens.shape[1]
    act = ACTIVATIONS[spec.activation]
    h = params["embed_tokens"][tokens]
    if spec.projects_embeddings:
        h = dense(h, params["project_in"])
    h = h + params["embed_positions"][positions(start, num_tokens) + POSITION_OFFSET]
    query_scale = 1.0 / math.sqrt(spec.head_dim)

    def block(h, layer):
        p, k_cache, v_cache = layer
        x = layer_norm(h, p["attn_norm"], LAYER_NORM_EPS) if spec.layer_norm_before else h
        q = to_heads(x, p["q_proj"]) * query_scale
        out, k_cache, v_cache = cached_attention(q, to_heads(x, p["k_proj"]), to_heads(x, p["v_proj"]),
                                                 k_cache, v_cache, start, 1.0)
        h = h + from_heads(out, p["out_proj"])
        if not spec.layer_norm_before:
            h = layer_norm(h, p["attn_norm"], LAYER_NORM_EPS)
        x = layer_norm(h, p["mlp_norm"], LAYER_NORM_EPS) if spec.layer_norm_before else h
        h = h + dense(act(dense(x, p["fc1"])), p["fc2"])
        if not spec.layer_norm_before:
            h = layer_norm(h, p["mlp_norm"], LAYER_NORM_EPS)
        return h, (k_cache, v_cache)

    h, (k_cache, v_cache) = jax.lax.scan(block, h, (params["layers"], cache["k"], cache["v"]))
    if spec.final_layer_norm:
        h = layer_norm(h, params["final_norm"], LAYER_NORM_EPS)
    if spec.projects_embeddings:
        h = dense(h, params["project_out"])
    head = params["embed_tokens"] if spec.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("btd,vd->btv", h, head, preferred_element_type=jnp.promote_types(h.dtype, jnp.float32))
    return logits, {"k": k_cache, "v": v_cache}
