"""GPT-2 and OPT checkpoints loaded into JAX agree with transformers' PyTorch models.

Each architecture variant real checkpoints use is built at a tiny size with
transformers, its weights randomised far from the library's initialisation
(which sets biases to 0 and layer-norm scales to 1 and so would hide a
missing bias or scale), saved with ``save_pretrained(safe_serialization=True)``
and loaded with ours. References are the torch models' logits from the same
(float32) weights computed in float64: the comparison then measures our float32
error alone (~5e-6 here), not also torch's own float32 rounding, which with
these large random weights reached 4e-5 in one of three suite runs (its order
of summation can change between runs on a CPU).
"""

import copy
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from sdsl_jax.hf import CheckpointError, load_hf_decoder, load_hf_tokenizer
from sdsl_jax.hf.safetensors_io import SafetensorsFile

LOGIT_ATOL = 1e-4
BATCH, SEQ_LEN = 3, 14

VARIANTS = {
    # GPT-2 as released: tied head, tanh GELU.
    "gpt2": ("gpt2", dict(n_embd=48, n_layer=2, n_head=4, vocab_size=211, n_positions=40)),
    # The options a GPT-2-architecture config may set.
    "gpt2_options": ("gpt2", dict(n_embd=32, n_layer=3, n_head=2, vocab_size=150, n_positions=24, n_inner=80,
                                  activation_function="gelu", scale_attn_by_inverse_layer_idx=True,
                                  layer_norm_epsilon=1e-3, tie_word_embeddings=False)),
    # OPT-125m and 1.3b..66b: pre-norm with a final layer norm.
    "opt_pre_norm": ("opt", dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
                                 vocab_size=203, max_position_embeddings=40)),
    # OPT-350m: post-norm, embeddings narrower than the model behind project_in/out.
    "opt_350m_style": ("opt", dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
                                   vocab_size=203, max_position_embeddings=40, do_layer_norm_before=False,
                                   word_embed_proj_dim=24)),
    # The remaining OPTConfig switches.
    "opt_options": ("opt", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                                vocab_size=120, max_position_embeddings=20, enable_bias=False,
                                layer_norm_elementwise_affine=False, tie_word_embeddings=False,
                                activation_function="gelu_new")),
}


def _build_torch_model(model_type, options, seed):
    torch.manual_seed(seed)
    if model_type == "gpt2":
        config = transformers.GPT2Config(**options, bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.OPTConfig(**options, bos_token_id=2, eos_token_id=2, pad_token_id=1)
        model = transformers.OPTForCausalLM(config)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:  # layer-norm scale and bias
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return model


def _torch_logits(model, tokens):
    """The model's logits computed in float64 from its weights (module doc), a float64 array."""
    with torch.no_grad():
        exact = copy.deepcopy(model).double()
        return exact(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (directory, torch model, tokens [B, L], reference logits [B, L, V])."""
    out = {}
    for seed, (name, (model_type, options)) in enumerate(VARIANTS.items()):
        model = _build_torch_model(model_type, options, seed)
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory, safe_serialization=True)
        tokens = np.random.default_rng(seed).integers(0, model.config.vocab_size, (BATCH, SEQ_LEN))
        out[name] = (directory, model, tokens, _torch_logits(model, tokens))
    return out


@pytest.fixture(scope="module")
def decoders(checkpoints):
    return {name: load_hf_decoder(directory) for name, (directory, *_rest) in checkpoints.items()}


@functools.partial(jax.jit, static_argnums=0)
def _jit_forward(forward, params, tokens, start, cache):
    """As the speculative loop compiles a Decoder: forward is a static argument, so
    decoders with equal configs (a reload, a sharded copy) share one compilation."""
    return forward(params, tokens, start, cache)


def _logits(decoder, tokens):
    """Full-sequence logits from an empty cache, compiled."""
    tokens = jnp.asarray(tokens, jnp.int32)
    cache = decoder.init_cache(tokens.shape[0], tokens.shape[1])
    return _jit_forward(decoder.forward, decoder.params, tokens, jnp.zeros(tokens.shape[0], jnp.int32), cache)[0]


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_full_sequence_logits_match_transformers(name, checkpoints, decoders):
    directory, model, tokens, reference = checkpoints[name]
    decoder = decoders[name]
    # Random weights far from init give logits of order 1-10, so 1e-4 is a real test.
    assert np.abs(reference).max() > 1.0
    jitted = _logits(decoder, tokens)
    assert jitted.shape == reference.shape and jitted.dtype == jnp.float32
    assert _max_diff(jitted, reference) < LOGIT_ATOL
    assert decoder.vocab_size == model.config.vocab_size
    # model.parameters() yields a tied head once, as num_params should count it.
    assert decoder.num_params == sum(p.numel() for p in model.parameters())
    assert decoder.name == directory.name


@pytest.mark.slow
def test_eager_forward_matches_transformers(checkpoints, decoders):
    """Op by op, as XLA may fuse and reassociate differently under jit (one variant:
    eager dispatch compiles every op and is slow)."""
    _, _, tokens, reference = checkpoints["opt_350m_style"]
    decoder = decoders["opt_350m_style"]
    eager, _ = decoder.forward(decoder.params, jnp.asarray(tokens, jnp.int32), jnp.zeros(BATCH, jnp.int32),
                               decoder.init_cache(BATCH, SEQ_LEN))
    assert _max_diff(eager, reference) < LOGIT_ATOL


# Each call: (per-row start, per-row "junk" flag). A junk row feeds tokens that are not
# the sequence's (a rejected draft); a later call rewinds it and overwrites them with the
# real ones. Rows sit at different positions from the second call on.
# Two chunk lengths only, as each length is a compilation.
CALLS = [
    ([0, 0, 0], [False, False, False], 4),   # prefill
    ([4, 4, 4], [False, True, False], 4),    # row 1 drafts junk
    ([8, 4, 8], [False, False, True], 1),    # row 1 rewinds over its junk; row 2 drafts junk
    ([9, 5, 8], [False, False, False], 4),   # row 2 rewinds; rows now at three positions
    ([13, 9, 12], [False, False, False], 1),  # single tokens up to the cache's end
]


# The cache code is shared; these cover both position schemes (OPT's offset of 2) and both
# block orders. The other variants differ only inside a block, which the full-sequence test covers.
@pytest.mark.parametrize("name", ["gpt2", "opt_pre_norm", "opt_350m_style"])
@pytest.mark.slow
def test_cached_decoding_with_per_row_starts_and_rollback(name, checkpoints, decoders):
    _, model, tokens, reference = checkpoints[name]
    decoder = decoders[name]
    cache = decoder.init_cache(BATCH, SEQ_LEN)
    rng = np.random.default_rng(100)
    worst = 0.0
    for starts, junk, length in CALLS:
        chunk = np.stack([tokens[b, s:s + length] for b, s in enumerate(starts)])
        for b in np.flatnonzero(junk):
            chunk[b] = rng.integers(0, decoder.vocab_size, length)
        logits, cache = _jit_forward(decoder.forward, decoder.params, jnp.asarray(chunk, jnp.int32),
                                     jnp.asarray(starts, jnp.int32), cache)
        logits = np.asarray(logits)
        for b, s in enumerate(starts):
            if not junk[b]:
                worst = max(worst, _max_diff(logits[b], reference[b, s:s + length]))
    assert worst < LOGIT_ATOL


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_half_precision_files_are_read_exactly(storage, checkpoints, tmp_path):
    """Weights stored in 16 bits and loaded as float32 give the logits of the torch model
    with the same 16-bit weights (computed in float64, as every reference here)."""
    directory, model, tokens, _ = checkpoints["opt_350m_style"]
    stored = getattr(torch, storage)
    half = transformers.OPTForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    half.to(stored).save_pretrained(tmp_path, safe_serialization=True)
    reference = _torch_logits(half.to(stored).to(torch.float32), tokens)
    decoder = load_hf_decoder(tmp_path)
    assert _max_diff(_logits(decoder, tokens), reference) < LOGIT_ATOL


@pytest.mark.slow
def test_bfloat16_compute_stays_close(checkpoints, decoders):
    directory, _, tokens, reference = checkpoints["gpt2"]
    decoder = load_hf_decoder(directory, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(decoder.params))
    assert decoder.init_cache(BATCH, SEQ_LEN)["k"].dtype == jnp.bfloat16
    logits = _logits(decoder, tokens)
    assert logits.dtype == jnp.float32
    logits = np.asarray(logits)
    # bfloat16 keeps 8 significant bits: a few percent of the logit scale, and the same top token.
    assert _max_diff(logits, reference) < 0.05 * np.abs(reference).max()
    assert np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)) > 0.9


def test_sharded_checkpoint(checkpoints, tmp_path):
    directory, model, tokens, reference = checkpoints["opt_pre_norm"]
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    decoder = load_hf_decoder(tmp_path, name="sharded")
    assert _max_diff(_logits(decoder, tokens), reference) < LOGIT_ATOL
    assert decoder.name == "sharded"


def test_gpt2model_names_without_prefix(checkpoints, tmp_path):
    """The hub's original GPT-2 uploads are GPT2Model weights: no "transformer." prefix,
    and the causal-mask buffers "h.N.attn.bias" saved alongside."""
    from safetensors.numpy import load_file, save_file

    directory, _, tokens, reference = checkpoints["gpt2"]
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(directory / "model.safetensors").items()}
    mask = np.tril(np.ones((40, 40), np.float32))[None, None]
    tensors.update({f"h.{i}.attn.bias": mask for i in range(2)})
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    decoder = load_hf_decoder(tmp_path)
    assert _max_diff(_logits(decoder, tokens), reference) < LOGIT_ATOL


def test_forward_and_init_cache_compare_by_value(checkpoints, decoders):
    """Compiled loops are keyed on forward/init_cache: reloading must not force a recompile."""
    directory, _, tokens, _ = checkpoints["gpt2"]
    again = load_hf_decoder(directory)
    assert again.forward == decoders["gpt2"].forward and hash(again.forward) == hash(decoders["gpt2"].forward)
    assert again.init_cache == decoders["gpt2"].init_cache
    assert again.forward != decoders["opt_pre_norm"].forward
    _logits(decoders["gpt2"], tokens)
    compiled = _jit_forward._cache_size()
    _logits(again, tokens)
    assert _jit_forward._cache_size() == compiled


def test_loading_onto_a_mesh_is_loading_then_sharding(checkpoints, decoders):
    """With mesh=, the loader returns what shard_decoder makes of its one-device result:
    equal leaves and placements, equal (hashable) wrappers, one compilation, the same
    logits. (Eight devices: tests/decoding/test_sharding.py.)"""
    from sdsl_jax.decoding.sharding import make_mesh, shard_decoder

    directory, _, tokens, reference = checkpoints["gpt2"]
    mesh = make_mesh(1)
    direct = load_hf_decoder(directory, mesh=mesh)
    after = shard_decoder(decoders["gpt2"], mesh)
    assert jax.tree_util.tree_structure(direct.params) == jax.tree_util.tree_structure(after.params)
    for leaf, other in zip(jax.tree_util.tree_leaves(direct.params), jax.tree_util.tree_leaves(after.params)):
        assert leaf.sharding == other.sharding and leaf.dtype == other.dtype
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(other))
    assert (direct.forward, direct.init_cache, direct.num_params) == (after.forward, after.init_cache,
                                                                        after.num_params)
    logits = _logits(direct, tokens)
    compiled = _jit_forward._cache_size()
    np.testing.assert_array_equal(np.asarray(_logits(after, tokens)), np.asarray(logits))
    assert _jit_forward._cache_size() == compiled
    assert _max_diff(logits, reference) < LOGIT_ATOL
    with pytest.raises(ValueError, match="axis named 'model'"):
        load_hf_decoder(directory, mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)))


def test_weights_are_read_only_when_placed(checkpoints, monkeypatch):
    """A loader's params are HostTensors whose shapes were checked against the file's
    header; no tensor's bytes are read until a leaf is placed, one leaf at a time."""
    from sdsl_jax.hf import ARCHITECTURES, layout
    from sdsl_jax.hf.safetensors_io import SafetensorsCheckpoint

    reads = []
    original = SafetensorsFile.read
    monkeypatch.setattr(SafetensorsFile, "read", lambda self, name: reads.append(name) or original(self, name))
    for name in ("gpt2", "opt_350m_style"):
        directory = checkpoints[name][0]
        architecture = ARCHITECTURES[VARIANTS[name][0]]
        spec = architecture.read_spec(json.loads((directory / "config.json").read_text()), "config.json",
                                      "float32")
        checkpoint = SafetensorsCheckpoint(directory)
        params = architecture.load_params(spec, checkpoint)
        leaves = jax.tree_util.tree_leaves(params)
        assert reads == [] and all(isinstance(leaf, layout.HostTensor) for leaf in leaves)
        assert set(checkpoint.names_read) == set(checkpoint.names)  # every tensor was accounted for
        # Reading one leaf reads its own tensors (a stacked leaf: one per layer), as promised.
        leaf = params["layers" if name.startswith("opt") else "blocks"]["mlp_in" if name == "gpt2" else "fc1"]
        values = np.asarray(leaf["kernel"])
        assert values.shape == leaf["kernel"].shape and values.dtype == np.float32
        assert len(reads) == spec.num_layers
        # A block (one device's shard) is read without the rest: the heads 1 and 2 of the
        # query kernels [L, D, H, Dh], transposed from torch or cut from GPT-2's fused c_attn.
        query = params["layers" if name.startswith("opt") else "blocks"]["q_proj"]["kernel"]
        block = (slice(None), slice(None), slice(1, 3))
        np.testing.assert_array_equal(query[block], np.asarray(query)[block])
        assert query[block].shape == (spec.num_layers, spec.hidden_size, 2, spec.head_dim)
        reads.clear()


def test_safetensors_reader_matches_the_reference_library(tmp_path):
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    tensors = {
        "f32": torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32),
        "bf16": torch.tensor(rng.normal(size=(5,)), dtype=torch.bfloat16),
        "f16": torch.tensor(rng.normal(size=(2, 2, 2)), dtype=torch.float16),
        "i64": torch.tensor(rng.integers(-9, 9, size=(4,))),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros((0, 3)),
    }
    save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    reader = SafetensorsFile(tmp_path / "t.safetensors")
    assert sorted(reader.names) == sorted(tensors)
    for name, value in tensors.items():
        ours = reader.read(name)
        assert ours.shape == tuple(value.shape), name
        np.testing.assert_array_equal(ours.astype(np.float64), value.to(torch.float64).numpy(), err_msg=name)


# --- bad input -----------------------------------------------------------------------


def _copy(src, dst, skip=()):
    for path in src.iterdir():
        if path.name not in skip:
            (dst / path.name).write_bytes(path.read_bytes())


def test_missing_directory_and_config(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hf_decoder(tmp_path / "nowhere")
    _copy(checkpoints["gpt2"][0], tmp_path, skip={"config.json"})
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_hf_decoder(tmp_path)


def test_unsupported_architecture(checkpoints, tmp_path):
    _copy(checkpoints["gpt2"][0], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="mixtral", architectures=["MixtralForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: unsupported model_type 'mixtral'.*supported: llama, "
                                              r"mistral, qwen2, qwen3, gpt_neox, gpt2, opt"):
        load_hf_decoder(tmp_path)


def test_bad_config_values(checkpoints, tmp_path):
    _copy(checkpoints["opt_pre_norm"][0], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value, message in [
        ("num_attention_heads", 5, "not divisible"),
        ("ffn_dim", "96", "'ffn_dim' must be a positive integer"),
        ("activation_function", "swiglu", "unsupported activation_function 'swiglu'"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=message):
            load_hf_decoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cannot read .*config\.json"):
        load_hf_decoder(tmp_path)


def test_missing_tensor_is_named(checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory = checkpoints["gpt2"][0]
    _copy(directory, tmp_path, skip={"model.safetensors"})
    tensors = load_file(directory / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor 'transformer\.h\.1\.mlp\.c_fc\.bias'"):
        load_hf_decoder(tmp_path)


def test_unused_tensor_is_refused(checkpoints, tmp_path):
    """A tensor the model would ignore means config.json describes another model."""
    from safetensors.numpy import load_file, save_file

    directory = checkpoints["gpt2"][0]
    _copy(directory, tmp_path, skip={"model.safetensors"})
    tensors = load_file(directory / "model.safetensors")
    tensors["transformer.h.0.crossattention.c_attn.weight"] = np.zeros((48, 96), np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensors that a gpt2 model .* does not use \(1 in all\): "
                                              r"'transformer\.h\.0\.crossattention\.c_attn\.weight'"):
        load_hf_decoder(tmp_path)


def test_weights_that_do_not_fit_the_config(checkpoints, tmp_path):
    _copy(checkpoints["opt_pre_norm"][0], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    with pytest.raises(CheckpointError, match=r"'model\.decoder\.embed_tokens\.weight' has shape \(203, 48\), "
                                              r"config\.json implies \(300, 48\)"):
        load_hf_decoder(tmp_path)
    # GPT-2 weights under an OPT config: the anchor tensor is not there.
    _copy(checkpoints["gpt2"][0], tmp_path, skip={"config.json"})
    (tmp_path / "model.safetensors").write_bytes((checkpoints["gpt2"][0] / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.decoder\.embed_tokens\.weight'"):
        load_hf_decoder(tmp_path)


def test_missing_or_corrupt_weights(checkpoints, tmp_path):
    _copy(checkpoints["gpt2"][0], tmp_path, skip={"model.safetensors"})
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors.*pytorch_model\.bin.*safe_serialization=True"):
        load_hf_decoder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: header length"):
        load_hf_decoder(tmp_path)
    good = (checkpoints["gpt2"][0] / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"data_offsets .* do not lie in"):
        load_hf_decoder(tmp_path)


def test_forward_input_errors(decoders):
    decoder = decoders["gpt2"]  # 40 learned positions
    with pytest.raises(ValueError, match="max_len=41 exceeds the model's 40 learned positions"):
        decoder.init_cache(1, 41)
    cache = decoder.init_cache(2, 8)
    tokens = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"start\[1\]=6 with 3 tokens does not fit in the cache's 8 positions"):
        decoder.forward(decoder.params, tokens, jnp.array([0, 6]), cache)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 211\), got 211"):
        decoder.forward(decoder.params, tokens.at[0, 1].set(211), jnp.array([0, 0]), cache)
    with pytest.raises(ValueError, match=r"start must have shape \[batch\]"):
        decoder.forward(decoder.params, tokens, jnp.array([0]), cache)


# --- tokenizer -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """A small byte-level BPE trained here, saved as vocab.json + merges.txt."""
    from tokenizers import ByteLevelBPETokenizer

    text = ["the draft proposes tokens and the target verifies them in one pass",
            "speculative decoding accepts a prefix of the drafted tokens", "Hello, world! 123"] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    directory = tmp_path_factory.mktemp("bpe")
    bpe.save_model(str(directory))
    return directory


@pytest.mark.parametrize("opt_style", [False, True])
def test_tokenizer_matches_transformers(bpe_files, tmp_path, opt_style):
    _copy(bpe_files, tmp_path)
    options = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "errors": "replace",
               "bos_token": "</s>" if opt_style else "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "pad_token": "<pad>", "add_bos_token": opt_style}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(options))
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_hf_tokenizer(tmp_path)
    for text in ["the draft verifies", " speculative  decoding, Hello!", "unseen wörds ✓ </s> 42", ""]:
        ids = ours.encode(text).ids
        assert ids == reference(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    if opt_style:
        assert ours.encode("the").ids[0] == ours.token_to_id("</s>")
    # tokenizer.json, as transformers writes it, is taken as is.
    reference.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").exists()
    saved = load_hf_tokenizer(tmp_path / "saved")
    assert saved.encode("the draft verifies").ids == reference("the draft verifies")["input_ids"]


def test_tokenizer_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json, nor vocab\.json with merges\.txt"):
        load_hf_tokenizer(tmp_path)
