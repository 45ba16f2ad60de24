"""Calibration of the roofline to measured step times, and reading them from records and files."""

import json

import numpy as np
import pytest
from scipy.optimize import least_squares

from sdsl_jax.planning import calibration
from sdsl_jax.planning import hardware as hw


def _as_dict(hardware):
    """The fields under their file names, as conftest's numpy_step_time takes them."""
    return hw.hardware_record(hardware)


TRUE_HARDWARE = hw.hardware_preset("H100").replace(
    compute_efficiency=0.42, bandwidth_efficiency=0.71, overhead_seconds=4.5e-4)


def _synthetic_rows(numpy_step_time, noise, seed=0, n=120):
    rng = np.random.default_rng(seed)
    params = 10 ** rng.uniform(8, 11, n)
    tokens = rng.integers(1, 9, n).astype(float)
    batch = 2.0 ** rng.integers(0, 8, n)
    context = rng.uniform(0, 4096, n)
    bpp = rng.choice([1.0, 2.0], n)
    clean = numpy_step_time(_as_dict(TRUE_HARDWARE), params, tokens, bpp, batch, context)
    seconds = clean * np.exp(noise * rng.standard_normal(n))
    records = [dict(params=p, tokens_per_step=k, precision=b, batch=bb, context=c, seconds=s)
               for p, k, b, bb, c, s in zip(params, tokens, bpp, batch, context, seconds)]
    return records, (params, tokens, bpp, batch, context, seconds)


def test_calibration_recovers_the_true_hardware(x64, numpy_step_time):
    records, _ = _synthetic_rows(numpy_step_time, noise=0.0)
    fit = calibration.calibrate(hw.hardware_preset("H100"), calibration.step_time_rows(records), prior_weight=0.0)
    assert bool(fit.converged)
    for field in calibration.CALIBRATED_FIELDS:
        assert float(fit.hardware[field]) == pytest.approx(float(TRUE_HARDWARE[field]), rel=1e-6), field
    assert float(fit.max_relative_error) < 1e-8


def test_calibration_matches_scipy_least_squares_on_noisy_times(x64, numpy_step_time):
    records, (params, tokens, bpp, batch, context, seconds) = _synthetic_rows(numpy_step_time, noise=0.05, seed=1)
    fit = calibration.calibrate(hw.hardware_preset("H100"), calibration.step_time_rows(records), prior_weight=0.0)
    base = _as_dict(hw.hardware_preset("H100"))

    def residuals(theta):
        acc = dict(base, compute_efficiency=np.exp(theta[0]), bandwidth_efficiency=np.exp(theta[1]),
                   overhead=np.exp(theta[2]))
        return np.log(numpy_step_time(acc, params, tokens, bpp, batch, context)) - np.log(seconds)

    reference = least_squares(residuals, np.log([0.5, 0.8, 3e-4]), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    for i, field in enumerate(calibration.CALIBRATED_FIELDS):
        assert float(fit.hardware[field]) == pytest.approx(np.exp(reference.x[i]), rel=1e-5), field
    rms = np.sqrt(np.mean(reference.fun**2))
    assert float(fit.rms_log_error) == pytest.approx(rms, rel=1e-8)
    # 5% noise: the fitted model predicts the clean times to a few percent.
    clean = numpy_step_time(_as_dict(TRUE_HARDWARE), params, tokens, bpp, batch, context)
    assert np.max(np.abs(np.asarray(fit.predicted) / clean - 1)) < 0.05


def test_measure_records_become_draft_and_verify_rows(x64, tmp_path):
    records = [
        dict(draft_params="125M", target_params="7B", lookahead=4, batch=8, context=512,
             draft_step_seconds=2e-3, target_step_seconds=2.5e-2, baseline_step_seconds=2.2e-2,
             target_precision="fp8", acceptance=0.7),  # extra keys are ignored
        dict(draft_params=3.5e8, target_params=7e9, draft_step_seconds=3e-3, precision="float32"),
        dict(params=1e9, seconds=4e-3, tokens_per_step=3),
    ]
    path = tmp_path / "steps.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    rows = calibration.read_step_times(path)
    np.testing.assert_array_equal(rows.num_params, [1.25e8, 7e9, 7e9, 3.5e8, 1e9])
    np.testing.assert_array_equal(rows.tokens_per_step, [1, 5, 1, 1, 3])
    np.testing.assert_array_equal(rows.bytes_per_param, [2, 1, 1, 4, 2])
    np.testing.assert_array_equal(rows.batch_size, [8, 8, 8, 1, 1])
    np.testing.assert_array_equal(rows.context, [512, 512, 512, 0, 0])
    np.testing.assert_array_equal(rows.seconds, [2e-3, 2.5e-2, 2.2e-2, 3e-3, 4e-3])


@pytest.mark.parametrize("record,match", [
    (dict(draft_params=1e8, target_params=1e9), "record 1: no step time"),
    (dict(draft_params=1e8, target_params=1e9, target_step_seconds=0.01), "record 1: missing field 'lookahead'"),
    (dict(draft_params="big", draft_step_seconds=0.01), "record 1: field 'draft_params'"),
    (dict(draft_params=1e8, draft_step_seconds=-1), "record 1: field 'draft_step_seconds'"),
    (dict(params=1e8, seconds=0.01, batch=0), "record 1: field 'batch'"),
    (dict(params=1e8, seconds=0.01, precision="fp7"), "record 1: field 'precision'"),
    (dict(seconds=0.01), "record 1: missing field 'params'"),
])
def test_bad_step_records_are_named(record, match):
    with pytest.raises(ValueError, match=match):
        calibration.step_time_rows([record])


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"params": 1e9, "seconds": 0.01}\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        calibration.read_step_times(path)
    with pytest.raises(ValueError, match="fields: cannot calibrate 'peak_flops'"):
        calibration.calibrate(hw.hardware_preset("H100"), calibration.step_time_rows([{"params": 1e9, "seconds": 0.01}]),
                     fields=("peak_flops",))


def test_step_time_file_errors_keep_their_words(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"params": 1e9, "seconds": 0.01}\n\n{oops\n')
    with pytest.raises(ValueError) as err:
        calibration.read_step_times(path)
    assert str(err.value) == (f"{path}: line 3: not JSON (Expecting property name enclosed in "
                              "double quotes)")
    # A line that is JSON but no object is a record without named fields.
    path.write_text('{"params": 1e9, "seconds": 0.01}\n\n[1, 2]\n')
    with pytest.raises(ValueError) as err:
        calibration.read_step_times(path)
    assert str(err.value) == f"{path}: record 2: expected an object with named fields, got [1, 2]"
    with pytest.raises(FileNotFoundError):
        calibration.read_step_times(tmp_path / "missing.jsonl")


def test_last_line_without_newline_is_a_record_and_the_file_is_left_alone(tmp_path):
    path = tmp_path / "steps.jsonl"
    text = '{"params": 1e9, "seconds": 0.01}\n{"params": 2e9, "seconds": 0.02}'
    path.write_text(text)
    rows = calibration.read_step_times(path)
    np.testing.assert_array_equal(np.asarray(rows.num_params), [1e9, 2e9])
    assert path.read_text() == text


@pytest.mark.parametrize("data, words", [
    ('{"params": 1e9, "seconds": 0.01, "device": "caf\xe9"}\n'.encode("latin-1"),
     ("line 1", "not UTF-8", "0xE9")),
    ('{"params": 1e9, "seconds": 0.01}\n'.encode("utf-16"), ("UTF-16", "save it as UTF-8")),
    (b'{"params": 1e9, "seconds": 0.01}\n{"params": 2e9, "seconds": 0.\x0002}\n', ("line 2", "binary")),
])
def test_step_time_files_that_are_not_utf8_are_one_value_error(tmp_path, data, words):
    path = tmp_path / "steps.jsonl"
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        calibration.read_step_times(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert not isinstance(err.value, UnicodeDecodeError)
    for word in words:
        assert word in message, (word, message)


def test_step_times_with_a_bom_read_like_without(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"params": 1e9, "seconds": 0.01}\n[1]\n')
    with pytest.raises(ValueError, match="record 2: expected an object"):
        calibration.read_step_times(path)
    path.write_bytes(b'\xef\xbb\xbf{"params": 1e9, "seconds": 0.01}\n')
    np.testing.assert_array_equal(np.asarray(calibration.read_step_times(path).num_params), [1e9])


def test_a_folder_is_an_os_error_the_cli_words_as_cannot_read(tmp_path):
    with pytest.raises(IsADirectoryError):
        calibration.read_step_times(tmp_path)
