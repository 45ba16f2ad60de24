"""Llama, Mistral, Qwen2, Qwen3 and GPT-NeoX checkpoints loaded into JAX agree with transformers.

Each variant is the configuration real checkpoints of the family use, at a
tiny size: built with transformers, its weights randomised far from the
library's initialisation (which sets biases to 0 and norm scales to 1 and
would hide a missing bias or scale), saved with ``save_pretrained`` as
safetensors and loaded with ours. References are the torch models' own
logits in float32, each row run on its own at its own length.

One test per variant runs the loop's pattern (see CALLS): a prefill of
right-padded prompts of different lengths (a full forward from an empty
cache), then chunks fed at per-row start positions, ending in junk (rejected
drafts) that the next call writes over. One compilation per variant.
"""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from sdsl_jax.hf import CheckpointError, load_hf_decoder
from sdsl_jax.hf.gpt_neox import gpt_neox_spec
from sdsl_jax.hf.llama import llama_spec

LOGIT_ATOL = 1e-4
SEQ_LEN = 24  # the cache, and the torch reference sequence
CHUNK = 8  # tokens per call: one compilation per variant

# The loop's pattern, a call at a time: (per-row start, per-row count of real tokens). A call
# feeds CHUNK tokens to every row; the first `count` are the sequence's, the rest junk (padding
# after a short prompt, or drafted tokens that are then rejected), and the row's next call starts
# right after its real ones, over the junk. The first call is the prefill of prompts of three
# lengths; a count of 0 is a row that keeps nothing.
CALLS = [
    ([0, 0, 0], [8, 5, 2]),
    ([8, 5, 2], [3, 8, 0]),
    ([11, 13, 2], [5, 3, 8]),
    ([16, 16, 10], [8, 8, 6]),
]
BATCH = len(CALLS[0][0])

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=256,
             max_position_embeddings=64)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               # With head_dim 16 and theta 1e4 the wavelengths 2 pi 10^(i/2) fall on all
               # three sides of the band [64 / 4, 64 / 1]: kept, interpolated and divided.
               "original_max_position_embeddings": 64}

VARIANTS = {
    # Llama 3: grouped-query attention, untied head, llama3 rope scaling.
    "llama": ("llama", dict(SMALL, num_key_value_heads=2, rope_scaling=LLAMA3_ROPE, max_position_embeddings=128)),
    # Qwen2/2.5: bias on q, k and v only; tied head as in the 0.5B/1.5B models.
    "qwen2": ("qwen2", dict(SMALL, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    # Qwen3: RMS norm of each query and key head before rotary; head_dim not hidden / heads.
    "qwen3": ("qwen3", dict(SMALL, num_key_value_heads=2, head_dim=24)),
    # Pythia: parallel residual, a quarter of each head rotary, untied embed_out.
    "gpt_neox": ("gpt_neox", dict(SMALL, rotary_pct=0.25)),
    # TinyLlama / SmolLM: tied head; plus the remaining Llama switches (linear rope
    # scaling, attention and MLP biases, an explicit head_dim, multi-head attention).
    "llama_tied": ("llama", dict(SMALL, num_key_value_heads=4, head_dim=8, tie_word_embeddings=True,
                                 attention_bias=True, mlp_bias=True, hidden_act="gelu_pytorch_tanh",
                                 rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=500.0)),
    # Mistral v0.1: a sliding window exactly as long as the cache.
    "mistral": ("mistral", dict(SMALL, num_key_value_heads=1, sliding_window=SEQ_LEN)),
    # GPT-NeoX with a sequential residual, half of each head rotary, tied head.
    "gpt_neox_sequential": ("gpt_neox", dict(SMALL, rotary_pct=0.5, use_parallel_residual=False,
                                             tie_word_embeddings=True, rotary_emb_base=300)),
}
FAST = ["llama", "qwen2", "gpt_neox"]  # the families most used; one compilation each

MODELS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "gpt_neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM),
}


def _build_torch_model(model_type, options, seed):
    torch.manual_seed(seed)
    config_class, model_class = MODELS[model_type]
    model = model_class(config_class(**options)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # RMS and layer norm scales (and layer norm biases)
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            else:
                # Large enough for logits of order 5, small enough that float32
                # rounding stays far below the tolerance.
                p.normal_(0.0, 0.15)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (directory, torch model, tokens [B, SEQ_LEN], reference logits [B, SEQ_LEN, V])."""
    out = {}
    for seed, (name, (model_type, options)) in enumerate(VARIANTS.items()):
        model = _build_torch_model(model_type, options, seed)
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory, safe_serialization=True)
        tokens = np.random.default_rng(seed).integers(0, options["vocab_size"], (BATCH, SEQ_LEN))
        with torch.no_grad():
            reference = model(torch.as_tensor(tokens)).logits.numpy()
        out[name] = (directory, model, tokens, reference)
    return out


@functools.partial(jax.jit, static_argnums=0)
def _jit_forward(forward, params, tokens, start, cache):
    return forward(params, tokens, start, cache)


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _run_calls(decoder, tokens, rng, calls=CALLS):
    """[(starts, counts, logits [B, CHUNK, V])] for each call, junk drawn from ``rng``."""
    cache = decoder.init_cache(BATCH, SEQ_LEN)
    out = []
    for starts, counts in calls:
        chunk = rng.integers(0, decoder.vocab_size, (BATCH, CHUNK))
        for b, (s, n) in enumerate(zip(starts, counts)):
            chunk[b, :n] = tokens[b, s:s + n]
        logits, cache = _jit_forward(decoder.forward, decoder.params, jnp.asarray(chunk, jnp.int32),
                                     jnp.asarray(starts, jnp.int32), cache)
        out.append((starts, counts, np.asarray(logits)))
    return out


def _check_family(name, checkpoints):
    directory, model, tokens, reference = checkpoints[name]
    decoder = load_hf_decoder(directory)
    # Random weights far from init give logits of order 1-10, so 1e-4 is a real test.
    assert np.abs(reference).max() > 2.0
    (starts, counts, prefill), *decode = _run_calls(decoder, tokens, np.random.default_rng(1000))
    assert prefill.dtype == np.float32 and prefill.shape == (BATCH, CHUNK, 256)
    for b, length in enumerate(counts):
        with torch.no_grad():  # the prompt alone, at its own length: no padding anywhere
            alone = model(torch.as_tensor(tokens[b:b + 1, :length])).logits.numpy()[0]
        assert _max_diff(prefill[b, :length], alone) < LOGIT_ATOL, (name, "prefill", b)
    # Logits at a real token whose whole prefix is real are the sequence's.
    worst = max(_max_diff(logits[b, :n], reference[b, s:s + n])
                for starts, counts, logits in decode for b, (s, n) in enumerate(zip(starts, counts)) if n)
    assert worst < LOGIT_ATOL, (name, "cached", worst)
    # model.parameters() yields a tied head once, as num_params should count it.
    assert decoder.num_params == sum(p.numel() for p in model.parameters())
    assert decoder.vocab_size == model.config.vocab_size and decoder.dtype == "float32"


@pytest.mark.parametrize("name", FAST)
def test_logits_match_transformers_prefill_and_cached(name, checkpoints):
    _check_family(name, checkpoints)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in VARIANTS if name not in FAST])
def test_more_variants_match_transformers(name, checkpoints):
    _check_family(name, checkpoints)


@pytest.mark.slow
def test_bfloat16_compute_stays_close(checkpoints):
    directory, _, tokens, reference = checkpoints["qwen2"]
    decoder = load_hf_decoder(directory, dtype=jnp.bfloat16)
    assert decoder.dtype == "bfloat16"
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(decoder.params))
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(decoder.init_cache(1, SEQ_LEN)))
    (_, _, logits), = _run_calls(decoder, tokens, np.random.default_rng(0), CALLS[:1])
    assert logits.dtype == np.float32
    logits = logits[0]  # row 0 is all real tokens
    expected = reference[0, :CHUNK]
    # bfloat16 keeps 8 significant bits: a few percent of the logit scale, and the same top token.
    assert _max_diff(logits, expected) < 0.05 * np.abs(expected).max()
    assert np.mean(np.argmax(logits, -1) == np.argmax(expected, -1)) >= 0.9


def test_compute_dtype_is_checked(checkpoints):
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, got int8"):
        load_hf_decoder(checkpoints["qwen2"][0], dtype=jnp.int8)


# --- tensor-parallel annotations -------------------------------------------------------

def _leaf_paths(tree):
    return {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _first_match(rules, path):
    return next((spec for pattern, spec in rules if re.fullmatch(pattern, path)), None)


# What each family splits, written out here rather than derived from the rules: the projections into
# attention heads and out of them (split by heads), and the MLP's column-parallel (output axis) and
# row-parallel (input axis) projections of the layer stack.
SPLITS = {
    "llama": ("layers", ("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)),
    "gpt_neox": ("layers", ("q_proj", "k_proj", "v_proj"), ("o_proj",), ("mlp_in",), ("mlp_out",)),
    "gpt2": ("blocks", ("q_proj", "k_proj", "v_proj"), ("attn_out",), ("mlp_in",), ("mlp_out",)),
    "opt": ("layers", ("q_proj", "k_proj", "v_proj"), ("out_proj",), ("fc1",), ("fc2",)),
}


@pytest.fixture(scope="module")
def gpt2_and_opt(tmp_path_factory):
    out = {}
    for name, model in [
        ("gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4,
                                                                      vocab_size=64, n_positions=16,
                                                                      bos_token_id=0, eos_token_id=0))),
        ("opt", transformers.OPTForCausalLM(transformers.OPTConfig(hidden_size=32, num_hidden_layers=2,
                                                                   num_attention_heads=4, ffn_dim=48,
                                                                   vocab_size=64, max_position_embeddings=16))),
    ]:
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory, safe_serialization=True)
        out[name] = (directory, model)
    return out


def test_sharding_rules_match_exactly_the_split_leaves(checkpoints, gpt2_and_opt):
    loaded = {name: (directory, VARIANTS[name][0], model) for name, (directory, model, *_) in checkpoints.items()}
    loaded.update({name: (directory, name, model) for name, (directory, model) in gpt2_and_opt.items()})
    for name, (directory, model_type, model) in loaded.items():
        decoder = load_hf_decoder(directory)
        stack, to_heads, from_heads, column, row = SPLITS[
            "llama" if model_type in ("mistral", "qwen2", "qwen3") else model_type]
        config = model.config
        heads = config.num_attention_heads if hasattr(config, "num_attention_heads") else config.n_head
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        for path, leaf in _leaf_paths(decoder.params).items():
            spec = _first_match(decoder.param_sharding, path)
            parts = path.split("/")
            block = len(parts) == 3 and parts[0] == stack
            if block and parts[1] in to_heads:
                # kernel [L, D, H, Dh], bias [L, H, Dh]: split by heads.
                expected = (None, None, "model", None) if parts[2] == "kernel" else (None, "model", None)
            elif block and parts[1] in from_heads and parts[2] == "kernel":
                expected = (None, "model", None, None)  # [L, H, Dh, D]
            elif block and parts[1] in column:
                expected = (None, None, "model") if parts[2] == "kernel" else (None, "model")
            elif block and parts[1] in row and parts[2] == "kernel":
                expected = (None, "model", None)
            else:
                expected = None  # replicated
            assert spec == expected, (name, path, spec)
            if spec is not None:
                assert len(spec) == leaf.ndim, (name, path)
                # The split axis of an attention leaf is its heads axis: one index a head.
                split_size = leaf.shape[spec.index("model")]
                if parts[1] in ("k_proj", "v_proj"):
                    assert split_size == kv_heads, (name, path, leaf.shape)
                elif parts[1] in to_heads + from_heads:
                    assert split_size == heads, (name, path, leaf.shape)
        # Every rule names a real leaf (a bias rule may find none in a bias-free family).
        paths = _leaf_paths(decoder.params)
        for pattern, _ in decoder.param_sharding:
            matched = [p for p in paths if re.fullmatch(pattern, p)]
            assert matched or pattern.endswith("/bias"), (name, pattern)
        cache = decoder.init_cache(2, 8)
        for path, leaf in _leaf_paths(cache).items():
            spec = _first_match(decoder.cache_sharding, path)
            assert spec is not None and len(spec) == leaf.ndim == 5
            assert leaf.shape[spec.index("model")] == kv_heads, (name, path, leaf.shape)


# --- configurations in both forms, and what is refused ----------------------------------------

def _config(checkpoints, name):
    return json.loads((checkpoints[name][0] / "config.json").read_text())


def test_old_config_forms_read_the_same(checkpoints):
    """transformers 5 writes rope_parameters; hub configs of earlier years rope_scaling and
    rope_theta at the top (GPT-NeoX: rotary_emb_base and rotary_pct)."""
    new = _config(checkpoints, "llama")
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old.update(rope_theta=new["rope_parameters"]["rope_theta"],
               rope_scaling={k: v for k, v in new["rope_parameters"].items() if k != "rope_theta"})
    assert llama_spec(old, "old", "float32") == llama_spec(new, "new", "float32")
    assert llama_spec(new, "new", "float32").rotary.scaling == "llama3"
    # The "type" spelling of the earliest scaled checkpoints.
    linear = _config(checkpoints, "llama_tied")
    assert linear["rope_parameters"]["rope_type"] == "linear"
    legacy = {k: v for k, v in linear.items() if k != "rope_parameters"}
    legacy.update(rope_theta=500.0, rope_scaling={"type": "linear", "factor": 2.0})
    assert llama_spec(legacy, "old", "float32") == llama_spec(linear, "new", "float32")
    new = _config(checkpoints, "gpt_neox_sequential")
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old.update(rotary_emb_base=300, rotary_pct=0.5)
    assert gpt_neox_spec(old, "old", "float32") == gpt_neox_spec(new, "new", "float32")
    assert gpt_neox_spec(new, "new", "float32").rotary.rotary_dim == 8
    # Pythia's config.json, with neither key, gets a quarter of each head and theta 1e4.
    bare = {k: v for k, v in new.items() if k != "rope_parameters"}
    assert gpt_neox_spec(bare, "bare", "float32").rotary.rotary_dim == 4


def _write(checkpoints, name, tmp_path, **changes):
    directory = checkpoints[name][0]
    for path in directory.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    config = _config(checkpoints, name)
    for key, value in changes.items():
        if value is None and key.startswith("drop_"):
            config.pop(key.removeprefix("drop_"), None)
        else:
            config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
                                  {"rope_type": "dynamic", "factor": 2.0},
                                  {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}])
def test_unsupported_rope_types_are_refused(checkpoints, tmp_path, rope):
    _write(checkpoints, "llama", tmp_path, rope_parameters=rope)
    with pytest.raises(CheckpointError, match=rf"config\.json: rope_parameters has rope type '{rope['rope_type']}', "
                                              r"which is not supported \(supported: default, linear, llama3\)"):
        load_hf_decoder(tmp_path)


def test_old_style_unsupported_rope_is_refused(checkpoints, tmp_path):
    _write(checkpoints, "gpt_neox", tmp_path, drop_rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2})
    with pytest.raises(CheckpointError, match="rope_scaling has rope type 'dynamic'"):
        load_hf_decoder(tmp_path)


def test_sliding_windows(checkpoints, tmp_path):
    decoder = load_hf_decoder(checkpoints["mistral"][0])  # window = SEQ_LEN
    decoder.init_cache(1, SEQ_LEN)
    with pytest.raises(ValueError, match=rf"max_len={SEQ_LEN + 1} exceeds the model's sliding attention window "
                                         rf"of {SEQ_LEN} positions.*use max_len <= {SEQ_LEN}"):
        decoder.init_cache(1, SEQ_LEN + 1)
    # Mistral v0.2 onwards writes null: full attention up to max_position_embeddings.
    _write(checkpoints, "mistral", tmp_path, sliding_window=None)
    assert load_hf_decoder(tmp_path).init_cache(1, 64)["k"].shape[2] == 64
    with pytest.raises(ValueError, match="max_len=65 exceeds the model's 64 positions it was trained for"):
        load_hf_decoder(tmp_path).init_cache(1, 65)
    # Qwen2/3 configs carry a sliding_window that applies only with use_sliding_window.
    config = _config(checkpoints, "qwen2")
    assert llama_spec({**config, "sliding_window": 4, "use_sliding_window": False}, "q", "float32").sliding_window is None
    on = {**config, "sliding_window": 4, "use_sliding_window": True, "max_window_layers": 1}
    on.pop("layer_types", None)
    assert llama_spec(on, "q", "float32").sliding_window == 4
    assert llama_spec({**on, "max_window_layers": 2}, "q", "float32").sliding_window is None  # no layer slides
    assert llama_spec({**on, "layer_types": ["sliding_attention", "full_attention"]}, "q",
                      "float32").sliding_window == 4


@pytest.mark.parametrize("name, changes, message", [
    # The checkpoint's k_proj holds 2 heads of 16.
    ("llama", dict(num_key_value_heads=4), r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(32, 64\), "
                                            r"config\.json implies \(64, 64\)"),
    ("llama", dict(num_key_value_heads=3), "num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    # Llama weights under a Qwen2 config: no q, k, v bias.
    ("llama", dict(model_type="qwen2"), r"missing tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"),
    # Qwen3 weights under a Llama config: the q/k norms would be ignored.
    ("qwen3", dict(model_type="llama"), r"tensors that a llama model .* does not use \(4 in all\): "
                                        r"'model\.layers\.0\.self_attn\.k_norm\.weight'"),
    ("qwen2", dict(num_experts=8), r"a mixture-of-experts config \(num_experts\)"),
    ("qwen2", dict(hidden_act="relu2"), "unsupported hidden_act 'relu2'"),
    ("gpt_neox", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.1}),
     "rotates 1 channels; an even number of at least 2 is needed"),
    ("gpt_neox", dict(head_dim=32), "head_dim=32 differs from hidden_size / num_attention_heads = 16"),
])
def test_configs_that_do_not_fit_are_refused(checkpoints, tmp_path, name, changes, message):
    _write(checkpoints, name, tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_hf_decoder(tmp_path)
