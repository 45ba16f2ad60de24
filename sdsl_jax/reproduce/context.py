"""What every stage of a replication run is given: the preset, the run directory, the corpus."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

from sdsl_jax.reproduce.manifest import ReproduceError, RunDirectory
from sdsl_jax.reproduce.presets import Preset


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Context:
    """A stage's inputs.

    Attributes:
      run: the run directory (earlier stages' outputs: ``run.output(name)``).
      preset: the preset.
      corpus_paths, include_stdlib: the corpus, as for ``sdsl train``.
      progress: tqdm bars (None: on a terminal only).
      log: status lines (default: stderr).
    """

    run: RunDirectory
    preset: Preset
    corpus_paths: tuple[str, ...] = ()
    include_stdlib: bool = True
    progress: bool | None = None
    log: Callable[[str], None] = _stderr
    _corpus: object = dataclasses.field(default=None, repr=False)

    def corpus(self):
        """The training corpus, loaded once (its held-out side gives every prompt and score)."""
        if self._corpus is None:
            from sdsl_jax.models import corpus as corpus_lib
            try:
                self._corpus = corpus_lib.load_corpus(self.corpus_paths,
                                                      include_stdlib=self.include_stdlib)
            except corpus_lib.CorpusError as err:
                raise ReproduceError(str(err)) from None
        return self._corpus

    def model_dir(self, size: str) -> str:
        return os.path.join(self.run.root, "models", size)
