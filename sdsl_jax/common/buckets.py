"""Padded sizes, so that one compiled program serves a range of data sizes.

XLA compiles a program per shape. Padding a table to the next power of two
(at least a floor) makes every size between two powers share one program,
at most doubling the work; the callers mask or weigh out the padding.
"""

from __future__ import annotations


def bucket(size: int, floor: int = 1) -> int:
    """The padded length of a table of ``size`` entries: the next power of two, at least ``floor``."""
    return max(int(floor), 1 << max(int(size) - 1, 0).bit_length())
