"""`sdsl measure` in bfloat16, over 8 forced host devices and with top-k sampling: the
trained pair sharded over the devices decodes what one device decodes, every record says
bf16 and the devices it ran on, a float32 resume is refused, and top-1 sampling is greedy
decoding. One process of its own (the device count is fixed when JAX starts), which
compiles the bfloat16 loop once for one device and once for eight."""

import json
import os
import subprocess
import sys

import pytest

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
common = ["measure", "--draft", draft, "--target", target, "--lookahead", "2", "--prompts", "3",
          "--prompt-len", "24", "--max-new-tokens", "8", "--no-baseline", "--no-stdlib",
          "--corpus", corpus, "--json"]
bf16 = ["--dtype", "bfloat16"]
for devices in ("1", "all"):
    assert main(common + bf16 + ["--greedy", "--devices", devices,
                                 "--out", f"{out}/greedy-{devices}.jsonl"]) == 0
# The one-device run again in float32: refused (its error line goes to stderr).
assert main(common + ["--greedy", "--out", f"{out}/greedy-1.jsonl"]) == 2
# Sampling from the top 1 token at temperature 1 (the same compiled loop: settings are traced).
assert main(common + bf16 + ["--top-k", "1", "--out", f"{out}/top-1.jsonl"]) == 0
"""


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_bfloat16_sharded_and_top_k_runs(trained_pair, corpus_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_force_host_platform_device_count=8").strip())
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(trained_pair.draft),
                             str(trained_pair.target), str(corpus_dir), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    split = json.loads(result.stdout.splitlines()[0])["split"]
    assert "blocks/0/attn/qkv/kernel" in split and "blocks/0/mlp/down/kernel" in split
    one, eight, top1 = (_lines(tmp_path / name) for name in (
        "greedy-1.jsonl", "greedy-all.jsonl", "top-1.jsonl"))
    rows = [json.loads(line) for line in result.stdout.splitlines()[1:]]
    assert [row["devices"] for row in rows] == [1, 8, 1]
    for line in one + eight + top1:
        assert (line["precision"], line["draft_precision"], line["target_precision"]) == (
            "bf16", "bf16", "bf16")
    assert [line["devices"] for line in one + eight] == [1] * 3 + [8] * 3
    assert all(row["precision"] == "bf16" for row in rows)
    # The float32 resume was refused, naming the precision, and left the file whole.
    assert "draft_precision = 'bf16', this run has 'fp32'" in result.stderr
    assert len(one) == 3
    # Greedy decoding is a function of the argmaxes: the same accepted count at every
    # iteration on 8 devices (sharding changes sums in their last bits, which moves no
    # argmax of these trained models on these prompts; tests/decoding compares tokens),
    # and with top-1 sampling, whose draws always take the most likely token.
    greedy = [line["accepted_per_iteration"] for line in one]
    assert [line["accepted_per_iteration"] for line in eight] == greedy
    assert [line["accepted_per_iteration"] for line in top1] == greedy
    assert {(line["top_k"], line["temperature"]) for line in top1} == {(1, 1.0)}
