"""The eight-device half of tests/decoding/test_sharding.py, run as its own process.

XLA_FLAGS="--xla_force_host_platform_device_count=8" must be set before JAX
starts, so the test module runs this file in a subprocess (with that flag and
an HLO dump folder) and reads the one JSON line it prints, ``REPORT{...}``.
Everything the tests assert on is computed here; the assertions live in the
test module.

The models are GPT-2 checkpoints written here with random weights and loaded
through :func:`sdsl_jax.hf.load_hf_decoder`, so their tensor-parallel
annotations are the loader's own. The target has 8 heads (one per device) and
is loaded straight onto the mesh (``mesh=``), then compared with loading it
on one device and sharding it; the draft's MLP width (60) does not divide by
8, so its MLP falls back to replication while its attention is split. A
Llama checkpoint with grouped-query attention, 12 query heads and 4
key/value heads (neither divides by 8), checks that attention is then
replicated by whole heads while the MLP is split, and decodes greedily as on
one device.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import time

import numpy as np

VOCAB = 3  # small enough for the exact joint law of a window of tokens (3^4 = 81 cells)
WIDTH, HEADS, POSITIONS = 32, 8, 64
TARGET = dict(layers=2, inner=64, seed=1)
DRAFT = dict(layers=1, inner=60, seed=2)
NUM_ROWS = 2048  # chi-square samples (25 a cell on average), and greedy rows
PROMPT_LEN = 4
MAX_NEW_TOKENS = 12
LOOKAHEAD = 2
EMBED_STD = 0.25  # logits of std ~1.4: laws far from uniform, yet few cells of the window's law are rare
WINDOW = 4  # generated tokens whose joint law is tested: first token, 2 drafts, the bonus
PROMPT = [1, 2, 0]
# Grouped-query attention whose heads do not divide by 8 devices; its MLP (64 units) does.
GQA = dict(vocab=64, width=48, heads=12, kv_heads=4, inner=64, layers=2, positions=64, seed=3)
GQA_ROWS, GQA_NEW_TOKENS = 256, 8
# Qwen2.5-7B's layer shapes: 28 query heads, 4 key/value heads, head_dim 128, MLP 18944.
QWEN_7B = dict(layers=28, width=3584, heads=28, kv_heads=4, head_dim=128, inner=18944)


def write_gpt2(directory, *, vocab, width, heads, layers, inner, positions, seed):
    """A GPT-2 checkpoint as transformers saves one (config.json, model.safetensors).

    Weights are larger than GPT-2's initialisation (std 0.02) so that the
    next-token laws are far from uniform and draft and target differ: the
    acceptance is moderate and every branch of the acceptance rule occurs.
    """
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    d, f = width, inner

    def normal(scale, *shape):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"wte.weight": normal(EMBED_STD, vocab, d), "wpe.weight": normal(0.1, positions, d),
               "ln_f.weight": 1 + normal(0.1, d), "ln_f.bias": normal(0.1, d)}
    for i in range(layers):
        for name, shape, scale in (
                ("ln_1.weight", (d,), 0.1), ("ln_1.bias", (d,), 0.1), ("ln_2.weight", (d,), 0.1),
                ("ln_2.bias", (d,), 0.1), ("attn.c_attn.weight", (d, 3 * d), 0.3),
                ("attn.c_attn.bias", (3 * d,), 0.1), ("attn.c_proj.weight", (d, d), 0.15),
                ("attn.c_proj.bias", (d,), 0.1), ("mlp.c_fc.weight", (d, f), 0.3),
                ("mlp.c_fc.bias", (f,), 0.1), ("mlp.c_proj.weight", (f, d), 0.15),
                ("mlp.c_proj.bias", (d,), 0.1)):
            tensors[f"h.{i}.{name}"] = (name.startswith("ln") and name.endswith("weight")) + normal(
                scale, *shape)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as config:
        json.dump({"model_type": "gpt2", "vocab_size": vocab, "n_embd": d, "n_head": heads,
                   "n_layer": layers, "n_inner": f, "n_positions": positions,
                   "activation_function": "gelu_new"}, config)
    return directory


def write_llama(directory, *, vocab, width, heads, kv_heads, inner, layers, positions, seed):
    """A Llama checkpoint with grouped-query attention and attention biases, as
    transformers saves one, with random weights (std 0.3: next-token laws far from uniform)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    d, head_dim = width, width // heads

    def normal(scale, *shape):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(1.0, vocab, d), "model.norm.weight": 1 + normal(0.1, d),
               "lm_head.weight": normal(0.3, vocab, d)}
    q, kv = heads * head_dim, kv_heads * head_dim
    for i in range(layers):
        for name, shape in (("input_layernorm.weight", (d,)), ("post_attention_layernorm.weight", (d,)),
                            ("self_attn.q_proj.weight", (q, d)), ("self_attn.q_proj.bias", (q,)),
                            ("self_attn.k_proj.weight", (kv, d)), ("self_attn.k_proj.bias", (kv,)),
                            ("self_attn.v_proj.weight", (kv, d)), ("self_attn.v_proj.bias", (kv,)),
                            ("self_attn.o_proj.weight", (d, q)), ("self_attn.o_proj.bias", (d,)),
                            ("mlp.gate_proj.weight", (inner, d)), ("mlp.up_proj.weight", (inner, d)),
                            ("mlp.down_proj.weight", (d, inner))):
            tensors[f"model.layers.{i}.{name}"] = name.endswith("layernorm.weight") + normal(0.3, *shape)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as config:
        json.dump({"model_type": "llama", "vocab_size": vocab, "hidden_size": d, "num_attention_heads": heads,
                   "num_key_value_heads": kv_heads, "intermediate_size": inner, "num_hidden_layers": layers,
                   "max_position_embeddings": positions, "attention_bias": True,
                   "tie_word_embeddings": False}, config)
    return directory


# An HLO instruction: "%name = f32[2,32,8]{2,1,0} all-gather(...)" (a tuple result for a
# combined collective: "(f32[..], f32[..]) all-reduce(...)").
INSTRUCTION = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(all-gather|all-reduce|all-to-all|"
                         r"collective-permute|reduce-scatter)(-start)?\(")
SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


def write_byte_tokenizer(directory):
    """A byte-level tokenizer.json with no merges: its 256 tokens are the bytes, for
    a checkpoint of vocabulary 256 that `sdsl measure` can give text prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    return directory


def collectives(hlo: str) -> dict:
    """For each kind of collective in compiled HLO text, the result shapes of its instructions."""
    found = {}
    for line in hlo.splitlines():
        match = INSTRUCTION.search(line)
        if match:
            found.setdefault(match.group(2), []).extend(
                [int(n) for n in dims.split(",") if n] for dims in SHAPE.findall(match.group(1)))
    return found


def decode_collectives(dump: str | None) -> dict:
    """The collectives of the compiled decode loop, from XLA's dump after optimisation
    (the test runs this file with --xla_dump_to and the folder in SHARDING_HLO_DUMP)."""
    files = sorted(glob.glob(os.path.join(dump, "*jit__decode*after_optimizations.txt"))) if dump else []
    found = {"programs": len(files)}
    for path in files:
        with open(path) as f:
            for kind, shapes in collectives(f.read()).items():
                found.setdefault(kind, []).extend(shapes)
    return found


def main(folder: str) -> dict:
    start_time = time.perf_counter()
    import dataclasses

    import jax
    import jax.numpy as jnp

    from sdsl_jax.decoding import sharding
    from sdsl_jax.decoding.loop import pad_prompts, speculative_generate
    from sdsl_jax.hf import load_hf_decoder
    from sdsl_jax.models.ngram import random_ngram_decoder

    timings = {}

    def lap(name):
        timings[name] = [round(time.perf_counter() - start_time, 2), round(time.process_time(), 2)]

    report = {"devices": jax.device_count(), "timings": timings}
    target_dir = write_gpt2(os.path.join(folder, "target"), vocab=VOCAB, width=WIDTH, heads=HEADS,
                            positions=POSITIONS, **TARGET)
    target = load_hf_decoder(target_dir)
    draft = load_hf_decoder(write_gpt2(os.path.join(folder, "draft"), vocab=VOCAB, width=WIDTH,
                                       heads=HEADS, positions=POSITIONS, **DRAFT))
    mesh = sharding.make_mesh(8)
    # The target the loop runs is loaded straight onto the mesh. Every transfer is
    # recorded: from a host (NumPy) array, a replicated leaf whole to the mesh, a split
    # leaf block by block to each device.
    transfers, device_put = [], jax.device_put

    def recording_device_put(x, *args, **kwargs):
        destination = args[0] if args else kwargs.get("device")
        to = ("mesh" if getattr(destination, "mesh", None) == mesh
              else "device" if isinstance(destination, jax.Device) else repr(destination))
        transfers.append([type(x).__name__, to, list(np.shape(x))])
        return device_put(x, *args, **kwargs)

    jax.device_put = recording_device_put
    try:
        sharded_target = load_hf_decoder(target_dir, mesh=mesh)
    finally:
        jax.device_put = device_put
    sharded_draft = sharding.shard_decoder(draft, mesh)
    lap("setup")

    # ---- Loading onto the mesh is loading on one device, then sharding.
    after = sharding.shard_decoder(target, mesh)
    pairs = list(zip(jax.tree_util.tree_flatten_with_path(sharded_target.params)[0],
                     jax.tree_util.tree_leaves(after.params)))
    # Equal wrappers, values and shardings make the loop's compiled programs the
    # same; the logits of the two loads are compared below on the Llama model.
    report["direct_load"] = {
        "paths_equal": (jax.tree_util.tree_structure(sharded_target.params)
                        == jax.tree_util.tree_structure(after.params)),
        "values_equal": [sharding.leaf_path(path) for (path, leaf), other in pairs
                         if np.array_equal(np.asarray(leaf), np.asarray(other))
                         and leaf.dtype == other.dtype],
        "shardings_equal": [sharding.leaf_path(path) for (path, leaf), other in pairs
                            if leaf.sharding == other.sharding],
        "leaves": len(pairs),
        "transfers": transfers,
        "wrappers_equal": [sharded_target.forward == after.forward,
                           sharded_target.init_cache == after.init_cache,
                           sharded_target.num_params == after.num_params == target.num_params],
    }
    del after
    lap("direct load")

    # ---- Where the params are.
    def placement(decoder, sharded):
        rules = decoder.param_sharding
        out = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(sharded.params)[0]:
            name = sharding.leaf_path(path)
            asked = next((list(spec) for pattern, spec in rules if re.fullmatch(pattern, name)),
                         None)
            out.append({"path": name, "shape": list(leaf.shape), "asked": asked,
                        "shard_shapes": sorted({list(s.data.shape).__repr__()
                                                for s in leaf.addressable_shards}),
                        "devices": len(leaf.sharding.device_set),
                        "distinct_shards": len({str(s.index) for s in leaf.addressable_shards})})
        described = sharding.describe_sharding(sharded)
        return {"leaves": out, "param_bytes": described.param_bytes,
                "bytes_per_device": list(described.bytes_per_device.values()),
                "split": list(described.split_leaves), "unsplit": list(described.unsplit_leaves),
                "summary": described.summary(), "has_rules": bool(rules),
                "cache_rules": [list(map(str, rule)) for rule in decoder.cache_sharding]}

    report["target"] = placement(target, sharded_target)
    report["draft"] = placement(draft, sharded_draft)

    # ---- Heads that do not divide by the mesh: 12 query and 4 key/value heads on 8 devices.
    gqa_dir = write_llama(os.path.join(folder, "gqa"), **GQA)
    gqa = load_hf_decoder(gqa_dir)
    sharded_gqa = load_hf_decoder(gqa_dir, mesh=mesh)
    report["gqa"] = placement(gqa, sharded_gqa)
    report["gqa"]["cache_specs"] = {
        sharding.leaf_path(path): str(leaf.sharding.spec)
        for path, leaf in jax.tree_util.tree_flatten_with_path(sharded_gqa.init_cache(2, 8))[0]}
    report["gqa"]["greedy"] = gqa_greedy(gqa, sharded_gqa, sharding.shard_decoder(gqa, mesh))
    # Qwen2.5-7B's layer shapes under the Llama rules, on 8 devices and on 4 (specs only).
    report["qwen_7b_specs"] = {str(n): qwen_7b_specs(sharding.make_mesh(n), sharding) for n in (8, 4)}
    lap("grouped-query heads")
    cache = sharded_target.init_cache(2, 8)
    report["cache_specs"] = {sharding.leaf_path(path): str(leaf.sharding.spec)
                             for path, leaf in jax.tree_util.tree_flatten_with_path(cache)[0]}
    # An axis that does not divide by the mesh stays whole: 2 key/value heads on 8 devices.
    kv = jax.ShapeDtypeStruct((2, 1, 8, 2, 4), jnp.float32)
    report["two_kv_heads_spec"] = str(sharding.tree_shardings(
        {"k": kv}, target.cache_sharding, mesh)["k"].spec)
    report["equal_wrappers"] = [
        sharding.shard_decoder(target, mesh).init_cache == sharded_target.init_cache,
        hash(sharding.shard_decoder(target, mesh).forward) == hash(sharded_target.forward)]
    lap("placement")

    def run(prompt_tokens, prompt_lengths, key, temperature):
        return speculative_generate(sharded_draft, sharded_target, prompt_tokens, prompt_lengths,
                                    key, lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW_TOKENS,
                                    temperature=temperature)

    # Greedy: the sharded loop against the target's own greedy decoding on one
    # device, computed without the loop or a cache (full forwards over a buffer).
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, VOCAB, size=int(n)).tolist()
               for n in rng.integers(1, PROMPT_LEN + 1, size=NUM_ROWS)]
    tokens, lengths = pad_prompts(prompts, PROMPT_LEN)
    greedy = run(tokens, lengths, jax.random.PRNGKey(0), 0.0)
    greedy_tokens = np.asarray(greedy.tokens)
    report["greedy_output_devices"] = len(greedy.tokens.sharding.device_set)
    ran = np.arange(greedy.accepted.shape[1]) < np.asarray(greedy.num_iterations)[:, None]
    report["greedy_mean_accepted"] = float(np.asarray(greedy.accepted)[ran].mean())
    report["collectives"] = decode_collectives(os.environ.get("SHARDING_HLO_DUMP"))
    lap("sharded greedy")

    buffer_len = PROMPT_LEN + MAX_NEW_TOKENS

    @jax.jit
    def full_logits(params, buffer):
        cache = target.init_cache(buffer.shape[0], buffer_len)
        logits, _ = target.forward(params, buffer, jnp.zeros(buffer.shape[0], jnp.int32), cache)
        return logits

    buffer = np.zeros((NUM_ROWS, buffer_len), np.int32)
    buffer[:, :PROMPT_LEN] = np.asarray(tokens)
    rows = np.arange(NUM_ROWS)
    length = np.asarray(lengths).copy()
    reference = np.zeros((NUM_ROWS, MAX_NEW_TOKENS), np.int32)
    margins = np.zeros((NUM_ROWS, MAX_NEW_TOKENS), np.float32)
    for j in range(MAX_NEW_TOKENS):
        logits = np.asarray(full_logits(target.params, jnp.asarray(buffer)))[rows, length - 1]
        top = np.sort(logits, axis=-1)
        reference[:, j] = np.argmax(logits, axis=-1)
        margins[:, j] = top[:, -1] - top[:, -2]
        buffer[rows, length] = reference[:, j]
        length += 1
    differs = greedy_tokens != reference
    first = np.where(differs.any(axis=1), differs.argmax(axis=1), MAX_NEW_TOKENS)
    report["greedy"] = {
        "rows": NUM_ROWS, "tokens": MAX_NEW_TOKENS,
        "rows_differing": int(differs.any(axis=1).sum()),
        "positions_compared": int(np.minimum(first + 1, MAX_NEW_TOKENS).sum()),
        # At each row's first difference: the one-device top-2 logit margin there.
        "margins_at_first_difference": [float(margins[b, first[b]])
                                        for b in np.flatnonzero(first < MAX_NEW_TOKENS)],
        "smallest_margin": float(margins.min()),
    }
    lap("one-device greedy reference")

    # ---- Sampling: the same compiled loop at temperature 1, one prompt on every row.
    sample_tokens, sample_lengths = pad_prompts([PROMPT] * NUM_ROWS, PROMPT_LEN)
    sampled = run(sample_tokens, sample_lengths, jax.random.PRNGKey(1), 1.0)
    report["samples"] = np.asarray(sampled.tokens)[:, :WINDOW].tolist()
    report["first_accepted"] = np.bincount(np.asarray(sampled.accepted)[:, 0],
                                           minlength=LOOKAHEAD + 1).tolist()
    lap("sharded sampling")

    # The exact joint law of the window under each model on one device, from full
    # forwards over every continuation (no loop, no cache reuse).
    continuations = np.array(np.meshgrid(*[np.arange(VOCAB)] * WINDOW, indexing="ij")).reshape(
        WINDOW, -1).T  # [V^W, W], first token most significant
    sequences = np.concatenate([np.tile(PROMPT, (len(continuations), 1)), continuations], axis=1)
    for name, model in (("target", target), ("draft", draft)):
        cache = model.init_cache(len(sequences), sequences.shape[1])
        logits, _ = jax.jit(model.forward)(model.params, jnp.asarray(sequences, jnp.int32),
                                           jnp.zeros(len(sequences), jnp.int32), cache)
        logits = np.asarray(logits, np.float64)[:, len(PROMPT) - 1:-1]  # predicting the window
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, continuations[..., None], axis=-1)[..., 0]
        report[f"{name}_joint"] = np.exp(picked.sum(axis=1)).tolist()
    lap("exact joints")

    # ---- A decoder without annotations (an n-gram table, whose cache is a bare
    # array) is replicated and computes exactly as on one device.
    table = random_ngram_decoder(3, VOCAB, 3, scale=2.0)
    replicated = sharding.shard_decoder(table, mesh)
    cache = replicated.init_cache(NUM_ROWS, PROMPT_LEN)
    one, every = (np.asarray(jax.jit(d.forward)(d.params, tokens, jnp.zeros(NUM_ROWS, jnp.int32),
                                                d.init_cache(NUM_ROWS, PROMPT_LEN))[0])
                  for d in (table, replicated))
    report["ngram"] = {"equal": bool(np.array_equal(one, every)),
                       "devices": len(jax.tree_util.tree_leaves(replicated.params)[0]
                                      .sharding.device_set),
                       "cache_devices": len(cache.sharding.device_set),
                       "replicated": list(sharding.describe_sharding(replicated).replicated_leaves)}
    lap("ngram")

    # ---- Our own transformer (`sdsl train`'s models) carries annotations too:
    # its fused qkv and MLP kernels are split, with no compilation needed to see it.
    from sdsl_jax.models import ModelConfig, as_decoder, init_params
    config = ModelConfig(d_model=32, num_layers=1, num_heads=8, d_ff=64, vocab_size=VOCAB)
    ours = sharding.describe_sharding(sharding.shard_decoder(
        as_decoder(init_params(config, 0), config, name="ours"), mesh))
    report["ours_split"] = list(ours.split_leaves)
    return report


def gqa_greedy(one, sharded, after) -> dict:
    """Greedy tokens of a decoder on one device and loaded onto the mesh, each by full
    forwards over a growing buffer (no loop, no cache reuse), the one-device top-2
    margins, and whether loading then sharding (``after``) gives the same logits."""
    import functools

    import jax
    import jax.numpy as jnp

    # forward and init_cache are static and compare by value: the decoder loaded onto
    # the mesh and the one sharded after loading share one compiled program.
    @functools.partial(jax.jit, static_argnums=(0, 1))
    def last_logits(forward, init_cache, params, buffer, length):
        logits, _ = forward(params, buffer, jnp.zeros(GQA_ROWS, jnp.int32), init_cache(*buffer.shape))
        return logits[jnp.arange(GQA_ROWS), length - 1]

    rng = np.random.default_rng(7)
    lengths = rng.integers(1, PROMPT_LEN + 1, size=GQA_ROWS)
    prompts = rng.integers(0, GQA["vocab"], (GQA_ROWS, PROMPT_LEN))
    rows = np.arange(GQA_ROWS)
    out = {}
    for name, decoder in (("one", one), ("mesh", sharded)):
        buffer = np.zeros((GQA_ROWS, PROMPT_LEN + GQA_NEW_TOKENS), np.int32)
        buffer[:, :PROMPT_LEN] = prompts
        length = lengths.copy()
        tokens = np.zeros((GQA_ROWS, GQA_NEW_TOKENS), np.int32)
        margins = np.zeros((GQA_ROWS, GQA_NEW_TOKENS), np.float32)
        for j in range(GQA_NEW_TOKENS):
            logits = np.asarray(last_logits(decoder.forward, decoder.init_cache, decoder.params,
                                            jnp.asarray(buffer), jnp.asarray(length)))
            if j == 0:
                out[name + "_first_logits"] = logits
                if name == "mesh":
                    out["after_first_logits"] = np.asarray(last_logits(
                        after.forward, after.init_cache, after.params, jnp.asarray(buffer), jnp.asarray(length)))
            top = np.sort(logits, axis=-1)
            tokens[:, j] = np.argmax(logits, axis=-1)
            margins[:, j] = top[:, -1] - top[:, -2]
            buffer[rows, length] = tokens[:, j]
            length += 1
        out[name] = (tokens, margins)
    (one_tokens, margins), (mesh_tokens, _) = out["one"], out["mesh"]
    one_logits, mesh_logits = out["one_first_logits"], out["mesh_first_logits"]
    differs = one_tokens != mesh_tokens
    first = np.where(differs.any(axis=1), differs.argmax(axis=1), GQA_NEW_TOKENS)
    return {"rows": GQA_ROWS, "tokens": GQA_NEW_TOKENS, "rows_differing": int(differs.any(axis=1).sum()),
            "margins_at_first_difference": [float(margins[b, first[b]])
                                            for b in np.flatnonzero(first < GQA_NEW_TOKENS)],
            "first_logits_max_difference": float(np.abs(one_logits - mesh_logits).max()),
            "first_logits_scale": float(np.abs(one_logits).max()),
            "load_then_shard_logits_equal": bool(np.array_equal(out["after_first_logits"], mesh_logits)),
            "compiled_programs": last_logits._cache_size()}


def qwen_7b_specs(mesh, sharding) -> dict:
    """The partition specs the Llama rules give Qwen2.5-7B's attention, MLP and cache leaves."""
    import jax
    from sdsl_jax.hf import llama
    from sdsl_jax.hf.kv_cache import KV_CACHE_SHARDING

    c = QWEN_7B
    L, D, H, Hkv, Dh, F = c["layers"], c["width"], c["heads"], c["kv_heads"], c["head_dim"], c["inner"]

    def shaped(*shape):
        return jax.ShapeDtypeStruct(shape, np.float32)

    layers = {"q_proj": {"kernel": shaped(L, D, H, Dh), "bias": shaped(L, H, Dh)},
              "k_proj": {"kernel": shaped(L, D, Hkv, Dh), "bias": shaped(L, Hkv, Dh)},
              "o_proj": {"kernel": shaped(L, H, Dh, D)},
              "gate_proj": {"kernel": shaped(L, D, F)}, "down_proj": {"kernel": shaped(L, F, D)}}
    specs = sharding.tree_shardings({"layers": layers}, llama.PARAM_SHARDING, mesh)
    specs.update(sharding.tree_shardings({"k": shaped(L, 1, 8, Hkv, Dh)}, KV_CACHE_SHARDING, mesh))
    return {sharding.leaf_path(path): str(s.spec)
            for path, s in jax.tree_util.tree_flatten_with_path(specs)[0]}


if __name__ == "__main__":
    print("REPORT" + json.dumps(main(sys.argv[1])))
