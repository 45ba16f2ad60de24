"""`sdsl plot positions`: per-position rates and the K distribution against the i.i.d. model,
checked against brute-force counts of simulated runs files; errors name the file and line."""

import json

import numpy as np
import pytest

from sdsl_jax.plots.positions import RunsError, plot_positions, read_runs


def _simulate(rates, prompts, iterations, seed):
    """K per iteration when draft position i is accepted with probability rates[i - 1]."""
    rng = np.random.default_rng(seed)
    ok = rng.random((prompts, iterations, len(rates))) < np.asarray(rates)
    return np.cumprod(ok, axis=-1).sum(-1)


def _write_runs(path, k, lookahead, ragged=True):
    with open(path, "w") as handle:
        for i, row in enumerate(k):
            keep = row[:len(row) - (i % 3 if ragged else 0)]  # prompts of different lengths
            handle.write(json.dumps({"prompt_id": i, "lookahead": lookahead, "draft_model": "d",
                                     "target_model": "t",
                                     "accepted_per_iteration": [int(x) for x in keep]}) + "\n")
    return path


@pytest.fixture(scope="module")
def runs_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("positions")
    return [_write_runs(folder / "decaying.jsonl", _simulate([0.9, 0.7, 0.5, 0.3], 12, 30, 1), 4),
            _write_runs(folder / "iid.jsonl", _simulate([0.6, 0.6], 12, 30, 2), 2)]


def test_figure_data_are_the_counts(runs_files):
    runs = [read_runs(path) for path in runs_files]
    fig = plot_positions(runs, num_resamples=200)
    rates_ax, counts_ax = fig.axes[:2]
    for s, (path, run) in enumerate(zip(runs_files, runs)):
        lines = [json.loads(line) for line in open(path)]
        k = np.concatenate([line["accepted_per_iteration"] for line in lines])
        gamma = lines[0]["lookahead"]
        assert run.lookahead == gamma and run.label == f"d -> t, lookahead {gamma}"
        np.testing.assert_array_equal(run.accepted[run.mask], k)
        [rates] = [l for l in rates_ax.get_lines() if l.get_gid() == f"rates:{s}"]
        want = [np.sum(k >= i) / np.sum(k >= i - 1) for i in range(1, gamma + 1)]
        np.testing.assert_allclose(rates.get_ydata(), want, rtol=1e-6)
        np.testing.assert_allclose(np.round(rates.get_xdata()), np.arange(1, gamma + 1))
        alpha = k.sum() / np.minimum(k + 1, gamma).sum()  # the i.i.d. MLE
        [model] = [l for l in rates_ax.get_lines() if l.get_gid() == f"model:{s}"]
        np.testing.assert_allclose(model.get_ydata(), alpha, rtol=1e-6)
        [observed] = [l for l in counts_ax.get_lines() if l.get_gid() == f"observed:{s}"]
        np.testing.assert_allclose(observed.get_ydata(),
                                   np.bincount(k, minlength=gamma + 1) / k.size)
        [expected] = [l for l in counts_ax.get_lines() if l.get_gid() == f"expected:{s}"]
        pmf = [alpha ** j * (1 - alpha) for j in range(gamma)] + [alpha ** gamma]
        np.testing.assert_allclose(expected.get_ydata(), pmf, rtol=1e-6)
    # The fit test rejects the decaying rates and not the i.i.d. ones (p in the legend).
    labels = [t.get_text() for t in counts_ax.get_legend().get_texts()]
    p = [float(label.rsplit("p = ", 1)[1]) for label in labels if "p = " in label]
    assert p[0] < 1e-3 < 0.05 < p[1], labels
    assert rates_ax.get_xlabel().startswith("draft position") and counts_ax.get_ylabel()


def test_command_writes_png_and_pdf(runs_files, tmp_path, run_cli):
    stem = tmp_path / "positions"
    code, out, err = run_cli(["plot", "positions", *runs_files, "--out", str(stem) + ".png",
                              "--bootstrap", "200"])
    assert code == 0, err
    for suffix in (".png", ".pdf"):
        assert (tmp_path / f"positions{suffix}").stat().st_size > 1000
    assert "positions.png" in out


@pytest.mark.parametrize("content, needle", [
    ('{"lookahead": 2}\n', "line 1: no 'accepted_per_iteration'"),
    ('{"lookahead": 2, "accepted_per_iteration": [0, 1]}\n'
     '{"lookahead": 3, "accepted_per_iteration": [3]}\n', "line 2: lookahead 3 differs from 2"),
    ('{"lookahead": 2, "accepted_per_iteration": [0, 3]}\n', "integers in [0, 2]"),
    ('{"lookahead": 0, "accepted_per_iteration": []}\n', "lookahead must be an integer >= 1"),
    ("not json\n", "line 1: not valid JSON"),
    ('\n[1, 2]\n', "line 2: expected a JSON object"),
    ("\n", "no iterations to count"),
])
def test_mistakes_are_one_line(tmp_path, run_cli, content, needle):
    path = tmp_path / "runs.jsonl"
    path.write_text(content)
    with pytest.raises(RunsError, match=None):
        read_runs(path)
    code, out, err = run_cli(["plot", "positions", path, "--out", tmp_path / "x"])
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()


def test_missing_file_is_one_line(tmp_path, run_cli):
    code, _, err = run_cli(["plot", "positions", tmp_path / "none.jsonl"])
    assert code == 2 and "cannot read" in err and err.count("\n") == 1


_GOOD = '{"lookahead": 2, "accepted_per_iteration": [0, 1, 2], "draft_model": "d"}\n'


@pytest.mark.parametrize("data, words", [
    (_GOOD.replace('"d"', '"caf\xe9"').encode("latin-1"), ("line 1", "0xE9", "save it as UTF-8")),
    (_GOOD.encode("utf-16"), ("UTF-16", "save it as UTF-8")),
    (_GOOD.encode() + b"\x00\x01\x02", ("line 2", "NUL", "binary")),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), ("PNG",)),
])
def test_runs_files_that_are_not_utf8_are_one_line(tmp_path, run_cli, data, words):
    path = tmp_path / "runs.jsonl"
    path.write_bytes(data)
    with pytest.raises(RunsError) as info:
        read_runs(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for word in words:
        assert word in message, (word, message)
    code, _, err = run_cli(["plot", "positions", path, "--out", tmp_path / "x"])
    assert code == 2 and err.count("\n") == 1 and words[0] in err, err


def test_a_runs_file_with_a_bom_reads_and_a_folder_is_named(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _GOOD.encode())
    assert read_runs(path).lookahead == 2
    with pytest.raises(RunsError, match="is a folder, expected a file"):
        read_runs(tmp_path)
