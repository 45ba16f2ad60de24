"""Tensor parallelism (sdsl_jax.decoding.sharding): the loop over eight forced CPU devices.

XLA_FLAGS must be set before JAX starts, so the eight-device checks run in
subprocesses: tests/decoding/sharding_devices.py (the library: placement,
greedy tokens, samples, the compiled loop's collectives, our own
transformer's split) and ``sdsl measure --devices 8 --dtype bfloat16`` (the
command, whose records must say bf16). They start with this module's first test, if
a selected test reads their reports, and compute while the one-device tests
below run; the tests that read them come last.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from sdsl_jax.decoding import sharding
from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.models.ngram import random_ngram_decoder

SCRIPT = pathlib.Path(__file__).with_name("sharding_devices.py")
_spec = importlib.util.spec_from_file_location("sharding_devices", SCRIPT)
devices_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(devices_script)
_chi_spec = importlib.util.spec_from_file_location(
    "chi_square", pathlib.Path(__file__).with_name("chi_square.py"))
chi_square = importlib.util.module_from_spec(_chi_spec)
_chi_spec.loader.exec_module(chi_square)

EIGHT = "--xla_force_host_platform_device_count=8"


def _start(command, folder, extra_env=None):
    env = {**os.environ, "XLA_FLAGS": EIGHT, "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    out = tempfile.TemporaryFile("w+")
    err = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True, cwd=folder)
    return process, out, err


def _finish(run, timeout=900):
    process, out, err = run
    returncode = process.wait(timeout=timeout)
    out.seek(0)
    err.seek(0)
    return returncode, out.read(), err.read()


def _cli_command(folder: pathlib.Path):
    """``sdsl measure --devices 8 --dtype bfloat16`` on a tiny GPT-2 pair with a byte-level
    tokenizer."""
    write = devices_script.write_gpt2
    common = dict(vocab=256, width=32, heads=8, positions=64)
    draft = devices_script.write_byte_tokenizer(write(str(folder / "draft"), layers=1, inner=64,
                                                      seed=5, **common))
    target = devices_script.write_byte_tokenizer(write(str(folder / "target"), layers=2,
                                                       inner=64, seed=6, **common))
    prompts = folder / "prompts.txt"
    prompts.write_text("def shard(params, mesh):\nimport jax\nclass Decoder:\n# heads\n")
    return [sys.executable, "-m", "sdsl_jax.cli", "measure", "--draft", draft, "--target", target,
            "--devices", "8", "--lookahead", "2", "--prompt-file", str(prompts),
            "--max-new-tokens", "8", "--bootstrap", "100", "--draft-tokens", "1M",
            "--target-tokens", "2M", "--no-baseline", "--dtype", "bfloat16",
            "--out", str(folder / "runs.jsonl"), "--json"]


@pytest.fixture(scope="module", autouse=True)
def eight_devices_runs(request, tmp_path_factory):
    """Both eight-device processes, started when this module's first test starts (only
    those a selected test reads), stopped if still running when the module ends."""
    wanted = {name for item in request.session.items if item.path == request.path
              for name in ("eight_devices", "measure_on_eight") if name in item.fixturenames}
    runs = {}
    try:
        if "eight_devices" in wanted:
            folder = tmp_path_factory.mktemp("eight-devices")
            # XLA writes the decode loop's optimised HLO here; the script reads its
            # collectives (the program users run, not a second compilation of it).
            dump = folder / "hlo"
            runs["eight_devices"] = _start(
                [sys.executable, str(SCRIPT), str(folder)], folder,
                {"XLA_FLAGS": f"{EIGHT} --xla_dump_to={dump} --xla_dump_hlo_module_re=jit__decode",
                 "SHARDING_HLO_DUMP": str(dump)})
        if "measure_on_eight" in wanted:
            folder = tmp_path_factory.mktemp("measure-eight")
            runs["measure_on_eight"] = (_start(_cli_command(folder), folder), folder)
        yield runs
    finally:
        for run in runs.values():
            process, out, err = run if isinstance(run[0], subprocess.Popen) else run[0]
            process.kill()  # a no-op once it has finished
            process.wait()
            out.close()
            err.close()


@pytest.fixture(scope="module")
def eight_devices(eight_devices_runs):
    returncode, out, err = _finish(eight_devices_runs["eight_devices"])
    assert returncode == 0, err[-4000:]
    line = next(row for row in out.splitlines() if row.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


@pytest.fixture(scope="module")
def measure_on_eight(eight_devices_runs):
    run, folder = eight_devices_runs["measure_on_eight"]
    returncode, out, err = _finish(run)
    return returncode, out, err, folder


# --------------------------------------------------------------------------
# One device (this process).


def test_make_mesh_spans_the_devices_asked_for():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("model",) and mesh.devices.size == jax.device_count()
    assert sharding.make_mesh(1).shape["model"] == 1
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="num_devices must be a positive integer"):
            sharding.make_mesh(bad)
    with pytest.raises(ValueError, match=f"num_devices=9 exceeds the {jax.device_count()} cpu"):
        sharding.make_mesh(9)


def test_rules_are_matched_in_full_and_the_first_match_wins():
    mesh = sharding.make_mesh(1)
    tree = {"blocks": {"q_proj": {"kernel": jnp.zeros((2, 4, 8)), "bias": jnp.zeros((2, 8))},
                       "q_norm": {"scale": jnp.zeros((2, 8))}}}
    rules = (("blocks/q_proj/kernel", (None, None, "model")),
             ("blocks/q_.*", (None, "model")),
             ("blocks/.*", (None, None)))
    specs = jax.tree_util.tree_map(lambda s: s.spec, sharding.tree_shardings(tree, rules, mesh))
    assert specs["blocks"]["q_proj"]["kernel"] == PartitionSpec(None, None, "model")
    assert specs["blocks"]["q_proj"]["bias"] == PartitionSpec(None, "model")
    assert specs["blocks"]["q_norm"]["scale"] == PartitionSpec(None, "model")
    # "q_proj" alone matches no path in full: the leaf is replicated.
    specs = sharding.tree_shardings(tree, (("q_proj", (None, None, "model")),), mesh)
    assert specs["blocks"]["q_proj"]["kernel"].spec == PartitionSpec()
    # Paths join dict keys, attribute names and sequence indices.
    paths = [sharding.leaf_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        {"a": [jnp.zeros(1), {"b": jnp.zeros(1)}]})[0]]
    assert paths == ["a/0", "a/1/b"]


def test_bad_rules_and_meshes_are_named():
    mesh = sharding.make_mesh(1)
    table = random_ngram_decoder(0, 4, 3)

    def shard(**fields):
        return sharding.shard_decoder(Decoder(**{**table.__dict__, **fields}), mesh)

    with pytest.raises(ValueError, match=r"param_sharding: rule 'table' gives 2-axis spec .* "
                                         r"'table', which has shape \(4, 4, 4\)"):
        shard(param_sharding=(("table", (None, "model")),))
    with pytest.raises(ValueError, match=r"param_sharding\[0\]: '\(' is not a regular expression"):
        shard(param_sharding=(("(", (None,)),))
    with pytest.raises(ValueError, match=r"names mesh axis 'data'; only 'model'"):
        shard(param_sharding=(("table", (None, "data", None)),))
    with pytest.raises(ValueError, match=r"param_sharding\[0\] must be a pair"):
        shard(param_sharding=("table",))
    # The cache's rules are checked on its shape before any work: a bare array's path is "".
    with pytest.raises(ValueError, match=r"cache_sharding: rule '' gives 1-axis spec"):
        shard(cache_sharding=(("", ("model",)),))
    with pytest.raises(ValueError, match="axis named 'model'"):
        sharding.shard_decoder(table, Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    with pytest.raises(ValueError, match="decoder must be a Decoder"):
        sharding.shard_decoder(table.params, mesh)
    with pytest.raises(ValueError, match="already sharded"):
        sharding.shard_decoder(sharding.shard_decoder(table, mesh), mesh)


def test_sharded_decoders_compare_by_value():
    mesh = sharding.make_mesh(1)
    table = random_ngram_decoder(0, 4, 3)
    one, two = sharding.shard_decoder(table, mesh), sharding.shard_decoder(table, mesh)
    # Compiled loops are cached on forward and init_cache: equal wrappers share them.
    assert one.forward == two.forward and hash(one.forward) == hash(two.forward)
    assert one.init_cache == two.init_cache and hash(one.init_cache) == hash(two.init_cache)
    other = sharding.shard_decoder(table, Mesh(np.asarray(jax.devices()[:1]), ("model",)))
    assert other.init_cache == one.init_cache  # an equal mesh
    report = sharding.describe_sharding(one)
    assert report.num_devices == 1 and report.replicated_leaves == ("table",)
    assert report.bytes_per_device == {jax.devices()[0].id: 4 ** 3 * 4} == {
        jax.devices()[0].id: report.param_bytes}
    assert "0.0 MiB of params over 1 device," in report.summary()


def test_collectives_are_read_from_compiled_hlo():
    """The parser the no-gathered-weights check relies on, on lines as XLA prints them."""
    hlo = "\n".join([
        "  %all-reduce.9 = f32[4096,3,32]{2,1,0} all-reduce(%bitcast.45), channel_id=3, "
        "replica_groups=mesh['axis_0'=8] {'axis_0'}, to_apply=%add.2.clone",
        "  %fusion.1 = f32[4096,3,32]{2,1,0} fusion(%all-reduce.9, %p), kind=kLoop",
        "  %all-gather.2 = bf16[2,32,64]{2,1,0} all-gather(bf16[2,32,8]{2,1,0} %param.3), "
        "dimensions={2}",
        "  %ags = (f32[32,8]{1,0}, f32[32,64]{1,0}) all-gather-start(f32[32,8]{1,0} %w), "
        "dimensions={1}",
        "  %all-reduce.1 = (f32[], f32[4]{0}) all-reduce(f32[] %a, f32[4]{0} %b), to_apply=%add",
    ])
    assert devices_script.collectives(hlo) == {
        "all-reduce": [[4096, 3, 32], [], [4]],
        "all-gather": [[2, 32, 64], [32, 8], [32, 64]]}


# --------------------------------------------------------------------------
# Eight devices (the subprocesses' reports).


def _leaves(report, model):
    return {leaf["path"]: leaf for leaf in report[model]["leaves"]}


@pytest.mark.slow
def test_params_are_split_by_the_loaders_annotations(eight_devices):
    assert eight_devices["devices"] == 8
    target = _leaves(eight_devices, "target")
    assert eight_devices["target"]["has_rules"]
    split_bytes = replicated_bytes = 0
    split_kernels = {}
    for path, leaf in target.items():
        size = 4 * math.prod(leaf["shape"])  # float32
        asked = leaf["asked"]
        assert leaf["devices"] == 8, path
        if asked is None or "model" not in asked:
            assert leaf["shard_shapes"] == [str(leaf["shape"])], path
            assert leaf["distinct_shards"] == 1
            replicated_bytes += size
            continue
        # Each device holds 1/8 of the split axis, and the eight pieces differ.
        axis = asked.index("model")
        piece = list(leaf["shape"])
        piece[axis] //= 8
        assert leaf["shard_shapes"] == [str(piece)], path
        assert leaf["distinct_shards"] == 8, path
        if path.endswith("kernel"):
            split_kernels[path.split("/")[1]] = (axis, leaf["shape"][axis], len(piece))
        split_bytes += size
    # Attention is split by whole heads (one of the 8 a device): q, k, v kernels [L, D, H, Dh]
    # on H, the output [L, H, Dh, D] on H; the MLP's input by its units, its output by its input.
    assert split_kernels == {"q_proj": (2, 8, 4), "k_proj": (2, 8, 4), "v_proj": (2, 8, 4),
                             "attn_out": (1, 8, 4), "mlp_in": (2, 64, 3), "mlp_out": (1, 64, 3)}
    assert eight_devices["target"]["bytes_per_device"] == [replicated_bytes + split_bytes // 8] * 8
    assert eight_devices["target"]["param_bytes"] == replicated_bytes + split_bytes
    assert eight_devices["target"]["unsplit"] == []
    # The cache is split over its heads, where init_cache creates it.
    assert eight_devices["cache_specs"] == {"k": "P(None, None, None, 'model', None)",
                                            "v": "P(None, None, None, 'model', None)"}
    assert eight_devices["equal_wrappers"] == [True, True]


@pytest.mark.slow
def test_an_axis_that_does_not_divide_is_replicated(eight_devices):
    # The draft's MLP has 60 units: its MLP kernels stay whole, its attention is split.
    draft = _leaves(eight_devices, "draft")
    unsplit = eight_devices["draft"]["unsplit"]
    assert unsplit and all("mlp" in path for path in unsplit), unsplit
    for path in unsplit:
        assert draft[path]["shard_shapes"] == [str(draft[path]["shape"])]
    assert any("q_proj" in path for path in eight_devices["draft"]["split"])
    assert "does not divide by 8" in eight_devices["draft"]["summary"]
    # Two key/value heads on eight devices: the cache is replicated.
    assert eight_devices["two_kv_heads_spec"] == "P(None, None, None, None, None)"


@pytest.mark.slow
def test_loading_onto_the_mesh_is_loading_then_sharding(eight_devices):
    """load_hf_decoder(mesh=) places each weight straight from the file; the result is
    shard_decoder's, leaf by leaf, wrapper by wrapper and in its logits."""
    direct = eight_devices["direct_load"]
    leaves = [leaf["path"] for leaf in eight_devices["target"]["leaves"]]
    assert direct["paths_equal"] and direct["leaves"] == len(leaves) == 20
    assert direct["values_equal"] == direct["shardings_equal"] == leaves
    assert direct["wrappers_equal"] == [True, True, True]
    # Each transfer is from a NumPy array read from the file: a replicated leaf whole to
    # the mesh, a split leaf as eight blocks, each read on its own and sent to its device.
    expected = []
    for leaf in eight_devices["target"]["leaves"]:
        if leaf["distinct_shards"] == 1:
            expected.append(["ndarray", "mesh", leaf["shape"]])
        else:
            expected += [["ndarray", "device", json.loads(leaf["shard_shapes"][0])]] * 8
    assert direct["transfers"] == expected
    greedy = eight_devices["gqa"]["greedy"]
    # The Llama model loaded onto the mesh and the one sharded after loading run one
    # compiled program (besides the one-device program) and give the same logits.
    assert greedy["load_then_shard_logits_equal"] and greedy["compiled_programs"] == 2


@pytest.mark.slow
def test_heads_that_do_not_divide_are_replicated_whole(eight_devices):
    """12 query heads and 4 key/value heads on 8 devices: every attention leaf and the
    cache stay whole (no device holds part of a head), the MLP is split, and greedy
    decoding agrees with one device."""
    gqa = eight_devices["gqa"]
    leaves = _leaves(eight_devices, "gqa")
    attention = {path for path in leaves if path.split("/")[1:2] in (["q_proj"], ["k_proj"], ["v_proj"],
                                                                      ["o_proj"])}
    assert len(attention) == 8  # q, k, v kernels and biases, o kernel and bias
    for path in attention:
        assert leaves[path]["distinct_shards"] == 1 and leaves[path]["shard_shapes"] == [
            str(leaves[path]["shape"])], path
    # The rules asked to split them (the bias after the output sum excepted): the fallback replicated.
    assert sorted(gqa["unsplit"]) == sorted(attention - {"layers/o_proj/bias"})
    assert sorted(gqa["split"]) == ["layers/down_proj/kernel", "layers/gate_proj/kernel",
                                    "layers/up_proj/kernel"]
    assert leaves["layers/gate_proj/kernel"]["shard_shapes"] == ["[2, 48, 8]"]
    assert leaves["layers/down_proj/kernel"]["shard_shapes"] == ["[2, 8, 48]"]
    assert gqa["cache_specs"] == {"k": "P(None, None, None, None, None)",
                                  "v": "P(None, None, None, None, None)"}
    greedy = gqa["greedy"]
    assert all(m < TIE_MARGIN for m in greedy["margins_at_first_difference"]), greedy
    assert greedy["rows_differing"] == len(greedy["margins_at_first_difference"]), greedy
    assert greedy["rows"] * greedy["tokens"] >= 2000
    # Only the MLP's all-reduce sums in another order: logits agree to float32 rounding.
    assert greedy["first_logits_max_difference"] <= 1e-5 * max(1.0, greedy["first_logits_scale"]), greedy
    # Qwen2.5-7B (28 query heads, 4 key/value heads): on 8 devices its attention and cache
    # are replicated and its MLP split; on 4 devices everything is split by heads.
    eight, four = eight_devices["qwen_7b_specs"]["8"], eight_devices["qwen_7b_specs"]["4"]
    whole = {"layers/q_proj/kernel": "P(None, None, None, None)", "layers/q_proj/bias": "P(None, None, None)",
             "layers/k_proj/kernel": "P(None, None, None, None)", "layers/k_proj/bias": "P(None, None, None)",
             "layers/o_proj/kernel": "P(None, None, None, None)", "k": "P(None, None, None, None, None)"}
    mlp = {"layers/gate_proj/kernel": "P(None, None, 'model')", "layers/down_proj/kernel": "P(None, 'model', None)"}
    assert eight == {**whole, **mlp}
    assert four == {**mlp, "layers/q_proj/kernel": "P(None, None, 'model', None)",
                    "layers/q_proj/bias": "P(None, 'model', None)",
                    "layers/k_proj/kernel": "P(None, None, 'model', None)",
                    "layers/k_proj/bias": "P(None, 'model', None)",
                    "layers/o_proj/kernel": "P(None, 'model', None, None)",
                    "k": "P(None, None, None, 'model', None)"}


@pytest.mark.slow
def test_our_transformer_is_split_by_its_annotations(eight_devices):
    split = eight_devices["ours_split"]
    assert "blocks/0/attn/qkv/kernel" in split and "blocks/0/mlp/down/kernel" in split


@pytest.mark.slow
def test_a_decoder_without_annotations_is_replicated(eight_devices):
    ngram = eight_devices["ngram"]
    assert ngram == {"equal": True, "devices": 8, "cache_devices": 8, "replicated": ["table"]}


# Row-parallel matmuls sum their partial products across devices in another
# order than one device does, so logits differ in the last bits (float32
# logits of size ~1 differ by ~1e-6). A greedy token can then differ only
# where the one-device top-2 logits nearly tie: the margin bound is 100 times
# that rounding.
TIE_MARGIN = 1e-4


@pytest.mark.slow
def test_greedy_tokens_equal_one_device(eight_devices):
    greedy = eight_devices["greedy"]
    total = greedy["rows"] * greedy["tokens"]
    # Every differing row differs first where one device saw a near-tie.
    assert all(m < TIE_MARGIN for m in greedy["margins_at_first_difference"]), greedy
    assert greedy["rows_differing"] == len(greedy["margins_at_first_difference"])
    # Enough positions were compared for this to mean something.
    assert greedy["positions_compared"] >= 0.99 * total, greedy
    assert total >= 20_000
    # The drafts were mostly accepted: multi-token verification and rollback both ran.
    assert 0.5 < eight_devices["greedy_mean_accepted"] < 2.0
    assert eight_devices["greedy_output_devices"] == 8


def _chi_square_pvalue(samples, probs):
    """Goodness of fit of the rows of `samples` to the joint law `probs`
    (tests/decoding/chi_square.py)."""
    return chi_square.chi_square_pvalue(samples, probs, devices_script.VOCAB)


@pytest.mark.slow
def test_sharded_sampling_is_lossless(eight_devices):
    samples = np.asarray(eight_devices["samples"])
    target_joint = np.asarray(eight_devices["target_joint"])
    assert samples.shape == (devices_script.NUM_ROWS, devices_script.WINDOW)
    np.testing.assert_allclose(target_joint.sum(), 1.0, rtol=1e-9)
    # Lossless: the window follows the target's exact joint law (p > 1e-3), and the
    # test has the power to tell the draft's law apart (p < 1e-6).
    assert _chi_square_pvalue(samples, target_joint) > 1e-3
    assert _chi_square_pvalue(samples, np.asarray(eight_devices["draft_joint"])) < 1e-6
    # Every branch of the rule ran in the window: rejection of either draft, and the bonus.
    assert min(eight_devices["first_accepted"]) > 100, eight_devices["first_accepted"]


@pytest.mark.slow
def test_the_loop_does_not_gather_weights(eight_devices):
    """XLA may meet a sharded weight by all-gathering it on every device each
    step, which keeps the results right and loses the point of sharding. The
    compiled decode loop holds no collective the size of a split weight, whole
    or one layer of it; its only collectives are the all-reduces that sum
    row-parallel products, of activations [rows, tokens, width]."""
    collectives = eight_devices["collectives"]
    assert collectives["programs"] == 1, collectives
    weights = {tuple(leaf["shape"]) for model in ("target", "draft")
               for leaf in eight_devices[model]["leaves"] if leaf["distinct_shards"] > 1}
    weights |= {shape[1:] for shape in weights}
    for kind, shapes in collectives.items():
        if kind != "programs":
            assert not weights & {tuple(s) for s in shapes}, (kind, shapes)
    reduces = collectives.get("all-reduce", [])
    assert reduces, collectives
    assert all(s[0] == devices_script.NUM_ROWS and s[-1] == devices_script.WIDTH
               for s in reduces), reduces
    assert set(collectives) == {"programs", "all-reduce"}, collectives


@pytest.mark.slow
def test_measure_runs_on_eight_devices(measure_on_eight):
    returncode, out, err, folder = measure_on_eight
    assert returncode == 0, err[-4000:]
    row = json.loads(out)
    lines = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    assert len(lines) == row["prompts"] == 4
    assert row["devices"] == 8 and all(line["devices"] == 8 for line in lines)
    # bfloat16 end to end: what ran is what every record says.
    assert row["precision"] == "bf16"
    for line in lines:
        assert (line["precision"], line["draft_precision"], line["target_precision"]) == (
            "bf16", "bf16", "bf16")
    assert 0 <= row["acceptance"] <= 1 and row["trials"] > 0 and "speedup" not in row
