"""GPT-NeoX (Pythia) as a pure JAX function over a Hugging Face checkpoint's weights.

The architecture (Black et al. 2022, "GPT-NeoX-20B"; Biderman et al. 2023,
"Pythia"): a token embedding, then blocks with layer norms and rotary
positions on the leading ``rotary_pct`` of each head's channels (a quarter in
Pythia; sdsl_jax/hf/rotary.py), in one of two forms:

- parallel residual (``use_parallel_residual=True``, every Pythia model):
  ``h = h + attn(ln_1(h)) + mlp(ln_2(h))``;
- sequential: ``h += attn(ln_1(h)); h += mlp(ln_2(h))``.

A final layer norm and an output head ``embed_out`` (``lm_head`` as
transformers 5 names it in memory), untied unless the config ties it.

The fused ``query_key_value`` projection stores its outputs per head, as
[H, 3, Dh] (head-major, then query, key, value); it is cut at load time into
separate q, k and v kernels [D, H, Dh] (biases [H, Dh]), and the output
kernel is [H, Dh, D], so that a tensor-parallel split over heads is the same
as every other family's. Torch ``Linear`` weights [out, in] are transposed to
kernels [in, out].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.hf.kv_cache import cached_attention, check_forward_inputs, init_kv_cache, positions
from sdsl_jax.hf.layers import ACTIVATIONS, dense, from_heads, layer_norm, to_heads
from sdsl_jax.hf.layout import ConfigReader, WeightReader
from sdsl_jax.hf.rotary import RotarySpec, read_rotary, rotate
from sdsl_jax.hf.safetensors_io import SafetensorsCheckpoint
from sdsl_jax.hf.tensor_parallel import tensor_parallel_rules

PARAM_SHARDING = tensor_parallel_rules("layers", to_heads=("q_proj", "k_proj", "v_proj"), from_heads=("o_proj",),
                                       column=("mlp_in",), row=("mlp_out",))


@dataclasses.dataclass(frozen=True)
class GPTNeoXSpec:
    """The static shape and options of a GPT-NeoX checkpoint, from its config.json."""

    vocab_size: int
    max_positions: int
    num_layers: int
    num_heads: int
    hidden_size: int
    intermediate_size: int
    layer_norm_eps: float
    activation: str
    rotary: RotarySpec
    parallel_residual: bool
    attention_bias: bool
    tie_word_embeddings: bool
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def gpt_neox_spec(config: dict, path: str, dtype) -> GPTNeoXSpec:
    """Read a GPT-NeoX config.json (keys as transformers writes them, its defaults where absent)."""
    cfg = ConfigReader(config, path)
    hidden = cfg.positive_int("hidden_size", 6144)
    heads = cfg.positive_int("num_attention_heads", 64)
    if hidden % heads:
        raise CheckpointError(f"{path}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    head_dim = hidden // heads
    if config.get("head_dim") not in (None, head_dim):
        raise CheckpointError(f"{path}: head_dim={config['head_dim']!r} differs from hidden_size / "
                              f"num_attention_heads = {head_dim}, which GPT-NeoX attention uses")
    return GPTNeoXSpec(
        vocab_size=cfg.positive_int("vocab_size", 50432),
        max_positions=cfg.positive_int("max_position_embeddings", 2048),
        num_layers=cfg.positive_int("num_hidden_layers", 44),
        num_heads=heads,
        hidden_size=hidden,
        intermediate_size=cfg.positive_int("intermediate_size", 24576),
        layer_norm_eps=cfg.positive_float("layer_norm_eps", 1e-5),
        activation=cfg.choice("hidden_act", "gelu", ACTIVATIONS),
        rotary=read_rotary(config, path, head_dim, theta_keys=("rotary_emb_base", "rope_theta"),
                           partial_keys=("rotary_pct", "partial_rotary_factor"), default_partial=0.25),
        parallel_residual=cfg.flag("use_parallel_residual", True),
        attention_bias=cfg.flag("attention_bias", True),
        tie_word_embeddings=cfg.flag("tie_word_embeddings", False),
        dtype=jnp.dtype(dtype).name,
    )


def load_gpt_neox_params(spec: GPTNeoXSpec, checkpoint: SafetensorsCheckpoint) -> dict:
    # GPTNeoXForCausalLM saves "gpt_neox.*" and the head at the top; a bare GPTNeoXModel has no prefix.
    w = WeightReader(checkpoint, ("gpt_neox.", ""), "embed_in.weight", spec.dtype)
    D, L, V, F, H, Dh = (spec.hidden_size, spec.num_layers, spec.vocab_size, spec.intermediate_size,
                         spec.num_heads, spec.head_dim)

    def linear(name, n_in, n_out, bias=True, kernel_view=None):
        p = {"kernel": w.stacked(f"layers.{{}}.{name}.weight", L, (n_out, n_in), transpose=True,
                                 view=kernel_view)}
        if bias:
            p["bias"] = w.stacked(f"layers.{{}}.{name}.bias", L, (n_out,))
        return p

    def norm(template, stacked=True):
        read = (lambda name, shape: w.stacked(name, L, shape)) if stacked else w.param
        return {"scale": read(template + ".weight", (D,)), "bias": read(template + ".bias", (D,))}

    # Output unit (h, part, d) of the fused projection is q/k/v (part 0/1/2) of head h.
    qkv = "layers.{}.attention.query_key_value"
    kernels = w.stacked_parts(qkv + ".weight", L, (3 * D, D), view=(D, H, 3, Dh), part_axis=2, transpose=True)
    layers = {name: {"kernel": kernel} for name, kernel in zip(("q_proj", "k_proj", "v_proj"), kernels)}
    if spec.attention_bias:
        biases = w.stacked_parts(qkv + ".bias", L, (3 * D,), view=(H, 3, Dh), part_axis=1)
        for name, bias in zip(("q_proj", "k_proj", "v_proj"), biases):
            layers[name]["bias"] = bias
    layers.update({
        "input_norm": norm("layers.{}.input_layernorm"),
        "o_proj": linear("attention.dense", D, D, spec.attention_bias, kernel_view=(H, Dh, D)),
        "post_attention_norm": norm("layers.{}.post_attention_layernorm"),
        "mlp_in": linear("mlp.dense_h_to_4h", D, F),
        "mlp_out": linear("mlp.dense_4h_to_h", F, D),
    })
    params = {
        "embed_in": w.param("embed_in.weight", (V, D)),
        "layers": layers,
        "final_norm": norm("final_layer_norm", stacked=False),
    }
    if not spec.tie_word_embeddings:
        # The hub's checkpoints call the head "embed_out"; transformers 5 calls it "lm_head" in memory.
        name = "embed_out.weight" if "embed_out.weight" in checkpoint else "lm_head.weight"
        head = WeightReader(checkpoint, ("",), name, spec.dtype)
        params["lm_head"] = head.param(name, (V, D))
    return params


def gpt_neox_init_cache(spec: GPTNeoXSpec, batch_size: int, max_len: int) -> dict:
    return init_kv_cache(spec.num_layers, batch_size, max_len, spec.num_heads, spec.head_dim, spec.dtype,
                         spec.max_positions, "positions it was trained for (max_position_embeddings)")


def gpt_neox_forward(spec: GPTNeoXSpec, params: dict, tokens: jax.Array, start: jax.Array,
                     cache: dict) -> tuple[jax.Array, dict]:
    """Logits [B, T, V] for ``tokens`` at positions ``start[b] + t``, and the updated cache."""
    check_forward_inputs(tokens, start, cache, spec.vocab_size)
    num_tokens = tokens.shape[1]
    act = ACTIVATIONS[spec.activation]
    eps = spec.layer_norm_eps
    token_positions = positions(start, num_tokens)
    h = params["embed_in"][tokens]

    def block(h, layer):
        p, k_cache, v_cache = layer
        x = layer_norm(h, p["input_norm"], eps)
        q = rotate(to_heads(x, p["q_proj"]), token_positions, spec.rotary)
        k = rotate(to_heads(x, p["k_proj"]), token_positions, spec.rotary)
        out, k_cache, v_cache = cached_attention(q, k, to_heads(x, p["v_proj"]), k_cache, v_cache, start,
                                                 spec.head_dim ** -0.5)
        attn = from_heads(out, p["o_proj"])
        mlp_input = h if spec.parallel_residual else h + attn
        mlp = dense(act(dense(layer_norm(mlp_input, p["post_attention_norm"], eps), p["mlp_in"])), p["mlp_out"])
        return h + attn + mlp, (k_cache, v_cache)

    h, (k_cache, v_cache) = jax.lax.scan(block, h, (params["layers"], cache["k"], cache["v"]))
    h = layer_norm(h, params["final_norm"], eps)
    head = params["embed_in"] if spec.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("btd,vd->btv", h, head, preferred_element_type=jnp.promote_types(h.dtype, jnp.float32))
    return logits, {"k": k_cache, "v": v_cache}
