"""What `sdsl measure`'s runs file and row record of precision and memory, through the run it
calls (sdsl_jax.decoding.run) with n-gram models: their loop compiles in seconds, where
the trained pair's takes longer (tests/cli/test_measure.py runs those end to end)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.decoding import loop
from sdsl_jax.decoding import run as measure_run
from sdsl_jax.decoding.rows import summary_row
from sdsl_jax.decoding.summary import loop_summary
from sdsl_jax.models.ngram import ngram_decoder

VOCAB, LOOKAHEAD, PROMPT_LEN, MAX_NEW = 16, 2, 6, 6

# The loop compiles once (the estimate reuses its executables): about 5 s on two cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A fp32 draft and a bf16 target, measured with XLA's memory estimate: (lines, row)."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCAB, VOCAB))
    draft = ngram_decoder(jnp.asarray(table + 0.5 * rng.normal(size=table.shape), jnp.float32),
                          name="draft")
    target = ngram_decoder(jnp.asarray(table, jnp.bfloat16), name="target")
    pair = (measure_run.RunModel(draft, "draft", 1e6, 3.0),
            measure_run.RunModel(target, "target", 2e6, 2.0))
    prompts = [rng.integers(0, VOCAB, PROMPT_LEN).tolist() for _ in range(3)]
    settings = measure_run.run_settings(*pair, lookahead=LOOKAHEAD, temperature=1.0,
                                        max_new_tokens=MAX_NEW, prompt_len=PROMPT_LEN,
                                        batch_size=1, baseline=False, seed=0, prompt_set="test",
                                        top_p=0.9)
    path = tmp_path_factory.mktemp("records") / "runs.jsonl"
    lines, measured_now = measure_run.measure_run(*pair, prompts, settings, str(path),
                                                  progress=False, memory_estimate=True)
    assert measured_now == 3
    expected = loop.compiled_memory(draft, target, batch_size=1, prompt_len=PROMPT_LEN,
                                    lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW)
    return lines, summary_row(lines, num_resamples=10), expected, (pair, prompts, settings, path)


def test_lines_and_row_state_each_model_s_precision(measured):
    lines, row, _, _ = measured
    for record in lines + [row]:
        # The two differ, so there is no one precision; `sdsl plan --step-times` reads
        # each model's.
        assert (record["draft_precision"], record["target_precision"]) == ("fp32", "bf16")
        assert record["precision"] is None
        assert (record["top_p"], record["top_k"], record["devices"]) == (0.9, None, 1)
    text = loop_summary(row, runs_file="runs.jsonl", measured_now=3, from_earlier=0)
    assert "top-p 0.9" in text and "draft fp32, target bf16 on " in text, text


def test_memory_is_the_device_s_peak_and_xla_s_estimate(measured):
    lines, row, expected, _ = measured
    peak = jax.devices()[0].memory_stats()
    for record in lines + [row]:
        assert record["prefill_memory_bytes"] == expected["prefill"].peak_bytes > 0
        assert record["decode_memory_bytes"] == expected["decode"].peak_bytes > 0
        # A CPU keeps no statistics: null there, a count of bytes on an accelerator.
        if peak and peak.get("peak_bytes_in_use") is not None:
            assert isinstance(record["peak_memory_bytes"], int)
            assert record["peak_memory_bytes"] > 0
        else:
            assert record["peak_memory_bytes"] is None
    assert row["peak_memory_bytes"] == max((r["peak_memory_bytes"] for r in lines
                                            if r["peak_memory_bytes"] is not None),
                                           default=None)
    text = loop_summary(row, runs_file="runs.jsonl", measured_now=3, from_earlier=0)
    assert "memory: " in text and "XLA's estimate per device: prefill " in text, text


def test_a_resume_at_another_precision_or_sampling_is_refused(measured):
    _, _, _, (pair, prompts, settings, path) = measured
    before = path.read_bytes()
    upcast = measure_run.RunModel(ngram_decoder(pair[1].decoder.params["table"].astype(
        jnp.float32), name="target"), "target", 2e6, 2.0)
    other = measure_run.run_settings(pair[0], upcast, **{
        k: settings[k] for k in ("lookahead", "temperature", "max_new_tokens", "prompt_len",
                                 "batch_size", "baseline", "seed", "prompt_set", "top_p")})
    with pytest.raises(measure_run.MeasureRunError,
                       match="target_precision = 'bf16', this run has 'fp32'"):
        measure_run.measure_run(pair[0], upcast, prompts, other, str(path), progress=False)
    with pytest.raises(measure_run.MeasureRunError, match="top_p = 0.9, this run has None"):
        measure_run.measure_run(*pair, prompts, dict(settings, top_p=None), str(path),
                                progress=False)
    assert path.read_bytes() == before


def test_a_runs_file_from_before_the_new_settings_resumes_at_their_old_values(measured,
                                                                              tmp_path):
    """Lines written before precision, sampling and devices were settings ran in float32,
    untruncated, on one device: such a file is still read, and resumed under those only."""
    import json
    lines, _, _, (pair, prompts, settings, _) = measured
    old = tmp_path / "old.jsonl"
    dropped = ("draft_precision", "target_precision", "top_k", "top_p", "eos_token",
               "devices", "prefill_memory_bytes", "decode_memory_bytes", "peak_memory_bytes")
    old.write_text("".join(json.dumps({k: v for k, v in line.items() if k not in dropped})
                           + "\n" for line in lines))
    records = measure_run.read_runs(str(old), repair=False)
    assert len(records) == 3
    fp32_plain = dict(settings, target_precision="fp32", top_p=None)
    measure_run.check_settings(records, fp32_plain, str(old))  # no error
    with pytest.raises(measure_run.MeasureRunError, match="top_p = None, this run has 0.9"):
        measure_run.check_settings(records, dict(fp32_plain, top_p=0.9), str(old))
