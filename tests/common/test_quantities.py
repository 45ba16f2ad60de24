import pytest

from sdsl_jax.common.quantities import format_count, parse_count


@pytest.mark.parametrize("text,value", [
    ("70e9", 70e9), ("70B", 70e9), ("70b", 70e9), ("15T", 15e12), ("1.5t", 1.5e12),
    ("125M", 125e6), ("7G", 7e9), ("32k", 32e3), ("7000000", 7e6), (" 2.5 B ", 2.5e9),
    ("1_000", 1000.0), (".5T", 0.5e12), ("1e3M", 1e9),
])
def test_parse_count(text, value):
    assert parse_count(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text,match", [
    ("0", "> 0"), ("-5B", "> 0"), ("abc", "not a number"), ("", "not a number"),
    ("nan", "not a number"), ("inf", "not a number"), ("1e400", "finite"), ("70X", "not a number"),
    ("0B", "> 0"),
])
def test_parse_count_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_count(text)


def test_format_count():
    assert format_count(280987290.98) == "281M"
    assert format_count(70e9) == "70B"
    assert format_count(15e12) == "15T"
    assert format_count(512.0) == "512"
