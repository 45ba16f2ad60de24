"""``sdsl reproduce``: the end-to-end replication of the SDSL result on models trained here.

The chain the paper validates (sdsl-theory.md, sections 5-7), run on a family
of byte-level transformers trained on the offline corpus:

  1. train       a ladder of drafts and at least two targets (train_stage)
  2. pretraining fit L(N, D) to every size's checkpoints (pretraining_stage)
  3. measure     every (draft, target) pair: the speculative loop (acceptance
                 and latency), and teacher-forced as a cross-check (measure_stage)
  4. acceptance  fit alpha = A x + B y + C, and both laws end to end (acceptance_stage)
  5. predict     N* for every target from the fitted laws, with an interval (predict_stage)
  6. latency     where the measured optimum falls against the FLOP-law N* and the
                 wall-clock N* of a roofline calibrated on measured step times (latency_stage)
  7. report      report.md with every number, its interval, the figures and a
                 plain verdict (report, figures)

    from sdsl_jax.reproduce import get_preset, reproduce
    reproduce(get_preset("small"), "out/small")   # rerun to resume after a kill

Presets are in :mod:`.presets`; the run directory's layout and how a killed
run resumes are in :mod:`.manifest`.
"""

from sdsl_jax.reproduce.manifest import ReproduceError, RunDirectory
from sdsl_jax.reproduce.pipeline import STAGE_NAMES, STAGES, reproduce
from sdsl_jax.reproduce.presets import PRESETS, Preset, PresetError, get_preset

__all__ = ["PRESETS", "Preset", "PresetError", "ReproduceError", "RunDirectory", "STAGES",
           "STAGE_NAMES", "get_preset", "reproduce"]
