"""Stage 1: train every size of the preset, scoring each checkpoint on held-out text.

Every model sees the same batches for the same number of steps
(:mod:`sdsl_jax.models.training`), so the family differs in size only. A checkpoint
is saved every ``steps / loss_points`` steps and scored on the held-out
windows the final validation loss uses; the scores are the (N, D, loss)
points of the pre-training fit, D varying with the step. Caveat: an early
checkpoint of a cosine schedule has not had its learning rate annealed, so
its loss is higher than a run trained to that D would reach, which biases
the data exponent b (Hoffmann et al. 2022 make the same point). It costs no
extra training, which is what lets the preset fit in minutes on a CPU.

Scores are appended to ``train/loss_points.jsonl`` as they are computed, so
a killed run keeps them; one lost between a checkpoint's save and its score
is recomputed from the checkpoint if it is still kept.
"""

from __future__ import annotations

import logging
import os
import time

from sdsl_jax.common.io import append_jsonl, read_jsonl
from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.presets import architecture, params as size_params

CAVEAT = ("D varies through intermediate checkpoints of one cosine schedule per size, not "
          "separate runs trained to each D: an early checkpoint's learning rate has not been "
          "annealed, so its loss overstates what a run trained to that D would reach, which "
          "biases the data term (B, b).")


def run(ctx: Context) -> dict:
    import jax
    import numpy as np

    from sdsl_jax.models import corpus as corpus_lib, training
    from sdsl_jax.models import store as ckpt
    from sdsl_jax.models.functional import abstract_params

    preset = ctx.preset
    corpus = ctx.corpus()
    summary = corpus.summary()
    ctx.log(f"  corpus: {summary['train_tokens']:,} training tokens in "
            f"{summary['train_documents']} documents, {summary['validation_tokens']:,} held out "
            f"in {summary['validation_documents']}")
    settings = training.TrainSettings(
        steps=preset.steps, batch_size=preset.batch_size, seq_len=preset.seq_len,
        seed=preset.seed, checkpoint_every=preset.checkpoint_every,
        eval_tokens=preset.eval_tokens, learning_rate=preset.learning_rate,
        log_every=max(1, min(10, preset.checkpoint_every)))
    # The windows train_model scores its final checkpoint on, so the last point
    # of each size is its card's validation loss.
    windows = corpus_lib.evaluation_windows(corpus.validation, preset.seq_len + 1,
                                            max(1, preset.eval_tokens // preset.seq_len))
    points_path = ctx.run.path("train", "loss_points.jsonl")
    points = {(p["model"], p["step"]): p for p in read_jsonl(points_path)}
    family = f"reproduce-{preset.name}"
    cards = {}

    def record(size, step, loss):
        point = {"model": size, "step": int(step), "tokens": int(step) * preset.tokens_per_step,
                 "params": size_params(size), "validation_loss": float(loss)}
        points[(size, int(step))] = point
        append_jsonl(points_path, point)

    with jax.enable_x64(False):
        for size in preset.sizes():
            config = architecture(size)
            model_dir = ctx.model_dir(size)

            def score(step, params, size=size, config=config):
                if step < preset.steps and (size, step) not in points:
                    record(size, step, training.validation_loss(config, params, windows,
                                                                preset.batch_size))

            ctx.log(f"  {size}: {size_params(size):,} parameters, {preset.steps} steps of "
                    f"{preset.tokens_per_step:,} tokens")
            began = time.perf_counter()
            card = training.train_model(size, corpus, settings, model_dir, family=family,
                                        config=config, progress=ctx.progress, log=ctx.log,
                                        on_checkpoint=score)
            if card["resumed_from"] is None:
                ctx.log(f"  {size}: already trained")
            else:
                ctx.log(f"  {size}: held-out loss {card['validation_loss']:.4f} nats (perplexity "
                        f"{card['perplexity']:.3f}) in {time.perf_counter() - began:.1f} s")
            cards[size] = card
            if (size, preset.steps) not in points:
                record(size, preset.steps, card["validation_loss"])
            missing = [s for s in range(preset.checkpoint_every, preset.steps, preset.checkpoint_every)
                       if (size, s) not in points]
            if missing:
                # Killed between a save and its score: score the checkpoint if it is kept.
                absl = logging.getLogger("absl")
                level = absl.level
                absl.setLevel(logging.ERROR)
                try:
                    manager = ckpt.checkpoint_manager(model_dir, writable=False)
                    kept = set(manager.all_steps())
                    for step in missing:
                        if step in kept:
                            restored, _, _ = ckpt.restore_checkpoint(manager, step,
                                                                     abstract_params(config))
                            record(size, step, training.validation_loss(
                                config, restored, windows, preset.batch_size))
                finally:
                    absl.setLevel(level)

    ordered = sorted(points.values(), key=lambda p: (p["params"], p["step"]))
    models = {}
    for size, card in cards.items():
        models[size] = {
            "params": int(card["params"]), "non_embedding_params": int(card["non_embedding_params"]),
            "tokens": int(card["tokens"]), "validation_loss": float(card["validation_loss"]),
            "perplexity": float(card["perplexity"]), "bits_per_byte": float(card["bits_per_byte"]),
            "validation_tokens": int(card["validation_tokens"]),
            "tokens_per_second": card.get("tokens_per_second"),
            "layers": architecture(size).num_layers, "width": architecture(size).d_model,
            "dir": os.path.relpath(ctx.model_dir(size), ctx.run.root)}
    expected = len(preset.sizes()) * preset.loss_points
    return {"models": models, "loss_points": ordered, "expected_loss_points": expected,
            "train_tokens": preset.train_tokens, "tokens_per_step": preset.tokens_per_step,
            "corpus": summary, "caveat": CAVEAT,
            "loss_spread": float(np.ptp([p["validation_loss"] for p in ordered]))}
