"""Tensor-parallel annotations of a checkpoint's params (Megatron-LM's split, Shoeybi et al. 2019).

A block's first projections (queries, keys and values; the MLP's gate, up or
in) are column-parallel: their kernels [L, in, out] and biases [L, out] are
split along ``out``, so each device holds whole attention heads or a slice
of the MLP's hidden units and computes them without talking to the others.
The projections back to the model width (the attention output, the MLP's
down or out) are row-parallel: their kernels are split along ``in`` to match,
each device yields a partial sum, and one all-reduce per projection joins
them; their biases, added after the sum, stay whole. Everything else
(embeddings, norms, the output head) is replicated.

The rules are pairs (regular expression over a leaf's path, partition spec)
as `Decoder.param_sharding` reads them (sdsl_jax/decoding/decoder.py); every
block leaf is stacked over a leading layer axis, which is never split.
"""

from __future__ import annotations

from typing import Iterable

MODEL_AXIS = "model"

Rules = tuple[tuple[str, tuple[str | None, ...]], ...]


def tensor_parallel_rules(stack: str, column: Iterable[str], row: Iterable[str]) -> Rules:
    """Rules for the layer-stacked subtree ``stack``: ``column`` projections split by
    output, ``row`` projections by input (names are the subtree's keys)."""
    column, row = "|".join(column), "|".join(row)
    return (
        (rf"{stack}/({column})/kernel", (None, None, MODEL_AXIS)),
        (rf"{stack}/({column})/bias", (None, MODEL_AXIS)),
        (rf"{stack}/({row})/kernel", (None, MODEL_AXIS, None)),
    )
