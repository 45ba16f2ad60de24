"""A function with its static configuration bound, comparing equal by value.

`Decoder.forward` and `Decoder.init_cache` key compiled loops, so they must be
hashable. ``functools.partial`` is, but by identity: loading the same
architecture twice would compile twice. `Configured` compares (function,
config) by value, so equal configs share one compiled loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Configured:
    fn: Callable
    config: Any  # a frozen, hashable dataclass

    def __call__(self, *args):
        return self.fn(self.config, *args)
