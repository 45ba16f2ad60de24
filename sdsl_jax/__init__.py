"""sdsl-jax: speculative decoding scaling laws as differentiable JAX functions."""
