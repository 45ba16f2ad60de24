"""The bracket solver's chunking of large batches (solver.in_chunks): the chunk
sizes it picks, and that the chunks come back in the batch's order and shape."""

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.planning import solver


def test_chunk_size_divides_the_batch_and_prefers_aligned_sizes():
    assert solver.chunk_size(1000) is None  # too few to chunk
    assert solver.chunk_size(2 * 4096) == 4096
    # About 400 KiB per array: 51,200 float64 or 102,400 float32 configurations.
    assert solver.chunk_size(1_000_000) == 40_000  # 1e6 = 40000 x 25, and 32 | 40000
    assert solver.chunk_size(1_000_000, 4) == 100_000
    assert solver.chunk_size(1 << 20) == 65536
    assert solver.chunk_size(1 << 20, 4) == 131072
    assert solver.chunk_size(1_000_003) is None  # prime: one pass


def test_chunks_return_in_the_batch_order():
    # An elementwise stand-in for the solve, with a shared scalar leaf and a
    # leaf that broadcasts: each output must be its own configuration's.
    shape = (4, 2048)  # 8192 configurations: two chunks of 4096
    a = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    ctx = {"a": a, "scale": jnp.float32(2.0), "row": jnp.arange(4, dtype=jnp.float32)[:, None]}
    solve = lambda c, lo, hi: c["scale"] * c["a"] + c["row"] + lo - hi
    lo, hi = a + 1, jnp.float32(3.0)
    chunked = jax.jit(lambda c, lo, hi: solver.in_chunks(solve, c, lo, hi))(ctx, lo, hi)
    np.testing.assert_array_equal(chunked, solve(ctx, lo, hi))

