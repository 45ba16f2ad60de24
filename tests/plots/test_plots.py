"""`sdsl plot`: every figure is written as PNG and PDF, and what it draws is the library's answer.

The plotted arrays are read back from the returned matplotlib Figures (artists
carry gids) and compared with independent computations: numpy least squares
for the fitted lines and plane, a brute-force maximum over the lookahead for
the throughput curves, percentiles and finite differences for the bands.
Every planner call in this file has at most 16 configurations, so they share
one compiled planner (sdsl_jax.plots pads to a bucket of 16).
"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sdsl_jax.planning import flop as planner, linear_rule
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.fitting.laws import FittedLaws, laws_from_vector, load_laws, save_laws
from sdsl_jax.fitting.synthetic import synthetic_measurements
from sdsl_jax.estimation.measurements import MeasurementSet, write_measurements
from sdsl_jax.plots import bands, latency
from sdsl_jax.plots.acceptance_curves import _plane_line
from sdsl_jax.plots import (plot_acceptance, plot_acceptance_plane, plot_draft_size, plot_latency,
                            plot_throughput)

Z_95 = 1.959963984540054
PRESET = bands.preset_laws()


@pytest.fixture(scope="module", autouse=True)
def x64():
    # The CLI plans in float64; the API calls here do too, so they share its compilations.
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots")
    measured = synthetic_measurements(num_targets=3, num_drafts=5, seed=2)
    write_measurements(measured, folder / "measurements.csv")
    # Laws with a known uncertainty: a small covariance and a few resamples around the presets.
    coeffs = np.asarray(PRESET.coefficients, np.float64)
    rng = np.random.default_rng(0)
    samples = coeffs * (1 + 0.03 * rng.standard_normal((8, 8)))
    covariance = np.diag((0.02 * coeffs) ** 2)
    laws = FittedLaws(pretraining_law=PRESET.pretraining_law, acceptance_law=PRESET.acceptance_law,
                      covariance=covariance, samples=samples)
    save_laws(folder / "laws.json", laws)
    _write_csv(folder / "latency.csv", _latency_rows())
    return folder


def _write_csv(path, rows):
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _latency_rows():
    """Six drafts for one 13B target; TPOT falls as the law's speedup rises."""
    rows = []
    for k, n in enumerate([125e6, 350e6, 1.3e9, 2.7e9, 6.7e9, 500e6]):
        tpot = 0.03 / (1 + 0.1 * k)
        ttft = 0.05 + 0.01 * k
        rows.append(dict(draft_model=f"d{k}", draft_params=n, target_params="13B",
                         draft_tokens="300B", target_tokens="300B", family="A" if k < 3 else "B",
                         ttft=ttft, ttft_low=ttft - 0.002, ttft_high=ttft + 0.003,
                         tpot=tpot, tpot_low=tpot * 0.97, tpot_high=tpot * 1.02,
                         ttot=ttft + 100 * tpot, prompts=20))
    return rows


def _gid(ax, gid):
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {len(found)} artists"
    return found[0]


def _container(ax, gid):
    found = [c for c in ax.containers if c.lines[0].get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def _bar_ends(container):
    """(low, high) of each vertical error bar in an ErrorbarContainer."""
    segments = container.lines[2][0].get_segments()
    return np.array([s[0][1] for s in segments]), np.array([s[1][1] for s in segments])


def _plan(target_params, draft_tokens, target_tokens, vector=None):
    """The planner's answer under the presets (or a coefficient vector), called the way
    sdsl_jax.plots calls it so the compilation is shared: padded to 16 configurations,
    coefficients given per configuration (the planner is elementwise in both)."""
    arrays = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64))
                                   for v in (target_params, draft_tokens, target_tokens)))
    n = arrays[0].size
    vector = np.asarray(PRESET.coefficients if vector is None else vector, np.float64)
    pre, acc = laws_from_vector(np.broadcast_to(vector, (16, 8)))
    plan = planner.optimal_draft_size(*(np.resize(a, 16) for a in arrays),
                                      pretraining_law=pre, acceptance_law=acc)
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], plan)


def _xy(line):
    return np.asarray(line.get_xdata(), np.float64), np.asarray(line.get_ydata(), np.float64)


# ---------------------------------------------------------------- the command

@pytest.mark.parametrize("figure, extra", [
    ("plane", ["{m}"]),
    ("throughput", ["--target-params", "7B", "70B", "--target-tokens", "2T", "--points", "40"]),
    ("acceptance", ["{m}", "--laws", "{laws}"]),
    ("latency", ["{lat}"]),
    ("draft-size", ["--points", "5", "--target-params", "13B", "--target-tokens", "2T"]),
])
@pytest.mark.slow
def test_every_figure_is_written_as_png_and_pdf(files, run_cli, figure, extra):
    paths = dict(m=files / "measurements.csv", laws=files / "laws.json", lat=files / "latency.csv")
    stem = files / f"out-{figure}"
    argv = ["plot", figure, *(e.format(**paths) for e in extra), "--out", f"{stem}.png", "--dpi", "60"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    assert str(png) in out and str(pdf) in out


@pytest.mark.parametrize("argv, needle", [
    (["plot", "plane", "{dir}/missing.csv"], "missing.csv: cannot read"),
    (["plot", "latency", "{dir}/measurements.csv"], "missing required column(s): one of ttft, tpot, ttot"),
    (["plot", "throughput", "--laws", "{dir}/latency.csv"], "--laws"),
    (["plot", "throughput", "--out", "{dir}/no/such/folder/x"], "does not exist"),
    (["plot", "throughput", "--target-params", "7B", "13B", "--target-tokens", "1T", "2T", "3T"],
     "one per target"),
    (["plot", "throughput", "--interval", "bootstrap"], "bootstrap samples"),
    (["plot", "draft-size", "--target-params-range", "10B", "1B"], "1 <= LOW < HIGH"),
    (["plot", "nosuch"], "invalid choice"),
])
def test_mistakes_are_one_line_and_exit_2(files, run_cli, argv, needle):
    code, out, err = run_cli([a.format(dir=files) for a in argv])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


# ---------------------------------------------------------------- throughput

def _speedup_brute_force(n, m, d, d_target):
    """max over a fine lookahead grid of the speedup, from the laws in plain numpy."""
    def ppl(params, tokens):
        return np.exp(1.817 + 482.0 / params**0.348 + 2085.0 / tokens**0.366)
    alpha = np.clip(-0.0067 * ppl(n, d) + 0.013 * ppl(m, d_target) + 0.642, 0, 1 - 2**-20)
    gamma = np.linspace(0, 40, 40001)[:, None]
    s = (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * n / m + 1))
    return s.max(axis=0)


@pytest.mark.slow
def test_throughput_marks_the_planners_optimum_on_a_correct_curve():
    targets = np.array([7e9, 70e9])
    fig = plot_throughput(PRESET, targets, 2e12, points=40)
    (ax,) = fig.axes
    plan = _plan(targets, 2e12, 2e12)
    for k, m in enumerate(targets):
        n_star, s_star = _xy(_gid(ax, f"nstar:{k}"))
        np.testing.assert_allclose(n_star, [plan.draft_params[k]], rtol=1e-12)
        np.testing.assert_allclose(s_star, [plan.speedup[k]], rtol=1e-12)
        n, s = _xy(_gid(ax, f"curve:{k}"))
        assert n.max() < m
        # The curve is the chain the module documents (brute force over gamma: 1e-3 steps).
        np.testing.assert_allclose(s, _speedup_brute_force(n, m, 2e12, 2e12), rtol=1e-6)
        # The marker sits on the curve's peak: nothing on the curve beats it.
        assert s.max() <= s_star[0] * (1 + 1e-12)
        peak = np.argmax(s)
        assert n[max(peak - 1, 0)] <= n_star[0] <= n[min(peak + 1, n.size - 1)]


@pytest.mark.slow
def test_throughput_in_tokens_per_flop_divides_by_2m():
    fig = plot_throughput(PRESET, [7e9, 70e9], 2e12, metric="tokens-per-flop", points=40)
    speed = plot_throughput(PRESET, [7e9, 70e9], 2e12, points=40)
    for k, m in enumerate([7e9, 70e9]):
        per_flop = _gid(fig.axes[0], f"curve:{k}").get_ydata()
        np.testing.assert_allclose(per_flop, _gid(speed.axes[0], f"curve:{k}").get_ydata() / (2 * m),
                                   rtol=1e-12)


@pytest.mark.slow
def test_throughput_interval_on_n_star_is_the_spread_over_resampled_laws(files):
    laws = load_laws(files / "laws.json")
    targets = np.array([7e9, 70e9])
    fig = plot_throughput(laws, targets, 2e12, points=40, confidence=0.8)
    (ax,) = fig.axes
    # The planner under each resampled coefficient vector in turn, then numpy percentiles.
    per_sample = [_plan(targets, 2e12, 2e12, vector).draft_params for vector in np.asarray(laws.samples)]
    low, high = np.percentile(per_sample, [10, 90], axis=0)
    for k in range(2):
        bar = _container(ax, f"nstar:{k}").lines[2][0].get_segments()[0]
        np.testing.assert_allclose([bar[0][0], bar[1][0]], [low[k], high[k]], rtol=1e-9)
        assert _gid(ax, f"band:{k}")  # the curve's band is drawn too


def test_bands_are_percentiles_or_delta_method_of_the_coefficients(files):
    laws = load_laws(files / "laws.json")
    x = np.linspace(10, 30, 7)
    # The plane's line for a 13B target: cheap to compile, nonlinear in the pre-training coefficients.
    quantity = lambda v: _plane_line(v, x, 13e9, 2e12)
    low, high = bands.band(quantity, laws, "bootstrap", 0.9)
    values = np.stack([np.asarray(quantity(s)) for s in np.asarray(laws.samples)])
    np.testing.assert_allclose(low, np.percentile(values, 5, axis=0), rtol=1e-12)
    np.testing.assert_allclose(high, np.percentile(values, 95, axis=0), rtol=1e-12)
    # Delta method, plain and on the log scale, against central finite differences.
    theta = np.asarray(laws.coefficients, np.float64)
    center = np.asarray(quantity(theta))
    for log in (False, True):
        f = (lambda v: np.log(np.asarray(quantity(v)))) if log else (lambda v: np.asarray(quantity(v)))
        steps = 1e-6 * np.abs(theta)
        grads = np.stack([(f(theta + h * e) - f(theta - h * e)) / (2 * h)
                          for h, e in zip(steps, np.eye(8))], axis=-1)
        sigma = np.sqrt(np.einsum("ni,ij,nj->n", grads, np.asarray(laws.covariance), grads))
        low, high = bands.band(quantity, laws, "delta", 0.95, log=log)
        expect = ((center * np.exp(-Z_95 * sigma), center * np.exp(Z_95 * sigma)) if log
                  else (center - Z_95 * sigma, center + Z_95 * sigma))
        np.testing.assert_allclose(low, expect[0], rtol=1e-6)
        np.testing.assert_allclose(high, expect[1], rtol=1e-6)
    # A covariance clustered by model comes with degrees of freedom: Student t's quantile.
    clustered = laws.replace(covariance_df=jnp.asarray(7.0))
    low, high = bands.band(quantity, clustered, "delta", 0.95)
    low_z, high_z = bands.band(quantity, laws, "delta", 0.95)
    np.testing.assert_allclose((high - low) / (high_z - low_z), scipy.stats.t.ppf(0.975, 7) / Z_95,
                               rtol=1e-5)
    assert "t with 7 df" in bands.band_label("delta", clustered, 0.95)


def test_interval_method_follows_what_the_laws_carry(files):
    laws = load_laws(files / "laws.json")
    assert bands.interval_method(laws) == "bootstrap"
    # Laws clustered by model: the delta interval, whose coverage is checked, even with samples.
    assert bands.interval_method(laws.replace(covariance_df=jnp.asarray(23.0))) == "delta"
    assert bands.interval_method(laws.replace(samples=None)) == "delta"
    assert bands.interval_method(PRESET) is None and bands.interval_method(laws, "none") is None
    with pytest.raises(ValueError, match="covariance"):
        bands.interval_method(PRESET, "delta")
    # A failed resample (NaN) is dropped rather than poisoning every percentile.
    broken = np.asarray(laws.samples).copy()
    broken[0, 3] = np.nan
    assert bands.finite_samples(laws.replace(samples=broken)).samples.shape == (7, 8)


# ---------------------------------------------------------------- acceptance

@pytest.fixture(scope="module")
def interval_set():
    """A set with reported intervals (no counts): its per-target fits are 1/sigma^2 weighted."""
    base = synthetic_measurements(num_targets=3, num_drafts=5, seed=4)
    alpha = np.asarray(base.acceptance)
    half = np.random.default_rng(1).uniform(0.005, 0.03, alpha.size)
    cols = {k: v for k, v in base.columns.items() if k not in ("accepted", "trials")}
    return MeasurementSet.from_columns(cols, acceptance=alpha, acceptance_low=alpha - half,
                                       acceptance_high=alpha + half, source="intervals")


def test_acceptance_lines_are_weighted_least_squares_per_target(interval_set):
    fig = plot_acceptance(interval_set, PRESET)
    (ax,) = fig.axes
    cols = interval_set.columns
    sigma = (cols["acceptance_high"] - cols["acceptance_low"]) / (2 * Z_95)
    names = list(dict.fromkeys(interval_set.target_names))
    for k, name in enumerate(names):
        mine = interval_set.target_names == name
        x, alpha = cols["draft_perplexity"][mine], cols["acceptance"][mine]
        slope, intercept = np.polyfit(x, alpha, 1, w=1 / sigma[mine])
        line = _gid(ax, f"fit:{k}")
        np.testing.assert_allclose(line.get_ydata(), slope * line.get_xdata() + intercept,
                                   rtol=1e-6, atol=1e-8)
        points = _container(ax, f"points:{k}")
        np.testing.assert_array_equal(points.lines[0].get_xdata(), x)
        low, high = _bar_ends(points)
        np.testing.assert_allclose(low, cols["acceptance_low"][mine], rtol=1e-12)
        np.testing.assert_allclose(high, cols["acceptance_high"][mine], rtol=1e-12)
        # The plane's line at the target's measured perplexity, dashed beside the fit.
        plane = _gid(ax, f"plane:{k}")
        y = cols["target_perplexity"][mine].mean()
        np.testing.assert_allclose(plane.get_ydata(), -0.0067 * plane.get_xdata() + 0.013 * y + 0.642,
                                   rtol=1e-12)


def test_acceptance_from_laws_alone_draws_each_targets_line_and_band(files):
    laws = load_laws(files / "laws.json")
    targets = [7e9, 70e9]
    fig = plot_acceptance(None, laws, target_params=targets, target_tokens=1e12,
                          draft_perplexity_range=(10, 30), interval="bootstrap")
    (ax,) = fig.axes
    for k, m in enumerate(targets):
        line = _gid(ax, f"law:{k}")
        x = np.asarray(line.get_xdata())
        assert x[0] == 10 and x[-1] == 30
        y = float(pretraining.perplexity(pretraining.BESIROGLU_2024, m, 1e12))
        np.testing.assert_allclose(line.get_ydata(), -0.0067 * x + 0.013 * y + 0.642, rtol=1e-12)
        per_sample = []
        for s in np.asarray(laws.samples):
            e, a, alpha_, b, beta, ca, cb, cc = s
            y_s = np.exp(e + a / m**alpha_ + b / 1e12**beta)
            per_sample.append(ca * x + cb * y_s + cc)
        np.testing.assert_allclose(_gid(ax, f"band:{k}:low").get_ydata(),
                                   np.percentile(per_sample, 2.5, axis=0), rtol=1e-10)
        np.testing.assert_allclose(_gid(ax, f"band:{k}:high").get_ydata(),
                                   np.percentile(per_sample, 97.5, axis=0), rtol=1e-10)


def test_acceptance_needs_data_or_laws():
    with pytest.raises(ValueError, match="measurement set, laws"):
        plot_acceptance(None, None)


# ---------------------------------------------------------------- plane

def test_plane_is_the_weighted_least_squares_plane_over_the_points(files):
    from sdsl_jax.estimation.measurements import read_measurements
    measured = read_measurements(files / "measurements.csv")
    fig = plot_acceptance_plane(measured)
    cols = measured.columns
    x, y, alpha = cols["draft_perplexity"], cols["target_perplexity"], np.asarray(measured.acceptance)
    # The counts give Wilson intervals; weights 1/sigma^2 as `sdsl fit` uses them.
    from sdsl_jax.fitting.data import acceptance_sigma
    w = 1 / acceptance_sigma(measured)
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    coeffs, *_ = np.linalg.lstsq(design * w[:, None], alpha * w, rcond=None)
    agreement = _gid(fig.axes[1], "agreement").get_offsets()
    np.testing.assert_allclose(agreement[:, 0], design @ coeffs, rtol=1e-6)
    np.testing.assert_allclose(agreement[:, 1], alpha, rtol=1e-12)
    # A given plane is drawn as given.
    fig = plot_acceptance_plane(measured, acceptance_lib.SDSL_2026)
    agreement = _gid(fig.axes[1], "agreement").get_offsets()
    np.testing.assert_allclose(agreement[:, 0], -0.0067 * x + 0.013 * y + 0.642, rtol=1e-12)
    assert fig.axes[0].name == "3d"


# ---------------------------------------------------------------- latency

@pytest.mark.slow
def test_latency_x_is_the_distance_from_the_planners_optimum(files):
    table = latency.read_latency(files / "latency.csv")
    fig = plot_latency(table, PRESET)
    assert len(fig.axes) == 3  # ttft, tpot, ttot
    n_star = float(_plan(13e9, 300e9, 300e9).draft_params[0])
    rows = _latency_rows()
    drafts = np.array([r["draft_params"] for r in rows])
    distance = np.abs(drafts - n_star) / 13e9
    ttft_ax, tpot_ax, ttot_ax = fig.axes
    for g, family in enumerate(["A", "B"]):
        mine = np.array([r["family"] == family for r in rows])
        points = _container(ttft_ax, f"points:{g}")
        np.testing.assert_allclose(points.lines[0].get_xdata(), distance[mine], rtol=1e-12)
        ttft = np.array([r["ttft"] for r in rows])[mine]
        np.testing.assert_allclose(points.lines[0].get_ydata(), 1e3 * ttft, rtol=1e-12)
        low, high = _bar_ends(points)
        np.testing.assert_allclose(low, 1e3 * (ttft - 0.002), rtol=1e-9)
        np.testing.assert_allclose(high, 1e3 * (ttft + 0.003), rtol=1e-9)
        tpot = _container(tpot_ax, f"points:{g}")
        np.testing.assert_allclose(tpot.lines[0].get_ydata(),
                                   1e3 * np.array([r["tpot"] for r in rows])[mine], rtol=1e-12)
        # ttot has no bounds in the file: drawn without bars (zero length).
        low, high = _bar_ends(_container(ttot_ax, f"points:{g}"))
        np.testing.assert_array_equal(low, high)
    best = int(np.argmin([r["tpot"] for r in rows]))
    np.testing.assert_allclose(_gid(tpot_ax, "minimum:0").get_xdata(), [distance[best]], rtol=1e-12)


def test_latency_takes_a_given_optimum_and_draws_only_the_columns_it_has(tmp_path):
    rows = [dict(draft_params=n, target_params=1e9, optimal_draft_params=2e8, tpot=t)
            for n, t in ((1e8, 0.02), (2e8, 0.015), (4e8, 0.018))]
    path = tmp_path / "lat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = plot_latency(latency.read_latency(path))
    (ax,) = fig.axes
    points = _container(ax, "points:0")
    np.testing.assert_allclose(points.lines[0].get_xdata(), [0.1, 0.0, 0.2], atol=1e-15)


@pytest.mark.parametrize("rows, needle", [
    ([dict(draft_params=1, ttft=1)], "missing required column(s): target_params"),
    ([dict(target_params=1, draft_params=1)], "one of ttft, tpot, ttot"),
    ([dict(target_params=1, draft_params=1, tpot=1, tpot_low=0.5)], "'tpot_high' is missing"),
    ([dict(target_params=1, draft_params=1, tpot=1, tpot_low=1.5, tpot_high=2)], "outside its interval"),
    ([dict(target_params=1, draft_params="big", tpot=1)], "row 1, column 'draft_params'"),
    ([dict(target_params=1, draft_params=1, tpot=-1)], "positive"),
    ([dict(target_params=1e9, draft_params=1e8, tpot=1)], "predicting N* needs column 'target_tokens'"),
])
def test_latency_table_errors_name_what_is_wrong(tmp_path, rows, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(latency.LatencyError, match=None) as err:
        plot_latency(latency.read_latency(path))
    assert needle in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("content, message", [
    ('{"a": 1}\n\n{bad\n', "line 3: not valid JSON (Expecting property name enclosed in double quotes)"),
    ('{"a": 1}\n[1]\n', "line 2: expected a JSON object"),
])
def test_latency_jsonl_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(latency.LatencyError) as err:
        latency.read_latency(path)
    assert str(err.value) == f"{path}: {message}"


def test_latency_optional_columns_may_be_absent(tmp_path):
    path = tmp_path / "lat.csv"
    _write_csv(path, [dict(draft_params="100M", target_params="1B", tpot="0.02", tpot_low="", tpot_high="",
                           ttft="")])
    table = latency.read_latency(path)
    assert table.metrics == ("ttft", "tpot") and np.isnan(table.columns["ttft"][0])
    assert table.columns["draft_params"][0] == 1e8


# ---------------------------------------------------------------- draft size

@pytest.mark.slow
def test_draft_size_panels_are_the_planner_over_each_sweep():
    fig = plot_draft_size(PRESET, target_params=13e9, target_tokens=2e12, points=5)
    assert len(fig.axes) == 6
    sweeps = {0: "target_params", 1: "draft_tokens", 2: "target_tokens"}
    base = dict(target_params=13e9, draft_tokens=2e12, target_tokens=2e12)
    ranges = dict(target_params=(1e9, 3e11), draft_tokens=(1e10, 1e14), target_tokens=(1e10, 1e14))
    for j, name in sweeps.items():
        values = np.geomspace(*ranges[name], 5)
        config = {k: np.full(5, v) for k, v in base.items()}
        config[name] = values
        plan = _plan(config["target_params"], config["draft_tokens"], config["target_tokens"])
        assert np.all(plan.pays)
        nstar = _gid(fig.axes[j], "nstar")
        np.testing.assert_allclose(nstar.get_xdata(), values, rtol=1e-12)
        np.testing.assert_allclose(nstar.get_ydata(), plan.draft_params, rtol=1e-12)
        np.testing.assert_allclose(_gid(fig.axes[3 + j], "ratio").get_ydata(),
                                   np.asarray(plan.draft_params) / config["target_params"], rtol=1e-12)
    rule = [l for l in fig.axes[0].get_lines() if "rule" in str(l.get_label())]
    np.testing.assert_allclose(rule[0].get_ydata(), 2.71e-3 * np.geomspace(1e9, 3e11, 5) + 87e6, rtol=1e-12)
    assert linear_rule.PUBLISHED_SLOPE == 2.71e-3


def test_plot_refuses_to_overwrite_a_figure_and_replaces_it_with_overwrite(tmp_path, run_cli):
    stem = tmp_path / "fig"
    png, pdf = tmp_path / "fig.png", tmp_path / "fig.pdf"
    pdf.write_bytes(b"an earlier figure")
    argv = ["plot", "throughput", "--target-params", "7B", "--target-tokens", "2T", "--points", "8",
            "--dpi", "30", "--out", str(stem)]
    code, out, err = run_cli(argv)
    # Refused before anything is drawn: one line, nothing written, the old file as it was.
    assert code == 2 and "fig.pdf exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert pdf.read_bytes() == b"an earlier figure" and not png.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf"]
    code, out, err = run_cli(argv + ["--overwrite"])
    assert code == 0, err
    assert pdf.read_bytes()[:5] == b"%PDF-" and png.read_bytes()[:4] == b"\x89PNG"
    # No temporary file is left beside them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]
    (tmp_path / "dir.png").mkdir()
    code, _, err = run_cli(argv[:-1] + [str(tmp_path / "dir"), "--overwrite"])
    assert code == 2 and "is a folder" in err


# ---------------------------------------------------------------- latency files a user gives

_LATENCY_HEADER = "draft_params,target_params,optimal_draft_params,tpot"


@pytest.mark.parametrize("name, data, words", [
    ("lat.csv", f"{_LATENCY_HEADER},draft_model\n1e8,1e9,2e8,0.02,caf\xe9\n".encode("latin-1"),
     ("line 2", "0xE9", "UTF-8")),
    ("lat.csv", f"{_LATENCY_HEADER}\n1e8,1e9,2e8,0.02\n".encode("utf-16"), ("UTF-16",)),
    ("lat.jsonl", '{"draft_params": 1e8, "family": "caf\xe9"}\n'.encode("latin-1"), ("line 1", "0xE9")),
    ("lat.csv", b"PK\x03\x04\x14\x00\x06\x00", ("zip archive",)),
    ("lat.csv", f"{_LATENCY_HEADER}\n1e8,1e9,2e8,0.02\x00\n".encode(), ("NUL", "binary")),
    ("lat.csv", f"{_LATENCY_HEADER},tpot\n1e8,1e9,2e8,0.02,0.03\n".encode(), ("'tpot'", "twice")),
    ("lat.csv", f"{_LATENCY_HEADER}\n1e8,1e9,2e8,0.02,0.5\n".encode(),
     ("row 1", "5 fields", "column 5 has no header")),
    ("lat.csv", f"{_LATENCY_HEADER}\n1e8,1e9,2e8,0.02\n1e8,1e9,2e8\n".encode(),
     ("row 2", "missing column 'tpot'")),
    ("lat.csv", b"draft_params,target_params,optimal_draft_params,tpot,ttf\n1,2,3,4,5\n",
     ("'ttf'", "did you mean 'ttft'?")),
    ("lat.jsonl", b'{"draft_params": 1, "target_params": 2, "TPOT": 0.1}\n', ("'TPOT'", "'tpot'")),
    ("lat.csv", b"", ("empty",)),
    ("lat.csv", f"{_LATENCY_HEADER}\n".encode(), ("only a header",)),
    ("lat.txt", f"{_LATENCY_HEADER}\n".encode(), (".csv, .jsonl",)),
])
def test_latency_files_a_user_gives_are_refused_in_one_line(tmp_path, name, data, words):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(latency.LatencyError) as err:
        latency.read_latency(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert "format=" not in message
    for word in words:
        assert word in message, (word, message)


def test_latency_reads_a_bom_and_keeps_ignoring_columns_far_from_known_ones(tmp_path):
    path = tmp_path / "lat.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{_LATENCY_HEADER},notes\n1e8,1e9,2e8,0.02,fast\n".encode())
    table = latency.read_latency(path)
    assert table.columns["tpot"][0] == 0.02 and "notes" not in table.columns


def test_latency_folder_and_missing_file(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(latency.LatencyError, match="is a folder"):
        latency.read_latency(tmp_path / "d.csv")
    with pytest.raises(latency.LatencyError, match="no such file"):
        latency.read_latency(tmp_path / "none.csv")


def test_latency_parquet_with_a_null_is_read_in_one_thread(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    path = tmp_path / "lat.parquet"
    pq.write_table(pa.table({"draft_params": [1e8, None], "target_params": [1e9, 1e9],
                             "tpot": [0.02, 0.03]}), path)
    with pytest.raises(latency.LatencyError, match=r"row 2, column 'draft_params': a value is required"):
        latency.read_latency(path)
