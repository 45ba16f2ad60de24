import contextlib
import json
import os
import pathlib
import shutil
import sysconfig
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

import sdsl_jax as sd

# The `sdsl` program keeps compiled programs in the user's cache folder
# (sdsl_jax/cli/compilation_cache.py). Tests must not write to the home folder,
# and the CLI runs they start (in this process or in subprocesses, which
# inherit the variable) compile as before; tests/cli/test_compilation_cache.py
# turns it on in a folder of its own.
os.environ["SDSL_COMPILATION_CACHE"] = "off"


@pytest.fixture
def x64():
    """Run a test with float64 enabled, without leaking it to other tests."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Both precisions: float64 inside jax.enable_x64, float32 by default."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


# --------------------------------------------------------------------------
# Scheduling under pytest-xdist (CI: -n 2 --dist loadfile).
#
# xdist hands out whole files, by default those with the most tests first, so a
# file of few tests that trains or compiles for a minute or more is handed out
# near the end and finishes alone while the other worker idles. The files below
# are started first instead, longest first (the rule that keeps the two
# workers' finishing times closest); every other file follows in xdist's order.
# Within a file nothing moves: its tests run in the order written.
# tests/fitting/test_fitting.py goes early so that the files compiling the same
# fits (tests/cli/test_fit.py, tests/examples) load them from the shared
# compilation cache below rather than compile them at the same time.
LONGEST_FIRST = (
    "tests/reproduce/test_reproduce.py",         # the tiny preset end to end, one module fixture
    "tests/cli/test_measure.py",                 # loops compiled for the trained and HF pairs
    "tests/decoding/test_sharding.py",           # eight forced devices, in a subprocess
    "tests/planning/test_finite_gradients.py",   # five tests, each a sweep of compiled planners
    "tests/fitting/test_fitting.py",             # the fits of the 12 x 12 design
    "tests/planning/test_sharded.py",            # four forced devices, in a subprocess
    "tests/planning/test_flop.py",               # both solvers in both precisions
    "tests/fitting/test_profile.py",             # profile likelihoods, refit at every step
    "tests/models/test_training.py",             # training, and a kill -9 in a subprocess
    "tests/benchmarks/test_gpu_check.py",        # benchmarks/gpu_check.py --smoke
)


def pytest_configure(config):
    # The controller schedules; keep the order the workers collect (below).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if hasattr(config, "workerinput"):
        _share_compilations(pathlib.Path(config.option.basetemp).parent / "jax-compilation-cache")


def _share_compilations(directory):
    """JAX's persistent compilation cache in ``directory``, shared by this run's xdist workers.

    Several files compile the same programs (the fits of the 12 x 12 design in
    tests/fitting, tests/cli/test_fit.py, tests/examples and the bad-input laws
    file; the float64 planners), and under --dist loadfile they often run on
    different workers, each compiling them anew. With the cache the second
    worker loads what the first compiled: the same executable, so nothing a test
    checks changes. It is set here, before collection, because JAX reads the
    setting at its first compilation. A maximum size turns on the cache's file
    lock, so one worker never reads an entry the other is still writing;
    without filelock to take it, nothing is shared. Subprocesses the tests start
    (CLI runs, forced devices, kill -9) do not inherit it and compile cold, as a
    user's process does; a single-process run is left as it was.
    """
    import importlib.util
    if importlib.util.find_spec("filelock") is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_compilation_cache_max_size", 4 * 2**30)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected: count what runs
def pytest_collection_modifyitems(config, items):
    """Under xdist, order the files: LONGEST_FIRST, then by descending test count (what
    xdist does by default), then as collected. Every worker sorts the same collection
    the same way, as xdist requires."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    first, counts = {}, {}
    for index, item in enumerate(items):
        path = item.nodeid.split("::", 1)[0]
        first.setdefault(path, index)
        counts[path] = counts.get(path, 0) + 1

    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        listed = LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
        return listed, -counts[path], first[path]
    items.sort(key=rank)


# Shared references and compilations, used by several test modules.

def numpy_step_time(acc, params, tokens, bytes_per_param, batch, context,
                    aspect=128.0, kv_bytes=2.0, kv_fraction=1.0):
    """The module doc's formulas, written out again in numpy."""
    layers = (params / (12 * aspect**2)) ** (1 / 3)
    width = aspect * layers
    flops = batch * tokens * (2 * params + 4 * layers * width * context)
    moved = params * bytes_per_param + batch * context * 2 * layers * width * kv_fraction * kv_bytes
    x = flops / (acc["peak_flops"] * acc["compute_efficiency"])
    y = moved / (acc["bandwidth"] * acc["bandwidth_efficiency"])
    p = acc["sharpness"]
    return (x**p + y**p) ** (1 / p) + acc["overhead"]


def _plan_outputs(m, d, dp, pre, acc):
    plan = sd.optimal_draft_size(m, d, dp, pretraining_law=pre, acceptance_law=acc)
    return jnp.stack([plan.draft_params, plan.tokens_per_flop])


def flop_jacobian(m, d, dp, pre=sd.BESIROGLU_2024, acc=sd.SDSL_2026):
    """d(N*, T*) / d(M, D, D', pretraining law, acceptance law), reverse mode, eagerly.

    Scalar float64 inputs: one compilation serves every gradient test here and
    in test_latency_planner (a jax.grad per argument would compile once each).
    """
    return jax.jacrev(_plan_outputs, argnums=(0, 1, 2, 3, 4))(m, d, dp, pre, acc)


@pytest.fixture(name="numpy_step_time", scope="session")
def numpy_step_time_fixture():
    """The roofline step time written out in numpy (planning.hardware's module doc)."""
    return numpy_step_time


@pytest.fixture(name="flop_jacobian", scope="session")
def flop_jacobian_fixture():
    """d(N*, T*) / d(M, D, D', laws): one compiled reverse-mode Jacobian for every module."""
    return flop_jacobian


# --------------------------------------------------------------------------
# The brute-force S* reference (tests/laws, tests/planning): the best speedup
# over the lookahead, from the closed form E / (gamma c + 1) and scipy's brentq
# on its derivative, with no Lambert W and nothing from sdsl_jax but the laws'
# coefficients.


def _lookahead_slope(a, c):
    """A function with the sign of dS/dgamma, strictly decreasing in gamma."""
    return lambda g: -a ** (g + 1) * np.log(a) * (g * c + 1) - c * (1 - a ** (g + 1))


def brute_force_lookahead(a, c):
    """gamma* = argmax over gamma >= 0 of (1 - a^(gamma+1)) / ((1 - a)(gamma c + 1)); 0 where
    drafting does not pay."""
    a, c = float(a), float(c)
    h = _lookahead_slope(a, c)
    if a <= 0 or h(0.0) <= 0:
        return 0.0
    hi = 1.0
    while h(hi) > 0:
        hi *= 2
    return brentq(h, 0.0, hi, xtol=1e-15, rtol=1e-15)


def brute_force_speedup(a, c):
    """S* = max over gamma >= 0 of (1 - a^(gamma+1)) / ((1 - a)(gamma c + 1)) (1: no drafting)."""
    a, c = float(a), float(c)
    g = brute_force_lookahead(a, c)
    if g == 0.0:
        return 1.0
    return (1 - a ** (g + 1)) / (1 - a) / (g * c + 1)


def numpy_loss(law, params, tokens):
    """The pre-training law L(N, D) = E + A / N^alpha + B / D^beta, in numpy."""
    return (law.irreducible_loss + law.param_coeff / params ** law.param_exponent
            + law.data_coeff / tokens ** law.data_exponent)


def numpy_acceptance(law, draft_perplexity, target_perplexity):
    """The acceptance plane, clipped to [0, MAX_ACCEPTANCE] as the planners clip it."""
    raw = law.draft_coeff * draft_perplexity + law.target_coeff * target_perplexity + law.intercept
    return min(max(raw, 0.0), sd.MAX_ACCEPTANCE)


def brute_force_speedup_over_draft_sizes(target_params, draft_tokens, target_tokens, log_draft,
                                         pre=sd.BESIROGLU_2024, acc=sd.SDSL_2026):
    """S* at each log N: alpha from the laws in numpy, gamma* by brentq.

    ``draft_tokens`` may be a function of N (a compute budget: D = C / (6 N)).
    """
    y = np.exp(numpy_loss(pre, target_params, target_tokens))
    out = []
    for s in np.atleast_1d(log_draft):
        n = np.exp(s)
        d = draft_tokens(n) if callable(draft_tokens) else draft_tokens
        a = numpy_acceptance(acc, np.exp(numpy_loss(pre, n, d)), y)
        out.append(brute_force_speedup(a, n / target_params))
    return np.array(out)


@pytest.fixture(name="speedup_reference", scope="session")
def speedup_reference_fixture():
    """The brute-force S* reference: .lookahead(a, c), .speedup(a, c), the laws in numpy
    (.loss, .acceptance) and .over_draft_sizes(M, D, D', log N, pre, acc)."""
    return types.SimpleNamespace(lookahead=brute_force_lookahead, speedup=brute_force_speedup,
                                 loss=numpy_loss, acceptance=numpy_acceptance,
                                 over_draft_sizes=brute_force_speedup_over_draft_sizes)


# --------------------------------------------------------------------------
# The command line, in-process.


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv)`` or ``run_cli(argv)``: ``sdsl`` main(argv) in this process, with
    every argument passed through str(); (exit status, stdout, stderr) since the last read."""
    from sdsl_jax.cli import main

    def run(*argv):
        if len(argv) == 1 and isinstance(argv[0], (list, tuple)):
            argv = argv[0]
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


# --------------------------------------------------------------------------
# The corpus and one trained (draft, target) pair, for every test that needs
# real text or trained models.

# A few standard-library modules: real text, small enough to load at once, one
# of them held out (corpus.split_documents decides which, by name).
CORPUS_FILES = ("os.py", "argparse.py", "string.py", "textwrap.py", "shutil.py", "random.py",
                "bisect.py", "heapq.py", "functools.py", "csv.py", "glob.py", "json/decoder.py")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A directory of CORPUS_FILES copied from this Python's standard library (a Path)."""
    root = sysconfig.get_paths()["stdlib"]
    directory = tmp_path_factory.mktemp("corpus") / "text"
    directory.mkdir()
    for name in CORPUS_FILES:
        shutil.copy(os.path.join(root, name), directory / name.replace("/", "_"))
    return directory


@pytest.fixture(scope="session")
def corpus(corpus_dir):
    """corpus_dir loaded as `sdsl train --no-stdlib --corpus corpus_dir` loads it."""
    from sdsl_jax.models import corpus as corpus_lib
    return corpus_lib.load_corpus([str(corpus_dir)], include_stdlib=False)


class TrainedPair(NamedTuple):
    """A 10k draft and a 30k target trained alike on the corpus, in root/10k and root/30k."""
    root: pathlib.Path
    draft: pathlib.Path
    target: pathlib.Path
    settings: object  # the TrainSettings both were trained with
    cards: dict       # size -> its model.json as train_model returned it (resumed_from 0)


PAIR_SIZES = ("10k", "30k")


@pytest.fixture(scope="session")
def pair_training():
    """How the trained pair is trained: (TrainSettings, the `sdsl train` flags of the same run;
    add --sizes, the corpus and --out). Cheap: a test can start `sdsl train` with these
    before the pair exists."""
    from sdsl_jax.models import training
    steps, checkpoint_every, batch_size, seq_len, eval_tokens = 400, 50, 4, 32, 1024
    settings = training.TrainSettings(steps=steps, batch_size=batch_size, seq_len=seq_len,
                                      checkpoint_every=checkpoint_every, eval_tokens=eval_tokens)
    flags = ("--steps", str(steps), "--batch-size", str(batch_size), "--seq-len", str(seq_len),
             "--checkpoint-every", str(checkpoint_every), "--eval-tokens", str(eval_tokens),
             "--progress", "never")
    return settings, flags


@pytest.fixture(scope="session")
def trained_pair(corpus, pair_training, tmp_path_factory):
    """One trained tiny (draft, target) pair for the whole session: every test that needs
    trained models reads these (none may write into them). Under pytest-xdist the workers
    share one copy: the first to get here trains it, the others wait and read its cards."""
    from sdsl_jax.models import training
    settings, _ = pair_training
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None and _can_lock
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if shared else base) / "trained-pair"
    with _exclusive(root.parent / "trained-pair.lock" if shared else None):
        # What train_model returned when it trained them (a second call would return
        # the card with resumed_from None): kept beside them for the other workers.
        returned = root / "returned-cards.json"
        if returned.exists():
            cards = json.loads(returned.read_text())
        else:
            cards = {size: training.train_model(size, corpus, settings, str(root / size),
                                                progress=False, log=lambda _: None)
                     for size in PAIR_SIZES}
            returned.write_text(json.dumps(cards))
    return TrainedPair(root=root, draft=root / PAIR_SIZES[0], target=root / PAIR_SIZES[1],
                       settings=settings, cards=cards)


try:
    import fcntl
    _can_lock = True
except ImportError:  # no flock: each xdist worker trains its own pair
    _can_lock = False


@contextlib.contextmanager
def _exclusive(path):
    """An exclusive lock on ``path`` while the block runs (None: no lock)."""
    if path is None:
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
