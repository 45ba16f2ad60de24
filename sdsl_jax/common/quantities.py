"""Reading and writing the large counts the laws deal in: 70B, 15T, 1.5e12."""

from __future__ import annotations

import math
import re

# Counts in this field use decimal suffixes: K thousand, M million, B (or G)
# billion, T trillion. "m" is a million here, never a milli.
_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
_PATTERN = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([kKmMbBgGtTpP]?)\s*$")


def parse_count(text: str) -> float:
    """A positive count from '70e9', '70B', '1.5T', '125M' or '7000000'.

    Raises:
      ValueError: with a message saying what is wrong (not a number, zero,
        negative, infinite).
    """
    match = _PATTERN.match(str(text).replace("_", ""))
    if match is None:
        raise ValueError(f"not a number: {text!r} (use e.g. 70e9, 70B, 15T)")
    value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {text!r}")
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def format_count(value: float, digits: int = 3) -> str:
    """281000000.0 -> '281M'; three significant digits by default."""
    if not math.isfinite(value):
        return str(value)
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"
