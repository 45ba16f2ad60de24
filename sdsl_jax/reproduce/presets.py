"""Presets of the end-to-end replication: which models, how long they train, how they are measured.

A preset fixes everything a run depends on, so a run directory is tied to
one preset (a rerun with another is refused, see :mod:`.manifest`). Sizes
are names from :data:`sdsl_jax.models.config.SIZES` (or the tiny preset's
:data:`ARCHITECTURES`); every draft is paired with every target larger than it.

* ``tiny``: one-layer models of 3k-40k parameters, seconds of training on a
  handful of files; for the tests. Its numbers mean nothing.
* ``small``: the CPU replication, about ten minutes on two cores: drafts
  10k/30k/100k, targets 100k/200k, 246k training tokens each.
* ``large``: the same on an accelerator: drafts 1m/3m/10m, targets 30m/100m,
  16M training tokens each.
"""

from __future__ import annotations

import dataclasses
import math

from sdsl_jax.models.config import SIZES, ModelConfig, param_counts

# The tiny preset's models: one layer each, 3k to 40k parameters. Nearly all of
# a tiny run's time is XLA compiling these models into training steps, decoding
# loops and scores, and that time grows with the layer count; one layer keeps
# the end-to-end test short. Named by width, apart from the SIZES names.
ARCHITECTURES: dict[str, ModelConfig] = {
    f"w{d}": ModelConfig(d_model=d, num_layers=1, num_heads=2, d_ff=4 * d) for d in (8, 16, 32, 48)
}


class PresetError(ValueError):
    """A preset that cannot run (unknown name, sizes, or settings)."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything a replication run depends on.

    Attributes:
      name: the preset's name (``--preset``).
      drafts, targets: size names; each draft is measured against each larger target.
      steps, batch_size, seq_len: training of every model (same batches for all).
      learning_rate: peak AdamW rate; None takes each size's default.
      loss_points: checkpoints scored on held-out text per model, evenly spaced
        in steps: the (N, D, loss) points of the pre-training fit.
      eval_tokens: held-out tokens each checkpoint is scored on.
      prompts, prompt_len, max_new_tokens, lookahead, temperature: the
        speculative loop's measurement of every pair (batch 1).
      teacher_forced_documents, teacher_forced_length: held-out windows for the
        teacher-forced cross-check of every pair's acceptance (0: skipped).
      bootstrap: resamples of the end-to-end fit (0: delta-method intervals only).
      hardware: the roofline preset calibrated on the measured step times.
      figure_bands: uncertainty bands on the law figures (each costs a compiled
        derivative of the planner; the tiny preset leaves them out).
      draft_size_points: configurations per sweep of the N*-against-M, D, D' figure (5: the
        three sweeps fit the bucket of 16 the N* stage compiled the planner for; more costs
        another compilation).
      seed: weights, batches, prompts and sampling.
    """

    name: str
    drafts: tuple[str, ...]
    targets: tuple[str, ...]
    steps: int
    batch_size: int
    seq_len: int
    loss_points: int
    eval_tokens: int
    prompts: int
    prompt_len: int
    max_new_tokens: int
    lookahead: int
    temperature: float
    teacher_forced_documents: int
    teacher_forced_length: int
    bootstrap: int
    hardware: str
    learning_rate: float | None = None
    figure_bands: bool = True
    draft_size_points: int = 16
    seed: int = 0

    def __post_init__(self):
        for size in self.drafts + self.targets:
            if size not in SIZES and size not in ARCHITECTURES:
                raise PresetError(f"preset {self.name}: unknown size {size!r} (known: "
                                  f"{', '.join(list(SIZES) + list(ARCHITECTURES))})")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate)
                                                   and self.learning_rate > 0):
            raise PresetError(f"preset {self.name}: learning_rate must be positive")
        for name in ("steps", "batch_size", "seq_len", "loss_points", "eval_tokens", "prompts",
                     "prompt_len", "max_new_tokens", "lookahead"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PresetError(f"preset {self.name}: {name} must be a positive integer, got {value!r}")
        if self.steps % self.loss_points:
            raise PresetError(f"preset {self.name}: steps ({self.steps}) must be a multiple of "
                              f"loss_points ({self.loss_points})")
        if self.max_new_tokens < 2 or self.prompt_len < 2:
            raise PresetError(f"preset {self.name}: max_new_tokens and prompt_len must be >= 2")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise PresetError(f"preset {self.name}: temperature must be >= 0")
        if len(self.targets) < 2:
            raise PresetError(f"preset {self.name}: the replication needs at least two targets")
        if len(self.pairs()) < 4:
            raise PresetError(f"preset {self.name}: {len(self.pairs())} (draft, target) pairs; the "
                              "acceptance law needs at least 4")

    @property
    def checkpoint_every(self) -> int:
        return self.steps // self.loss_points

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def train_tokens(self) -> int:
        """D and D': every model of the run is trained on this many tokens."""
        return self.steps * self.tokens_per_step

    def sizes(self) -> tuple[str, ...]:
        """Every model to train, smallest first."""
        return tuple(sorted(set(self.drafts + self.targets), key=params))

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(draft, target) for every draft smaller than a target, by target then draft."""
        return tuple((d, t) for t in sorted(self.targets, key=params)
                     for d in sorted(self.drafts, key=params) if params(d) < params(t))

    def drafts_of(self, target: str) -> tuple[str, ...]:
        return tuple(d for d, t in self.pairs() if t == target)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def architecture(size: str) -> ModelConfig:
    """The architecture of a size name: one of SIZES, or of the tiny preset's ARCHITECTURES."""
    if size in ARCHITECTURES:
        return ARCHITECTURES[size]
    if size in SIZES:
        return SIZES[size]
    raise PresetError(f"unknown size {size!r} (known: {', '.join(list(SIZES) + list(ARCHITECTURES))})")


def params(size: str) -> int:
    """The exact parameter count of a size name."""
    return param_counts(architecture(size))["total"]


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny", drafts=("w8", "w16"), targets=("w32", "w48"), steps=24, batch_size=4,
        seq_len=32, loss_points=3, eval_tokens=1024, prompts=3, prompt_len=16, max_new_tokens=8,
        lookahead=2, temperature=1.0, teacher_forced_documents=4, teacher_forced_length=32,
        bootstrap=0, hardware="CPU", learning_rate=1e-2, figure_bands=False, draft_size_points=5),
    "small": Preset(
        name="small", drafts=("10k", "30k", "100k"), targets=("100k", "200k"), steps=120,
        batch_size=16, seq_len=128, loss_points=5, eval_tokens=16384, prompts=24, prompt_len=64,
        max_new_tokens=64, lookahead=3, temperature=1.0, teacher_forced_documents=32,
        teacher_forced_length=256, bootstrap=0, hardware="CPU", draft_size_points=5),
    "large": Preset(
        name="large", drafts=("1m", "3m", "10m"), targets=("30m", "100m"), steps=2000,
        batch_size=32, seq_len=256, loss_points=5, eval_tokens=131072, prompts=64,
        prompt_len=128, max_new_tokens=128, lookahead=4, temperature=1.0,
        teacher_forced_documents=128, teacher_forced_length=512, bootstrap=200, hardware="H100"),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
