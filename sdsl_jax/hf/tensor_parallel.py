"""Tensor-parallel annotations of a checkpoint's params (Megatron-LM's split, Shoeybi et al. 2019).

Attention is split by whole heads. The query, key and value projections are
stored with their heads axis apart, kernels [L, D, H, Dh] and biases
[L, H, Dh], and are split along ``H``: each device holds whole heads and
computes their attention without talking to the others. The attention output
projection, kernel [L, H, Dh, D], is split along its ``H`` to match: each
device yields a partial sum over its heads, and one all-reduce joins them.
Splitting the heads axis rather than the flattened ``H * Dh`` width means that
when the number of heads does not divide by the mesh size (28 query heads on
8 devices), the rule's axis does not divide either and the leaf is replicated
(sdsl_jax/decoding/sharding.py) instead of cut through a head, which would
make XLA reshard the activations inside every attention.

The MLP's first projections (gate and up, or in) are column-parallel, split
along their units ([L, D, F] along ``F``), and its last (down or out) is
row-parallel, split along its input ([L, F, D] along ``F``). Biases added
after a sum (the attention output's, the MLP output's), embeddings, norms and
the output head are replicated.

The rules are pairs (regular expression over a leaf's path, partition spec)
as `Decoder.param_sharding` reads them (sdsl_jax/decoding/decoder.py); every
block leaf is stacked over a leading layer axis, which is never split.
"""

from __future__ import annotations

from typing import Iterable

MODEL_AXIS = "model"

Rules = tuple[tuple[str, tuple[str | None, ...]], ...]


def tensor_parallel_rules(stack: str, to_heads: Iterable[str], from_heads: Iterable[str],
                          column: Iterable[str], row: Iterable[str]) -> Rules:
    """Rules for the layer-stacked subtree ``stack`` (names are the subtree's keys).

    Args:
      to_heads: projections into attention heads (kernel [L, D, H, Dh], bias
        [L, H, Dh]), split by heads.
      from_heads: projections out of the heads (kernel [L, H, Dh, D]), split by heads.
      column: MLP projections split by output units (kernel [L, D, F], bias [L, F]).
      row: MLP projections split by input units (kernel [L, F, D]).
    """
    to_heads, from_heads = "|".join(to_heads), "|".join(from_heads)
    column, row = "|".join(column), "|".join(row)
    return (
        (rf"{stack}/({to_heads})/kernel", (None, None, MODEL_AXIS, None)),
        (rf"{stack}/({to_heads})/bias", (None, MODEL_AXIS, None)),
        (rf"{stack}/({from_heads})/kernel", (None, MODEL_AXIS, None, None)),
        (rf"{stack}/({column})/kernel", (None, None, MODEL_AXIS)),
        (rf"{stack}/({column})/bias", (None, MODEL_AXIS)),
        (rf"{stack}/({row})/kernel", (None, MODEL_AXIS, None)),
    )
