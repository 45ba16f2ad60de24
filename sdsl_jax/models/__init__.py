"""Small byte-level transformers for measuring acceptance: configs, model, pure functions, checkpoints.

Imports flax; the rest of sdsl_jax does not need it, so nothing outside the
decoding stack imports this package eagerly.
"""

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.models.store import load_card, load_decoder
from sdsl_jax.models.config import (FAMILIES, LEARNING_RATES, SIZES, ModelConfig, family_sizes,
                                    model_config, param_counts)
from sdsl_jax.models.functional import (DTYPES, TransformerForward, TransformerInitCache,
                                        abstract_params, apply, as_decoder, cast_params,
                                        count_params, init_params)
from sdsl_jax.models.transformer import KVCache, Transformer, init_cache

__all__ = [
    "CheckpointError", "load_card", "load_decoder",
    "FAMILIES", "LEARNING_RATES", "SIZES", "ModelConfig", "family_sizes", "model_config",
    "param_counts", "DTYPES", "TransformerForward", "TransformerInitCache", "abstract_params",
    "apply", "as_decoder", "cast_params", "count_params", "init_params", "KVCache",
    "Transformer", "init_cache",
]
