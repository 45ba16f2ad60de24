"""The paper's figures, one module per figure family; each function returns a matplotlib Figure.

    plot_acceptance_plane(measurements, law=None)      # acceptance_plane.py: alpha(x, y) over points
    plot_throughput(laws, target_params, target_tokens)  # throughput_curves.py: S(N), N* marked
    plot_acceptance(measurements, laws)                # acceptance_curves.py: alpha vs draft perplexity
    plot_latency(read_latency(path), laws)             # latency.py: TTFT/TPOT/TTOT vs |N - N*| / M
    plot_draft_size(laws)                              # draft_size.py: N*, N*/M vs M, D, D'
    save(fig, "out/stem")                              # style.py: out/stem.png and out/stem.pdf

``laws`` is a :class:`~sdsl_jax.fitting.laws.FittedLaws`: from ``load_laws`` (its
covariance or bootstrap samples become uncertainty bands) or ``preset_laws()``.
matplotlib is imported only when a figure is drawn.
"""

from sdsl_jax.plots.acceptance_curves import plot_acceptance
from sdsl_jax.plots.acceptance_plane import plot_acceptance_plane
from sdsl_jax.plots.bands import preset_laws
from sdsl_jax.plots.draft_size import plot_draft_size
from sdsl_jax.plots.latency import LatencyError, LatencyTable, read_latency, plot_latency
from sdsl_jax.plots.style import save
from sdsl_jax.plots.throughput_curves import plot_throughput

__all__ = ["LatencyError", "LatencyTable", "plot_acceptance", "plot_acceptance_plane",
           "plot_draft_size", "plot_latency", "plot_throughput", "preset_laws", "read_latency", "save"]
