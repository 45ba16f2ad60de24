"""The laws file a user gives `sdsl plan --laws`: every way it can be wrong is named by its key."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.fitting.laws import (COEFFICIENTS, FittedLaws, LawsFileError, laws_from_vector,
                                   load_laws, save_laws)
from sdsl_jax.common.tables import InputFileError

# The published coefficients' sizes: a scale near 400, exponents near 0.3.
VECTOR = np.array([1.82, 482.0, 0.35, 2085.0, 0.37, 0.0021, -0.0013, 0.71])


def _covariance():
    # Standard errors spanning the coefficients' magnitudes, correlated: a
    # covariance shaped like a real fit's, whose raw eigenvalues span 1e15.
    rng = np.random.default_rng(0)
    root = rng.normal(size=(8, 8))
    correlation = np.corrcoef(root @ root.T)
    se = np.abs(VECTOR) * 0.05
    return correlation * np.outer(se, se)


def _laws(**fields):
    pre, acc = laws_from_vector(jnp.asarray(VECTOR))
    return FittedLaws(pretraining_law=pre, acceptance_law=acc, **fields)


def _document(tmp_path, **fields):
    path = tmp_path / "laws.json"
    save_laws(path, _laws(covariance=jnp.asarray(_covariance()), covariance_df=jnp.asarray(11.0),
                          samples=jnp.asarray(VECTOR + np.random.default_rng(1).normal(size=(4, 8)) * 1e-3),
                          **fields))
    return path, json.loads(path.read_text())


def _refused(tmp_path, document, *words, raw=None):
    path = tmp_path / "edited.laws.json"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(json.dumps(document))
    with pytest.raises(LawsFileError) as info:
        load_laws(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def test_a_saved_file_loads_with_its_covariance_and_samples(tmp_path):
    path, _ = _document(tmp_path)
    laws = load_laws(path)
    np.testing.assert_allclose(np.asarray(laws.covariance), _covariance(), rtol=1e-6)
    assert float(laws.covariance_df) == 11.0 and laws.samples.shape == (4, 8)


def test_a_newer_version_asks_for_an_upgrade(tmp_path):
    _, document = _document(tmp_path)
    _refused(tmp_path, {**document, "version": 99}, "newer sdsl-jax", "version 99", "upgrade")
    _refused(tmp_path, {**document, "version": "2"}, "version", "'2'")
    _refused(tmp_path, {**document, "version": 0}, "version", "0")
    # Both versions this code reads load.
    old = dict(document, version=1)
    del old["covariance_kind"], old["covariance_df"]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    assert load_laws(tmp_path / "v1.json").covariance_df is None


def test_another_format_is_not_a_laws_file(tmp_path):
    _, document = _document(tmp_path)
    _refused(tmp_path, {**document, "format": "sdsl-jax measurement summary"}, "format",
             "not a laws file")


@pytest.mark.parametrize("key, value, words", [
    ("covariance", [[1.0] * 8] * 7 + [[1.0] * 7 + [None]], ("covariance[7][7]", "None")),
    ("covariance", [[1.0] * 8] * 7 + [[1.0] * 7 + [1e400]], ("covariance[7][7]", "finite")),
    ("covariance", [[1.0] * 8] * 7 + [[1.0] * 7], ("'covariance'", "8 columns")),
    ("bootstrap_samples", [[1.0] * 8, [1.0] * 7 + ["x"]], ("bootstrap_samples[1][7]", "'x'")),
    ("bootstrap_samples", [[1.0] * 8, [1.0] * 7 + [1e400]], ("bootstrap_samples[1][7]", "finite")),
    ("bootstrap_samples", [[1.0] * 8], ("'bootstrap_samples'", "shape (1, 8)")),
    ("covariance_df", -3, ("covariance_df", "-3")),
])
def test_values_must_be_finite_numbers_named_by_their_key_path(tmp_path, key, value, words):
    _, document = _document(tmp_path)
    _refused(tmp_path, {**document, key: value}, *words)


def test_non_finite_coefficients_written_as_nan_or_infinity_are_named(tmp_path):
    # json.dumps writes NaN and -Infinity, as a hand edit or another tool might.
    _, document = _document(tmp_path)
    bad = {**document, "pretraining_law": {**document["pretraining_law"], "param_exponent": float("nan")}}
    _refused(tmp_path, bad, "pretraining_law.param_exponent", "finite", "nan")
    bad = {**document, "acceptance_law": {**document["acceptance_law"], "target_coeff": -float("inf")}}
    _refused(tmp_path, bad, "acceptance_law.target_coeff", "finite", "inf")


def test_an_asymmetric_covariance_names_the_entries(tmp_path):
    _, document = _document(tmp_path)
    covariance = _covariance()
    covariance[5, 1] *= 1.5
    _refused(tmp_path, {**document, "covariance": covariance.tolist()}, "not symmetric",
             "covariance[5][1]", "covariance[1][5]")


def test_a_covariance_that_is_not_positive_semi_definite_is_refused(tmp_path):
    _, document = _document(tmp_path)
    covariance = _covariance()
    # Correlation 1.5 between two coefficients: no random vector has it.
    covariance[2, 4] = covariance[4, 2] = 1.5 * np.sqrt(covariance[2, 2] * covariance[4, 4])
    _refused(tmp_path, {**document, "covariance": covariance.tolist()}, "positive semi-definite")
    covariance = _covariance()
    covariance[6, 6] = -covariance[6, 6]
    _refused(tmp_path, {**document, "covariance": covariance.tolist()}, "covariance[6][6]",
             "target_coeff", "negative")


def test_rounding_and_fixed_coefficients_are_not_refused(tmp_path):
    _, document = _document(tmp_path)
    covariance = _covariance()
    # As saved from float32, and with the irreducible loss held fixed (its row 0).
    covariance = covariance.astype(np.float32).astype(np.float64)
    values, vectors = np.linalg.eigh(covariance)
    covariance = (vectors * np.clip(values, 0, None)) @ vectors.T  # eigenvalues >= 0 up to rounding
    covariance[0, :] = covariance[:, 0] = 0.0
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({**document, "covariance": covariance.tolist()}))
    assert load_laws(path).covariance.shape == (8, 8)


def test_covariance_kind_must_agree_with_its_degrees_of_freedom(tmp_path):
    _, document = _document(tmp_path)
    _refused(tmp_path, {**document, "covariance_kind": "iid"}, "covariance_kind", "'iid'",
             "covariance_df")
    _refused(tmp_path, {**document, "covariance_kind": "robust"}, "covariance_kind", "'robust'")


def test_coefficient_order_must_be_this_codes(tmp_path):
    _, document = _document(tmp_path)
    _refused(tmp_path, {**document, "coefficient_order": list(reversed(COEFFICIENTS))},
             "coefficient_order")


@pytest.mark.parametrize("raw, words", [
    ('{"version": 2}'.encode("utf-16"), ("UTF-16", "save it as UTF-8")),
    (b'{"format": "caf\xe9"}', ("line 1", "0xE9", "UTF-8")),
    (b"\x89PNG\r\n\x1a\n\x00\x00", ("PNG",)),
    (b'{"version": 2, "version": 1}', ("'version'", "twice")),
    (b'{\n "version": 2,\n}', ("line 3", "column", "not valid JSON")),
    (b"", ("empty",)),
])
def test_files_that_are_not_json_text_are_one_line(tmp_path, raw, words):
    _refused(tmp_path, None, *words, raw=raw)


def test_a_bom_is_fine_and_folders_and_missing_files_are_named(tmp_path):
    path, _ = _document(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_laws(path).covariance is not None
    with pytest.raises(LawsFileError, match="is a folder, expected a file"):
        load_laws(tmp_path)
    with pytest.raises(LawsFileError, match="missing.json: cannot read it: no such file"):
        load_laws(tmp_path / "missing.json")
    # The CLI catches LawsFileError; it is also the reading layer's error.
    assert issubclass(LawsFileError, InputFileError)
