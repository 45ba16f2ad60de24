"""The bracket solver's chunking of large batches (solver.in_chunks): the chunk
sizes it picks, and that the chunks come back in the batch's order and shape."""

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.planning import solver


def test_chunk_size_divides_the_batch_and_prefers_aligned_sizes():
    assert solver.chunk_size(1000) is None  # too few to chunk
    assert solver.chunk_size(2 * 4096) == 4096
    assert solver.chunk_size(1_000_000) == 20_000  # 1e6 = 20000 x 50, and 32 | 20000
    assert solver.chunk_size(1 << 20) == 16384
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
