"""Run the replication's stages in order, skipping those a run directory has finished.

Each stage is a function of the :class:`~sdsl_jax.reproduce.context.Context`
returning a JSON-ready dict; the pipeline writes it to
``stages/<name>.json`` and marks the stage finished in the manifest
(:mod:`.manifest`). A stage that was interrupted runs again and picks up
what it had written (checkpoints, runs files, loss points).
"""

from __future__ import annotations

import importlib
import os
import time
from typing import NamedTuple

from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.manifest import RunDirectory
from sdsl_jax.reproduce.presets import Preset


class Stage(NamedTuple):
    name: str
    title: str
    module: str  # sdsl_jax.reproduce.<module>.run(ctx) -> dict


STAGES = (
    Stage("train", "train the drafts and targets", "train_stage"),
    Stage("pretraining", "fit the pre-training law to the checkpoints", "pretraining_stage"),
    Stage("measure", "measure every (draft, target) pair", "measure_stage"),
    Stage("acceptance", "fit the acceptance law (and both laws end to end)", "acceptance_stage"),
    Stage("predict", "predict N* for every target", "predict_stage"),
    Stage("latency", "compare measured latency with the predicted optimum", "latency_stage"),
    Stage("report", "write the report and its figures", "report"),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def corpus_spec(paths, include_stdlib: bool) -> dict:
    """How the corpus is named in the manifest (absolute paths, so a rerun elsewhere matches)."""
    return {"paths": [os.path.abspath(p) for p in paths], "include_stdlib": bool(include_stdlib)}


def reproduce(preset: Preset, out_dir: str, *, corpus_paths=(), include_stdlib: bool = True,
              progress: bool | None = None, log=None, stop_after: str | None = None) -> dict:
    """Run (or resume) the replication of ``preset`` in ``out_dir``.

    Args:
      preset: a :class:`~sdsl_jax.reproduce.presets.Preset`.
      out_dir: the run directory; created, or reopened to resume.
      corpus_paths, include_stdlib: the corpus, as for ``sdsl train``.
      progress: tqdm bars (None: on a terminal only).
      log: a function of one line for progress (default: stderr).
      stop_after: end after this stage (for stepping through a run).

    Returns:
      {"out": out_dir, "ran": stages run now, "skipped": stages finished
      earlier, "report": the report's path or None}.

    Raises:
      ReproduceError: an unusable ``out_dir`` (another preset's run, not
        writable, ...) or a stage that cannot go on; the message says why.
    """
    spec = corpus_spec(corpus_paths, include_stdlib)
    run = RunDirectory.open(out_dir, preset.to_json(), spec)
    ctx = Context(run=run, preset=preset, corpus_paths=tuple(spec["paths"]),
                  include_stdlib=include_stdlib, progress=progress)
    if log is not None:
        ctx.log = log
    try:
        return _run_stages(run, ctx, stop_after)
    finally:
        run.close()


def _run_stages(run: RunDirectory, ctx: Context, stop_after: str | None) -> dict:
    ran, skipped = [], []
    total = len(STAGES)
    began = time.perf_counter()
    for number, stage in enumerate(STAGES, 1):
        label = f"[{number}/{total}] {stage.name}"
        if run.finished(stage.name):
            ctx.log(f"{label}: finished earlier ({run.stage(stage.name).get('seconds', 0):.1f} s), "
                    "skipped")
            skipped.append(stage.name)
        else:
            before = run.start(stage.name)
            ctx.log(f"{label}: {stage.title}" + (f" (resuming, attempt {before + 1})" if before else ""))
            start = time.perf_counter()
            module = importlib.import_module(f"sdsl_jax.reproduce.{stage.module}")
            output = module.run(ctx)
            seconds = time.perf_counter() - start
            run.finish(stage.name, output, seconds, load_average=round(os.getloadavg()[0], 2))
            ctx.log(f"{label}: done in {seconds:.1f} s (elapsed {time.perf_counter() - began:.0f} s)")
            ran.append(stage.name)
        if stop_after == stage.name:
            break
    report = os.path.join(run.root, "report.md") if run.finished("report") else None
    return {"out": run.root, "ran": ran, "skipped": skipped, "report": report}
