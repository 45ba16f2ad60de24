"""Model sizes by name, families of sizes, and their exact parameter counts.

Every model is the same decoder-only transformer (see ``transformer.py``) at
a different width and depth, sharing the byte tokenizer so any two of them
form a (draft, target) pair. Sizes are named by their rough parameter count;
:func:`param_counts` gives the exact figure, which is what the laws use as N
(draft_params) and M (target_params).

Per layer the model holds, with width d and MLP width f (biases: none):
  attention  q, k, v and output projections   4 d^2
  MLP        up and down projections          2 d f
  norms      two RMSNorm scales                2 d
and once: the token embedding V d (tied: it is also the output layer) and the
final RMSNorm's d. Rotary position embeddings have no parameters.
"""

from __future__ import annotations

import dataclasses

from sdsl_jax.models import tokenizer


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one transformer; frozen and hashable (compiled code is cached on it).

    Attributes:
      d_model: residual width d.
      num_layers: transformer blocks.
      num_heads: attention heads; d_model / num_heads is the head width (even, for rotary).
      d_ff: MLP hidden width f.
      vocab_size: V, the byte tokenizer's 257 by default.
      rope_base: rotary embedding base frequency.
      norm_eps: RMSNorm epsilon.
      dtype: parameter and activation dtype.
    """

    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    vocab_size: int = tokenizer.VOCAB_SIZE
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("d_model", "num_layers", "num_heads", "d_ff", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"ModelConfig: d_model {self.d_model} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig: head width {self.head_dim} must be even (rotary "
                             "embeddings rotate pairs of channels)")
        if self.dtype not in ("float32", "float64", "bfloat16", "float16"):
            raise ValueError(f"ModelConfig.dtype must be a float dtype name, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}")
        return cls(**data)


def _size(d_model: int, num_layers: int, num_heads: int) -> ModelConfig:
    return ModelConfig(d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                       d_ff=4 * d_model)


# name -> architecture; exact counts in the README table and from param_counts().
SIZES: dict[str, ModelConfig] = {
    "10k": _size(16, 2, 2),
    "30k": _size(32, 2, 2),
    "100k": _size(48, 3, 3),
    "200k": _size(64, 4, 4),
    "600k": _size(96, 5, 6),
    "1m": _size(128, 6, 4),
    "3m": _size(192, 7, 6),
    "6m": _size(256, 8, 8),
    "10m": _size(320, 8, 5),
    "30m": _size(512, 10, 8),
    "60m": _size(640, 12, 10),
    "100m": _size(768, 15, 12),
    "300m": _size(1024, 24, 16),
}

# Peak AdamW learning rate per size: wider models need smaller steps.
LEARNING_RATES: dict[str, float] = {
    "10k": 3e-3, "30k": 3e-3, "100k": 3e-3, "200k": 3e-3, "600k": 2e-3, "1m": 2e-3,
    "3m": 1.5e-3, "6m": 1.2e-3, "10m": 1e-3, "30m": 8e-4, "60m": 6e-4, "100m": 5e-4,
    "300m": 3e-4,
}

# A family is the list of sizes trained together, smallest first: tiny for tests
# (seconds), small for real runs on a CPU (a 1m model trains at a few thousand
# tokens/s there), medium and large for accelerators.
FAMILIES: dict[str, tuple[str, ...]] = {
    "tiny": ("10k", "30k", "100k"),
    "small": ("30k", "100k", "200k", "600k", "1m"),
    "medium": ("1m", "3m", "10m", "30m"),
    "large": ("10m", "30m", "100m", "300m"),
}


def model_config(size: str) -> ModelConfig:
    """The architecture of a named size; a ValueError lists the known names."""
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown model size {size!r} (known: {', '.join(SIZES)})") from None


def family_sizes(family: str) -> tuple[str, ...]:
    """The size names of a family; a ValueError lists the known families."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})") from None


def param_counts(config: ModelConfig) -> dict[str, int]:
    """Exact parameter counts: ``total`` and ``non_embedding`` (total less the V d embedding)."""
    d, f = config.d_model, config.d_ff
    per_layer = 4 * d * d + 2 * d * f + 2 * d
    embedding = config.vocab_size * d
    non_embedding = config.num_layers * per_layer + d
    return {"total": embedding + non_embedding, "non_embedding": non_embedding}
