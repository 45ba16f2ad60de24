"""`sdsl measure --devices`: the trained pair sharded over 8 forced host devices decodes the
greedy tokens one device decodes, and records the devices it ran on."""

import json
import os
import subprocess
import sys

import pytest

# Runs in a process of its own: the device count is fixed when JAX starts.
SCRIPT = r"""
import json, sys
import jax
from sdsl_jax import models
from sdsl_jax.cli import main
from sdsl_jax.decoding.sharding import describe_sharding, make_mesh, shard_decoder

draft, target, corpus, out = sys.argv[1:5]
assert len(jax.devices()) == 8, jax.devices()
# Our transformer's annotations split its kernels over the mesh.
report = describe_sharding(shard_decoder(models.load_decoder(target), make_mesh(8)))
print(json.dumps({"split": list(report.split_leaves)}))
common = ["measure", "--draft", draft, "--target", target, "--lookahead", "2", "--prompts", "2",
          "--prompt-len", "24", "--max-new-tokens", "8", "--greedy", "--no-baseline",
          "--no-stdlib", "--corpus", corpus, "--json"]
for devices in ("1", "all"):
    code = main(common + ["--devices", devices, "--out", f"{out}/runs-{devices}.jsonl"])
    assert code == 0, code
"""


@pytest.mark.slow
def test_greedy_measurement_sharded_over_8_devices_is_the_one_device_one(trained_pair,
                                                                         corpus_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_force_host_platform_device_count=8").strip())
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(trained_pair.draft),
                             str(trained_pair.target), str(corpus_dir), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    split = json.loads(result.stdout.splitlines()[0])["split"]
    assert "blocks/0/attn/qkv/kernel" in split and "blocks/0/mlp/down/kernel" in split
    runs = {devices: [json.loads(line) for line in
                      (tmp_path / f"runs-{devices}.jsonl").read_text().splitlines()]
            for devices in ("1", "all")}
    assert [line["devices"] for line in runs["1"]] == [1, 1]
    assert [line["devices"] for line in runs["all"]] == [8, 8]
    # Greedy decoding is a function of the argmaxes: the same accepted count at every
    # iteration (sharding changes float32 sums in their last bits, which moves no argmax
    # of these trained models on these prompts; tests/decoding compares the tokens).
    assert [line["accepted_per_iteration"] for line in runs["all"]] == \
        [line["accepted_per_iteration"] for line in runs["1"]]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["devices"] == 8 and summary["precision"] == "fp32"
