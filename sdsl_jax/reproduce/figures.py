"""The report's figures, drawn by :mod:`sdsl_jax.plots` from the run's outputs.

One function per figure of the paper (sdsl-theory.md, section 8), plus the
pre-training fit over the scored checkpoints. Each returns a matplotlib
Figure; :func:`draw_all` saves them as ``figures/<name>.png`` and ``.pdf``
and returns {name: PNG path relative to the run directory}, or the error
that kept one from being drawn.
"""

from __future__ import annotations

import os

import numpy as np

from sdsl_jax.reproduce.presets import params as size_params

LAWS_SOURCE = "the end-to-end fit of this run (laws.json)"


def pretraining_figure(points: list[dict], coefficients: dict, r2: float):
    """Validation loss against training tokens for every size, with the fitted law's curves."""
    from sdsl_jax.laws import pretraining as pretraining_law
    from sdsl_jax.plots import style
    from sdsl_jax.common.quantities import format_count

    law = pretraining_law.PretrainingLaw(**{k: v["estimate"] for k, v in coefficients.items()})
    sizes = sorted({p["params"] for p in points})
    fig, (ax,) = style.new_figure(width=7.0, height=4.8)
    palette = style.colors(len(sizes))
    tokens = np.array([p["tokens"] for p in points], np.float64)
    grid = np.geomspace(tokens.min() / 1.5, tokens.max() * 1.5, 100)
    for k, n in enumerate(sizes):
        mine = [p for p in points if p["params"] == n]
        ax.plot([p["tokens"] for p in mine], [p["validation_loss"] for p in mine], "o",
                color=palette[k], mec="black", mew=0.6, label=f"N = {format_count(n)} (measured)")
        ax.plot(grid, np.asarray(pretraining_law.loss(law, float(n), grid)), "-", color=palette[k],
                lw=1.5)
    ax.set_xscale("log")
    style.count_axis(ax.xaxis)
    ax.set_xlabel("training tokens D (bytes seen)")
    ax.set_ylabel("held-out loss L (nats per byte)")
    style.grid(ax)
    ax.legend(fontsize=8)
    ax.set_title("Pre-training law fitted to the checkpoints of every size\n"
                 f"L = {law.irreducible_loss:.3g} + {law.param_coeff:.3g} / N^{law.param_exponent:.3g}"
                 f" + {law.data_coeff:.3g} / D^{law.data_exponent:.3g}  (R^2 {r2:.3f}); lines: the fit",
                 fontsize=10)
    return fig


def draw_all(root: str, preset, outputs: dict) -> dict:
    """Draw and save every figure; {name: "figures/<name>.png"} or {name: "error: ..."}."""
    from sdsl_jax.fitting.laws import load_laws
    from sdsl_jax.estimation.measurements import read_measurements
    from sdsl_jax.plots import style
    from sdsl_jax.plots.acceptance_curves import plot_acceptance
    from sdsl_jax.plots.acceptance_plane import plot_acceptance_plane
    from sdsl_jax.plots.draft_size import plot_draft_size
    from sdsl_jax.plots.latency import latency_table, plot_latency
    from sdsl_jax.plots.throughput_curves import plot_throughput

    laws = load_laws(os.path.join(root, outputs["acceptance"]["laws_file"]))
    measurements = read_measurements(os.path.join(root, outputs["measure"]["rows_file"]))
    tokens = float(preset.train_tokens)
    targets = sorted(preset.targets, key=size_params)
    target_params = [float(size_params(t)) for t in targets]
    smallest = min(size_params(d) for d in preset.drafts)
    n_star = {t["target"]: t["n_star"] for t in outputs["predict"]["targets"]}
    interval = "auto" if preset.figure_bands else "none"

    def latency():
        records = [dict(draft_model=e["draft"], target_model=e["target"],
                        draft_params=e["draft_params"], target_params=e["target_params"],
                        draft_tokens=tokens, target_tokens=tokens, prompts=e["prompts"],
                        optimal_draft_params=n_star[e["target"]],
                        **{f"{m}{end}": e[f"{m}{end}"] for m in ("ttft", "tpot", "ttot")
                           for end in ("", "_low", "_high")})
                   for e in outputs["latency"]["table"]]
        return plot_latency(latency_table(records, "latency.jsonl"), laws, laws_source=LAWS_SOURCE,
                            title="Measured latency against the distance from the predicted N*\n"
                                  "(N* from the FLOP law fitted in this run; 95% intervals across prompts)")

    draws = {
        "pretraining": lambda: pretraining_figure(outputs["train"]["loss_points"],
                                                  outputs["pretraining"]["coefficients"],
                                                  outputs["pretraining"]["r2"]),
        "plane": lambda: plot_acceptance_plane(measurements, laws.acceptance_law,
                                               law_source=LAWS_SOURCE),
        "throughput": lambda: plot_throughput(
            laws, target_params, tokens, tokens, points=80, laws_source=LAWS_SOURCE,
            interval=interval,
            draft_params=np.geomspace(smallest / 10, max(target_params), 80)),
        "acceptance": lambda: plot_acceptance(measurements, laws, laws_source=LAWS_SOURCE,
                                              interval=interval),
        "latency": latency,
        "draft-size": lambda: plot_draft_size(
            laws, target_params=max(target_params), target_tokens=tokens, draft_tokens=tokens,
            target_params_range=(min(target_params) / 3, max(target_params) * 30),
            draft_tokens_range=(tokens / 10, tokens * 100), target_tokens_range=(tokens / 10, tokens * 100),
            points=preset.draft_size_points, interval=interval, show_rule=False,
            laws_source=LAWS_SOURCE),
    }
    folder = os.path.join(root, "figures")
    os.makedirs(folder, exist_ok=True)
    drawn = {}
    for name, draw in draws.items():
        try:
            style.save(draw(), os.path.join(folder, name))
            drawn[name] = f"figures/{name}.png"
        except (ValueError, FloatingPointError) as err:
            drawn[name] = f"error: {err}"
    return drawn
