"""benchmarks/gpu_check.py runs every section on a CPU with --smoke and reports sane figures.

The script is meant for a GPU; here it runs as a user would run it, in a
subprocess, at its tiny smoke shapes. The figures are timings of a shared CPU,
so only their form is checked (present, finite, positive), plus what does not
depend on the machine: the law's value against the formula written out again,
and the script's FLOP count against XLA's own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from sdsl_jax.models import ModelConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("environment", "overhead", "speedup", "precision", "compute_bound",
            "while_predicate")
# Differences of times, which may be negative on a noisy CPU.
DIFFERENCES = ("overhead_seconds_per_step", "overhead_seconds_per_step_exact_mix",
               "overhead_seconds_per_step_predicate_corrected",
               "target_alone_overhead_seconds_per_step", "predicate_seconds_per_iteration")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    env = dict(os.environ)
    # The script's own smoke flags (fast XLA compilation) apply only when
    # XLA_FLAGS is unset.
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def timings(tree, path=""):
    """(path, value) of every number under a key naming seconds, recursively."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}/{key}"
            if "seconds" in key and key not in DIFFERENCES:
                yield from ((p, v) for p, v in numbers(value, where))
            else:
                yield from timings(value, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from timings(value, f"{path}[{i}]")


def numbers(tree, path):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numbers(value, f"{path}[{i}]")
    else:
        yield path, tree


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_every_section_with_finite_positive_timings(report):
    data, stdout = report
    assert [s for s in SECTIONS if s not in data] == [] and data["skipped"] == []
    found = list(timings(data))
    assert len(found) > 50, "the report lost its timings"
    bad = [(p, v) for p, v in found if not positive(v)]
    assert bad == [], bad
    assert data["environment"]["smoke"] is True
    assert isinstance(data["environment"]["matmul_precision_is_default"], bool)
    for dtype in ("float32", "bfloat16"):
        assert data["overhead"][dtype]["pair"]["dtype"] == dtype
        assert data["overhead"][dtype]["loop_steps"] >= 1
        assert math.isfinite(data["overhead"][dtype]["overhead_seconds_per_step"])
        assert math.isfinite(data["overhead"][dtype]["overhead_seconds_per_step_predicate_corrected"])
    predicate = data["while_predicate"]
    assert math.isfinite(predicate["predicate_seconds_per_iteration"])
    assert isinstance(predicate["matters"], bool)
    assert "while-loop predicate" in stdout and "compute-bound pair" in stdout


@pytest.mark.slow
def test_speedup_and_law(report):
    data, _ = report
    results = [data["speedup"]["float32"], data["speedup"]["bfloat16"],
               data["compute_bound"]["speedup"]]
    for s in results:
        for key in ("measured", "law", "law_with_verify_cost", "cost_ratio", "verify_cost"):
            assert positive(s[key]), (key, s[key])
        alpha, gamma, c, v = s["acceptance"], s["lookahead"], s["cost_ratio"], s["verify_cost"]
        assert 0 < alpha <= 1 and s["acceptance_low"] <= alpha <= s["acceptance_high"]
        # The throughput law written out again: E = 1 + alpha + ... + alpha^gamma.
        expected = sum(alpha ** i for i in range(gamma + 1))
        assert s["expected_tokens_per_iteration"] == pytest.approx(expected, rel=1e-5)
        assert s["law"] == pytest.approx(expected / (gamma * c + 1), rel=1e-5)
        assert s["law_with_verify_cost"] == pytest.approx(expected / (gamma * c + v), rel=1e-5)
        # Every iteration emits between 1 and gamma + 1 tokens.
        assert 1 <= s["measured_tokens_per_iteration"] <= gamma + 1
    precision = data["precision"]
    assert set(precision["speedup"]) == {"float32", "bfloat16"}
    assert all(positive(r) for r in precision["bfloat16_over_float32_step_seconds"].values())


@pytest.mark.slow
def test_flop_count_agrees_with_xla(report):
    data, _ = report
    section = data["compute_bound"]
    # The script's formula counts matmuls and attention; XLA also counts the
    # norms, softmaxes and rotary embeddings, a few percent at these shapes.
    assert section["verify_flops"] == pytest.approx(section["verify_flops_xla"], rel=0.1)
    assert positive(section["arithmetic_intensity_flops_per_byte"])
    assert positive(section["ridge_flops_per_byte"])
    assert isinstance(section["compute_bound"], bool)


def load_script():
    name = "benchmarks_gpu_check"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        # Registered first: its dataclasses look their module up while being built.
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_draft_is_the_targets_first_blocks():
    """The draft shares the target's embedding, first blocks and final norm, bit for bit,
    and the script's FLOP count of a forward agrees with XLA's at another shape."""
    script = load_script()
    config = ModelConfig(d_model=32, num_layers=3, num_heads=2, d_ff=64, vocab_size=96)
    draft, target = script.related_pair(config, 2, seed=0, dtype="bfloat16")
    assert (draft.dtype, target.dtype) == ("bfloat16", "bfloat16")
    target_leaves = {jax.tree_util.keystr(p): x
                     for p, x in jax.tree_util.tree_flatten_with_path(target.params)[0]}
    draft_leaves = jax.tree_util.tree_flatten_with_path(draft.params)[0]
    assert len(draft_leaves) < len(target_leaves)
    for path, leaf in draft_leaves:
        assert leaf.dtype == jax.numpy.bfloat16
        np.testing.assert_array_equal(np.asarray(leaf, np.float32),
                                      np.asarray(target_leaves[jax.tree_util.keystr(path)],
                                                 np.float32))
    assert draft.num_params < target.num_params
    with pytest.raises(ValueError, match="draft_layers"):
        script.related_pair(config, 3, seed=0, dtype="float32")
    # Batch 3, 5 tokens a row, a 40-position cache.
    ours = script.forward_flops(config, 3 * 5, 40)
    assert ours == pytest.approx(script.xla_forward_flops(target, 3, 5, 40), rel=0.1)
