"""examples/fit_from_csv.py on its bundled data: it runs, and what it prints is right.

Run in-process (its main() takes argv and scopes float64 itself), so it
shares the compiled fits with tests/cli/test_fit.py and tests/fitting/test_fitting.py:
the bundled CSV has their design's shape (12 targets x 12 drafts).
"""

import contextlib
import io
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

from sdsl_jax.laws import acceptance as acceptance_law, pretraining as pretraining_law
from sdsl_jax.fitting import COEFFICIENTS
from sdsl_jax.estimation.measurements import read_measurements
from sdsl_jax.common.quantities import parse_count

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fit_from_csv.py"
# The laws the bundled (synthetic) data were drawn from.
TRUTH = dict({f: getattr(pretraining_law.BESIROGLU_2024, f) for f in COEFFICIENTS[:5]},
             **{f: getattr(acceptance_law.SDSL_2026, f) for f in COEFFICIENTS[5:]})
NUMBER = r"(-?[0-9.]+(?:e[-+]?\d+)?)"


@pytest.fixture(scope="module")
def printed():
    """What the example prints (run once: capsys is per test, so stdout is redirected here)."""
    main = runpy.run_path(str(EXAMPLE), run_name="example")["main"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--bootstrap", "50"])
    return out.getvalue()


def test_example_data_is_a_valid_measurement_set():
    data = read_measurements(EXAMPLE.parent / "data" / "measurements.csv")
    assert len(data) == 144
    cols = data.columns
    # Drafts smaller than targets, as in practice.
    assert np.max(cols["draft_params"]) < np.min(cols["target_params"])


@pytest.mark.slow
def test_example_prints_every_coefficient_with_both_intervals(printed):
    assert "144 measurements, 12 targets, 24 distinct models" in printed
    covered = 0
    for name in COEFFICIENTS:
        match = re.search(rf"^{name} +{NUMBER} +\[{NUMBER}, {NUMBER}\] +\[{NUMBER}, {NUMBER}\]$",
                          printed, re.MULTILINE)
        assert match, f"no line for {name} with two intervals in:\n{printed}"
        estimate, delta_low, delta_high, boot_low, boot_high = map(float, match.groups())
        assert delta_low <= estimate <= delta_high and boot_low <= estimate <= boot_high, name
        covered += delta_low <= TRUTH[name] <= delta_high
    # 95% intervals on data drawn from known laws: nearly all cover the truth
    # (7 of 8 or better happens with probability 0.94 even if all were independent).
    assert covered >= 7, printed


@pytest.mark.slow
def test_example_prints_n_star_with_intervals(printed):
    lines = re.findall(rf"N\* = (\S+), 95% interval \((\w+)\) (\S+) to (\S+) \(speedup {NUMBER}x",
                       printed)
    methods = {method: tuple(parse_count(v) for v in (low, n_star, high))
               for n_star, method, low, high, _ in lines}
    assert set(methods) == {"delta", "bootstrap"}, printed
    for method, (low, n_star, high) in methods.items():
        assert low < n_star < high, method
    # Both routes give the same point estimate and overlapping intervals.
    assert methods["delta"][1] == methods["bootstrap"][1]
    assert methods["delta"][0] < methods["bootstrap"][2] and methods["bootstrap"][0] < methods["delta"][2]
