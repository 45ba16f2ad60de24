"""The float64 Lambert W tables (sdsl_jax.laws.lambertw_table), against mpmath.

Three tables: W_0(x), W_-1(x), and W_-1(-exp(-1 - kappa)) by kappa (the
log-domain form the planners call).

Three things could be wrong with a shipped table of polynomials: the file
could differ from what its generator makes, a bin could be selected or
centred wrongly (an index off by one shows at the bin edges first), and the
packing of two coefficients into one word could lose bits.  The references
are mpmath at 40 digits; errors are measured against the exact value, in
ulp of the float64 nearest to it.  The method promises ~0.5 ulp (the final
rounding plus <= 0.03 ulp of interpolation and packing); the bound here,
0.75 ulp, leaves room for a processor without fused multiply-add and is
far inside the 4-ulp budget of test_lambertw.py.
"""

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from sdsl_jax.laws import lambertw_table as table
from sdsl_jax.laws.lambertw import lambertw, lambertw_negexp_parts

EXACT_ULP_BOUND = 0.75


def _reachable_mask(branch):
    names, exps, mids = table.bin_centres(branch)
    return names, exps, mids, np.array([table.reachable(str(n), int(e), float(m))
                                        for n, e, m in zip(names, exps, mids)])


@pytest.mark.parametrize("which", table.TABLES)
def test_shipped_table_is_what_the_generator_makes(which):
    """A sample of bins recomputed with mpmath: the first and last of every section, and 12 at random."""
    names, _, _, reach = _reachable_mask(which)
    ends = [i for s in np.unique(names) for i in (np.flatnonzero(names == s)[[0, -1]])]
    rng = np.random.default_rng(17 + table.TABLES.index(which))
    idx = np.unique(np.concatenate([ends, rng.choice(np.flatnonzero(reach), 12, replace=False)]))
    words, worst = table.build_table(which, idx)
    assert worst <= 0.05, f"interpolation and packing error {worst} ulp"
    shipped = np.stack(table.load_table(which), axis=1)[idx]
    for new, old in zip(words, shipped):
        a = np.array(table._unpack_row(new))
        b = np.array(table._unpack_row(old))
        hi = abs(a[0])
        # The polynomial's terms at |u| = 1/32 (hi, lo, c_1 / 32, ..., c_8 / 32^8),
        # each to 1e-3 ulp of W: mpmath's last digits may move between versions.
        scale = np.concatenate([[1.0, 1.0], (1 / 32.0) ** np.arange(1, table.DEGREE + 1)])
        assert np.all(np.abs(a - b) * scale <= 1e-3 * np.spacing(hi)), (a, b)


@functools.lru_cache(maxsize=None)
def _edge_points(branch, stride):
    """Both edges of every reachable bin (in every stride-th binade), a float either side, and the centre."""
    names, exps, mids, reach = _reachable_mask(branch)
    keep = reach & (exps % stride == 0)
    half = 1 / 32
    v = np.concatenate([np.ldexp(mids[keep] - half, exps[keep]), np.ldexp(mids[keep], exps[keep])])
    sec = np.concatenate([names[keep], names[keep]])
    v = np.concatenate([v, np.nextafter(v, 0), np.nextafter(v, np.inf)])
    sec = np.concatenate([sec, sec, sec])
    x = np.where(sec == "near", v - table.INV_E_HI, np.where(sec == "negative", -v, v))
    x = x[x > -table.INV_E_HI]
    if branch == 0:
        x = x[np.isfinite(x) & (np.abs(x) >= table.TINY_X)]
        # The near/far switch itself, and the ends of the positive section.
        x = np.concatenate([x, np.nextafter(table.X_NEAR, [-1, 0, 0]) * [1, 1, 0] + [0, 0, table.X_NEAR],
                            [np.finfo(np.float64).max, table.TINY_X]])
    else:
        x = x[x <= -np.finfo(np.float64).tiny]
        x = np.concatenate([x, [table.X_NEAR, np.nextafter(table.X_NEAR, 0), -np.finfo(np.float64).tiny]])
    x = np.unique(x)
    with mpmath.workdps(40):
        ref = [mpmath.lambertw(mpmath.mpf(float(v)), branch).real for v in x]
    return x, ref


@functools.lru_cache(maxsize=None)
def _kappa_points(stride):
    """kappa at both edges of every stride-th binade's bins, a float either side, the centres, and below the table."""
    names, exps, mids, _ = _reachable_mask(table.NEGEXP)
    keep = exps % stride == 0
    v = np.concatenate([np.ldexp(mids[keep] - 1 / 32, exps[keep]), np.ldexp(mids[keep], exps[keep])])
    below = table.KAPPA_MIN * np.array([0.25, 0.5, 0.99])
    kappa = np.concatenate([v, np.nextafter(v, 0), np.nextafter(v, np.inf), below,
                            [1e-300, np.finfo(np.float64).tiny, np.finfo(np.float64).max]])
    kappa = np.unique(kappa[np.isfinite(kappa)])
    ref = []
    for k in kappa:
        # exp(-1 - kappa) must keep kappa's digits: 40 more than it has zeros.
        with mpmath.workdps(40 + max(0, int(-np.log10(k)))):
            ref.append(+mpmath.lambertw(-mpmath.exp(-1 - mpmath.mpf(float(k))), -1).real)
    return kappa, ref


def _errors_vs_exact(y, ref):
    """|y - exact| in ulp of the float64 nearest to the exact value."""
    nearest = np.abs(np.array([float(b) for b in ref]))
    with np.errstate(over="ignore"):
        ulp = np.spacing(nearest)
    # At the largest float the next ulp would be infinite: take the one below.
    ulp = np.where(np.isinf(ulp), np.spacing(np.nextafter(nearest, 0)), ulp)
    with mpmath.workdps(40):
        return np.array([float(abs(mpmath.mpf(float(a)) - b)) for a, b in zip(y, ref)]) / ulp


def _check(args, ref, parts, public, name):
    """parts(args) = (W, 1 + W) against mpmath's ``ref``, and public(args) giving the same W."""
    with jax.enable_x64(True):
        w, t = (np.asarray(a) for a in jax.jit(parts)(jnp.asarray(args)))
        via_public = np.asarray(jax.jit(public)(jnp.asarray(args)))
    err = _errors_vs_exact(w, ref)
    assert err.max() <= EXACT_ULP_BOUND, f"{err.max()} ulp at {name}={args[err.argmax()]!r}"
    # 1 + W, which the derivative divides by, to a couple of ulp of itself;
    # near the branch point it is tiny, so 1 + ref needs the reference's digits.
    with mpmath.workdps(400):
        err_t = _errors_vs_exact(t, [1 + r for r in ref])
    assert err_t.max() <= 2.0, f"1 + W: {err_t.max()} ulp at {name}={args[err_t.argmax()]!r}"
    np.testing.assert_array_equal(via_public, w)


def _check_edges(branch, stride):
    x, ref = _edge_points(branch, stride)
    _check(x, ref, lambda v: table.lambertw_parts(v, branch), lambda v: lambertw(v, branch), "x")


def _check_kappa_edges(stride):
    kappa, ref = _kappa_points(stride)
    _check(kappa, ref, table.negexp_parts, lambda k: lambertw_negexp_parts(k, -1)[0], "kappa")


@pytest.mark.parametrize("branch", table.BRANCHES)
def test_bin_edges_in_every_seventh_binade(branch):
    _check_edges(branch, 7)


def test_kappa_bin_edges_in_every_seventh_binade():
    _check_kappa_edges(7)


@pytest.mark.slow
@pytest.mark.parametrize("branch", table.BRANCHES)
def test_bin_edges_in_every_binade(branch):
    _check_edges(branch, 1)


@pytest.mark.slow
def test_kappa_bin_edges_in_every_binade():
    _check_kappa_edges(1)


@pytest.mark.parametrize("high_bits", [23, 31])
def test_packed_pairs_keep_their_bits(high_bits, x64):
    rng = np.random.default_rng(high_bits)
    high = rng.standard_normal(200) * 10.0 ** rng.uniform(-30, 3, 200)
    low = rng.standard_normal(200) * 10.0 ** rng.uniform(-40, 0, 200)
    words = np.array([table._pack(a, b, high_bits) for a, b in zip(high, low)])
    h_np, l_np = table._unpack_np(words, high_bits)
    assert np.all(np.abs(h_np - high) <= np.abs(high) * 2.0 ** -(high_bits + 1))
    low_bits = 40 - high_bits
    assert np.all(np.abs(l_np - low) <= np.abs(low) * 2.0 ** -(low_bits + 1))
    assert np.all(np.sign(h_np) == np.sign(high)) and np.all(np.sign(l_np) == np.sign(low))
    h_jax, l_jax = jax.jit(lambda w: table._unpack(w, high_bits))(jnp.asarray(words))
    np.testing.assert_array_equal(np.asarray(h_jax), h_np)
    np.testing.assert_array_equal(np.asarray(l_jax), l_np)


def test_a_missing_or_wrong_table_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "TABLE_PATH", str(tmp_path / "absent.npz"))
    table.load_table.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="regenerate it with python -m sdsl_jax.laws.lambertw_table"):
            table.load_table(0)
        wrong = tmp_path / "wrong.npz"
        np.savez(wrong, branch_0=np.zeros((3, table.N_WORDS)))
        monkeypatch.setattr(table, "TABLE_PATH", str(wrong))
        with pytest.raises(RuntimeError, match=r"shape \(3, 9\)"):
            table.load_table(0)
    finally:
        monkeypatch.undo()
        table.load_table.cache_clear()
