"""GPT-2 as a pure JAX function over a Hugging Face checkpoint's weights.

The architecture (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners"): token plus learned absolute position embeddings, then
pre-norm blocks ``h += attn(ln_1(h)); h += mlp(ln_2(h))``, a final layer norm,
and an output head tied to the token embedding unless the config unties it.
Weights follow transformers' names; its ``Conv1D`` stores kernels as
[in, out], so they need no transpose. The fused ``c_attn`` projection
(outputs: all queries, then all keys, then all values) is cut at load time
into separate q, k and v kernels [D, H, Dh] (biases [H, Dh]), and the output
kernel is [H, Dh, D], so that a tensor-parallel split over heads is the same
as every other family's. Positions come from ``start[b] + t``.

Params pytree: ``wte [V, D]``, ``wpe [P, D]``, ``ln_f``, optional ``lm_head
[V, D]``, and ``blocks`` with every leaf stacked over a leading layer axis.
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

PARAM_SHARDING = tensor_parallel_rules("blocks", to_heads=("q_proj", "k_proj", "v_proj"), from_heads=("attn_out",),
                                       column=("mlp_in",), row=("mlp_out",))


@dataclasses.dataclass(frozen=True)
class GPT2Spec:
    """The static shape and options of a GPT-2 checkpoint, from its config.json."""

    vocab_size: int
    max_positions: int
    num_layers: int
    num_heads: int
    hidden_size: int
    inner_size: int
    layer_norm_eps: float
    activation: str
    scale_attn_weights: bool
    scale_attn_by_inverse_layer_idx: bool
    tie_word_embeddings: bool
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def gpt2_spec(config: dict, path: str, dtype) -> GPT2Spec:
    """Read a GPT-2 config.json (keys as transformers writes them, its defaults where absent)."""
    cfg = ConfigReader(config, path)
    hidden = cfg.positive_int("n_embd", 768)
    heads = cfg.positive_int("n_head", 12)
    if hidden % heads:
        raise CheckpointError(f"{path}: n_embd={hidden} is not divisible by n_head={heads}")
    inner = config.get("n_inner")
    inner = 4 * hidden if inner is None else cfg.positive_int("n_inner")
    spec = GPT2Spec(
        vocab_size=cfg.positive_int("vocab_size", 50257),
        max_positions=cfg.positive_int("n_positions", 1024),
        num_layers=cfg.positive_int("n_layer", 12),
        num_heads=heads,
        hidden_size=hidden,
        inner_size=inner,
        layer_norm_eps=cfg.positive_float("layer_norm_epsilon", 1e-5),
        activation=cfg.choice("activation_function", "gelu_new", ACTIVATIONS),
        scale_attn_weights=cfg.flag("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=cfg.flag("scale_attn_by_inverse_layer_idx", False),
        tie_word_embeddings=cfg.flag("tie_word_embeddings", True),
        dtype=jnp.dtype(dtype).name,
    )
    return spec


def load_gpt2_params(spec: GPT2Spec, checkpoint: SafetensorsCheckpoint) -> dict:
    # Saved from GPT2LMHeadModel the names carry "transformer."; from GPT2Model
    # (as the original OpenAI conversions on the hub are) they do not.
    w = WeightReader(checkpoint, ("transformer.", ""), "wte.weight", spec.dtype)
    D, L, V, F, H, Dh = (spec.hidden_size, spec.num_layers, spec.vocab_size, spec.inner_size, spec.num_heads,
                         spec.head_dim)

    def norm(template):
        return {"scale": w.stacked(template + ".weight", L, (D,)), "bias": w.stacked(template + ".bias", L, (D,))}

    def conv1d(template, n_in, n_out, kernel_view=None):
        return {"kernel": w.stacked(template + ".weight", L, (n_in, n_out), view=kernel_view),
                "bias": w.stacked(template + ".bias", L, (n_out,))}

    # Output unit (part, h, d) of the fused projection is q/k/v (part 0/1/2) of head h.
    qkv_kernels = w.stacked_parts("h.{}.attn.c_attn.weight", L, (D, 3 * D), view=(D, 3, H, Dh), part_axis=1)
    qkv_biases = w.stacked_parts("h.{}.attn.c_attn.bias", L, (3 * D,), view=(3, H, Dh), part_axis=0)
    params = {
        "wte": w.param("wte.weight", (V, D)),
        "wpe": w.param("wpe.weight", (spec.max_positions, D)),
        "blocks": {
            "ln_1": norm("h.{}.ln_1"),
            **{name: {"kernel": kernel, "bias": bias}
               for name, kernel, bias in zip(("q_proj", "k_proj", "v_proj"), qkv_kernels, qkv_biases)},
            "attn_out": conv1d("h.{}.attn.c_proj", D, D, kernel_view=(H, Dh, D)),
            "ln_2": norm("h.{}.ln_2"),
            "mlp_in": conv1d("h.{}.mlp.c_fc", D, F),
            "mlp_out": conv1d("h.{}.mlp.c_proj", F, D),
        },
        "ln_f": {"scale": w.param("ln_f.weight", (D,)), "bias": w.param("ln_f.bias", (D,))},
    }
    if not spec.tie_word_embeddings:
        # The head sits outside the "transformer." prefix.
        head = WeightReader(checkpoint, ("",), "lm_head.weight", spec.dtype)
        params["lm_head"] = head.param("lm_head.weight", (V, D))
    return params


def gpt2_init_cache(spec: GPT2Spec, batch_size: int, max_len: int) -> dict:
    return init_kv_cache(spec.num_layers, batch_size, max_len, spec.num_heads, spec.head_dim,
                         spec.dtype, spec.max_positions)


def gpt2_forward(spec: GPT2Spec, params: dict, tokens: jax.Array, start: jax.Array,
                 cache: dict) -> tuple[jax.Array, dict]:
    """Logits [B, T, V] for ``tokens`` at positions ``start[b] + t``, and the updated cache."""
    check_forward_inputs(tokens, start, cache, spec.vocab_size)
    num_tokens = tokens.shape[1]
    act = ACTIVATIONS[spec.activation]
    h = params["wte"][tokens] + params["wpe"][positions(start, num_tokens)]
    base_scale = 1.0 / math.sqrt(spec.head_dim) if spec.scale_attn_weights else 1.0

    def block(h, layer):
        p, k_cache, v_cache, index = layer
        x = layer_norm(h, p["ln_1"], spec.layer_norm_eps)
        q, k, v = to_heads(x, p["q_proj"]), to_heads(x, p["k_proj"]), to_heads(x, p["v_proj"])
        scale = base_scale / (index + 1.0) if spec.scale_attn_by_inverse_layer_idx else base_scale
        out, k_cache, v_cache = cached_attention(q, k, v, k_cache, v_cache, start, scale)
        h = h + from_heads(out, p["attn_out"])
        x = layer_norm(h, p["ln_2"], spec.layer_norm_eps)
        h = h + dense(act(dense(x, p["mlp_in"])), p["mlp_out"])
        return h, (k_cache, v_cache)

    layer_index = jnp.arange(spec.num_layers, dtype=jnp.float32)
    h, (k_cache, v_cache) = jax.lax.scan(block, h, (params["blocks"], cache["k"], cache["v"], layer_index))
    h = layer_norm(h, params["ln_f"], spec.layer_norm_eps)
    head = params["wte"] if spec.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("btd,vd->btv", h, head, preferred_element_type=jnp.promote_types(h.dtype, jnp.float32))
    return logits, {"k": k_cache, "v": v_cache}
