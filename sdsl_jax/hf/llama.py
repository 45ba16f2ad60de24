"""The Llama architecture as a pure JAX function: Llama 2 and 3, Mistral, Qwen2/2.5 and Qwen3.

The architecture (Touvron et al. 2023, "LLaMA"): a token embedding, then
pre-norm blocks ``h += attn(rms_norm(h)); h += mlp(rms_norm(h))``, a final
RMS norm and an output head, untied or (TinyLlama-, SmolLM-, small-Qwen-style)
tied to the embedding. Attention is grouped-query (``num_key_value_heads``
key/value heads shared by groups of query heads) with rotary positions
(sdsl_jax/hf/rotary.py); the MLP is SwiGLU, ``down(act(gate(x)) * up(x))``
(Shazeer 2020). The families differ only in switches:

==========  ==========================  =========================================
model_type  biases                      other
==========  ==========================  =========================================
llama       ``attention_bias`` on q, k,  ``head_dim`` may differ from
            v and o; ``mlp_bias``        hidden / heads
mistral     none                         ``sliding_window`` (null in v0.2 onwards)
qwen2       always on q, k, v            sliding window only with
                                         ``use_sliding_window``
qwen3       ``attention_bias`` on q, k,  RMS norm of each query and key head
            v and o                      (``q_norm``, ``k_norm``) before rotary;
                                         ``head_dim`` 128 unless given
==========  ==========================  =========================================

A sliding window hides keys more than ``sliding_window - 1`` positions back;
`init_cache` refuses a cache longer than the window, within which windowed
and full causal attention agree. Mixture-of-experts variants are refused.

Torch ``Linear`` weights [out, in] are transposed to kernels [in, out] on
load, with the attention's heads axis apart: q, k, v kernels [D, H, Dh] and
biases [H, Dh], the output kernel [H, Dh, D] (sdsl_jax/hf/tensor_parallel.py
splits them by whole heads). Params: ``embed_tokens [V, D]``, ``norm``,
optional ``lm_head [V, D]`` and ``layers`` with every leaf stacked over a
leading layer axis.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.hf.kv_cache import cached_attention, check_forward_inputs, init_kv_cache, positions
from sdsl_jax.hf.layers import ACTIVATIONS, dense, from_heads, rms_norm, to_heads
from sdsl_jax.hf.layout import ConfigReader, WeightReader
from sdsl_jax.hf.rotary import RotarySpec, read_rotary, rotate
from sdsl_jax.hf.safetensors_io import SafetensorsCheckpoint
from sdsl_jax.hf.tensor_parallel import tensor_parallel_rules

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")

# transformers' defaults for keys a config.json omits, where the families differ.
_DEFAULTS = {
    "llama": dict(vocab_size=32000, intermediate_size=11008, max_position_embeddings=2048),
    "mistral": dict(vocab_size=32000, intermediate_size=14336, max_position_embeddings=4096 * 32,
                    num_key_value_heads=8, sliding_window=4096),
    "qwen2": dict(vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                  num_key_value_heads=32),
    "qwen3": dict(vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                  num_key_value_heads=32, head_dim=128),
}

# Keys of mixture-of-experts configs (Mixtral, Qwen-MoE, DeepSeek): a different MLP.
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")

PARAM_SHARDING = tensor_parallel_rules("layers", to_heads=("q_proj", "k_proj", "v_proj"), from_heads=("o_proj",),
                                       column=("gate_proj", "up_proj"), row=("down_proj",))


@dataclasses.dataclass(frozen=True)
class LlamaSpec:
    """The static shape and options of a Llama-architecture checkpoint, from its config.json."""

    family: str
    vocab_size: int
    max_positions: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    rms_norm_eps: float
    activation: str
    rotary: RotarySpec
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None
    tie_word_embeddings: bool
    dtype: str = "float32"


def _sliding_window(cfg: ConfigReader, family: str, num_layers: int) -> int | None:
    """The window that applies to some layer, or None for full attention everywhere."""
    config, path = cfg.config, cfg.path
    if family == "llama":
        return None
    if family == "mistral":
        return cfg.optional_positive_int("sliding_window", 4096)
    # Qwen: the window is off unless use_sliding_window; then on for the layers
    # layer_types marks "sliding_attention" (by default those from max_window_layers on).
    if not cfg.flag("use_sliding_window", False):
        return None
    window = cfg.optional_positive_int("sliding_window", 4096)
    layer_types = config.get("layer_types")
    if layer_types is None:
        first = config.get("max_window_layers", 28)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise CheckpointError(f"{path}: 'max_window_layers' must be a non-negative integer, got {first!r}")
        sliding = first < num_layers
    else:
        if (not isinstance(layer_types, list) or len(layer_types) != num_layers
                or not set(layer_types) <= {"full_attention", "sliding_attention"}):
            raise CheckpointError(f"{path}: 'layer_types' must list 'full_attention' or 'sliding_attention' for "
                                  f"each of the {num_layers} layers, got {layer_types!r}")
        sliding = "sliding_attention" in layer_types
    return window if sliding else None


def llama_spec(config: dict, path: str, dtype) -> LlamaSpec:
    """Read a llama, mistral, qwen2 or qwen3 config.json (keys as transformers writes them,
    its defaults where absent)."""
    cfg = ConfigReader(config, path)
    family = config.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(f"{path}: model_type {family!r} is not one of {', '.join(FAMILIES)}")
    defaults = _DEFAULTS[family]
    experts = [key for key in _EXPERT_KEYS if config.get(key)]
    if experts:
        raise CheckpointError(f"{path}: a mixture-of-experts config ({', '.join(experts)}), which is not supported")
    hidden = cfg.positive_int("hidden_size", 4096)
    heads = cfg.positive_int("num_attention_heads", 32)
    kv_heads = cfg.positive_int("num_key_value_heads", defaults.get("num_key_value_heads", heads))
    if heads % kv_heads:
        raise CheckpointError(f"{path}: num_attention_heads={heads} is not divisible by num_key_value_heads={kv_heads}")
    head_dim = cfg.optional_positive_int("head_dim", defaults.get("head_dim"))
    if head_dim is None:
        if hidden % heads:
            raise CheckpointError(f"{path}: hidden_size={hidden} is not divisible by num_attention_heads={heads} "
                                  "and no head_dim is given")
        head_dim = hidden // heads
    num_layers = cfg.positive_int("num_hidden_layers", 32)
    attention_bias = cfg.flag("attention_bias", False) if family in ("llama", "qwen3") else False
    return LlamaSpec(
        family=family,
        vocab_size=cfg.positive_int("vocab_size", defaults["vocab_size"]),
        max_positions=cfg.positive_int("max_position_embeddings", defaults["max_position_embeddings"]),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        intermediate_size=cfg.positive_int("intermediate_size", defaults["intermediate_size"]),
        rms_norm_eps=cfg.positive_float("rms_norm_eps", 1e-6),
        activation=cfg.choice("hidden_act", "silu", ACTIVATIONS),
        rotary=read_rotary(config, path, head_dim),
        qkv_bias=attention_bias or family == "qwen2",
        out_bias=attention_bias,
        mlp_bias=cfg.flag("mlp_bias", False) if family == "llama" else False,
        qk_norm=family == "qwen3",
        sliding_window=_sliding_window(cfg, family, num_layers),
        tie_word_embeddings=cfg.flag("tie_word_embeddings", False),
        dtype=jnp.dtype(dtype).name,
    )


def load_llama_params(spec: LlamaSpec, checkpoint: SafetensorsCheckpoint) -> dict:
    # ...ForCausalLM saves "model.*" and "lm_head.weight"; a bare ...Model has no prefix.
    w = WeightReader(checkpoint, ("model.", ""), "embed_tokens.weight", spec.dtype)
    D, L, V, F = spec.hidden_size, spec.num_layers, spec.vocab_size, spec.intermediate_size
    H, Hkv, Dh = spec.num_heads, spec.num_kv_heads, spec.head_dim

    def linear(name, n_in, n_out, bias, kernel_view=None, bias_view=None):
        p = {"kernel": w.stacked(f"layers.{{}}.{name}.weight", L, (n_out, n_in), transpose=True,
                                 view=kernel_view)}
        if bias:
            p["bias"] = w.stacked(f"layers.{{}}.{name}.bias", L, (n_out,), view=bias_view)
        return p

    def into_heads(name, heads):  # kernel [D, heads, Dh], bias [heads, Dh]
        return linear(name, D, heads * Dh, spec.qkv_bias, (D, heads, Dh), (heads, Dh))

    def norm(name, width):
        return {"scale": w.stacked(f"layers.{{}}.{name}.weight", L, (width,))}

    layers = {
        "input_norm": norm("input_layernorm", D),
        "q_proj": into_heads("self_attn.q_proj", H),
        "k_proj": into_heads("self_attn.k_proj", Hkv),
        "v_proj": into_heads("self_attn.v_proj", Hkv),
        "o_proj": linear("self_attn.o_proj", H * Dh, D, spec.out_bias, (H, Dh, D)),
        "post_attention_norm": norm("post_attention_layernorm", D),
        "gate_proj": linear("mlp.gate_proj", D, F, spec.mlp_bias),
        "up_proj": linear("mlp.up_proj", D, F, spec.mlp_bias),
        "down_proj": linear("mlp.down_proj", F, D, spec.mlp_bias),
    }
    if spec.qk_norm:
        layers["q_norm"] = norm("self_attn.q_norm", spec.head_dim)
        layers["k_norm"] = norm("self_attn.k_norm", spec.head_dim)
    params = {
        "embed_tokens": w.param("embed_tokens.weight", (V, D)),
        "layers": layers,
        "norm": {"scale": w.param("norm.weight", (D,))},
    }
    if not spec.tie_word_embeddings:
        head = WeightReader(checkpoint, ("",), "lm_head.weight", spec.dtype)
        params["lm_head"] = head.param("lm_head.weight", (V, D))
    return params


def llama_init_cache(spec: LlamaSpec, batch_size: int, max_len: int) -> dict:
    return init_kv_cache(spec.num_layers, batch_size, max_len, spec.num_kv_heads, spec.head_dim, spec.dtype,
                         spec.max_positions, "positions it was trained for (max_position_embeddings)",
                         spec.sliding_window)


def llama_forward(spec: LlamaSpec, params: dict, tokens: jax.Array, start: jax.Array,
                  cache: dict) -> tuple[jax.Array, dict]:
    """Logits [B, T, V] for ``tokens`` at positions ``start[b] + t``, and the updated cache."""
    check_forward_inputs(tokens, start, cache, spec.vocab_size)
    num_tokens = tokens.shape[1]
    act = ACTIVATIONS[spec.activation]
    eps = spec.rms_norm_eps
    token_positions = positions(start, num_tokens)
    h = params["embed_tokens"][tokens]

    def block(h, layer):
        p, k_cache, v_cache = layer
        x = rms_norm(h, p["input_norm"]["scale"], eps)
        q, k, v = to_heads(x, p["q_proj"]), to_heads(x, p["k_proj"]), to_heads(x, p["v_proj"])
        if spec.qk_norm:
            q = rms_norm(q, p["q_norm"]["scale"], eps)
            k = rms_norm(k, p["k_norm"]["scale"], eps)
        q = rotate(q, token_positions, spec.rotary)
        k = rotate(k, token_positions, spec.rotary)
        out, k_cache, v_cache = cached_attention(q, k, v, k_cache, v_cache, start, spec.head_dim ** -0.5)
        h = h + from_heads(out, p["o_proj"])
        x = rms_norm(h, p["post_attention_norm"]["scale"], eps)
        h = h + dense(act(dense(x, p["gate_proj"])) * dense(x, p["up_proj"]), p["down_proj"])
        return h, (k_cache, v_cache)

    h, (k_cache, v_cache) = jax.lax.scan(block, h, (params["layers"], cache["k"], cache["v"]))
    h = rms_norm(h, params["norm"]["scale"], eps)
    head = params["embed_tokens"] if spec.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("btd,vd->btv", h, head, preferred_element_type=jnp.promote_types(h.dtype, jnp.float32))
    return logits, {"k": k_cache, "v": v_cache}
