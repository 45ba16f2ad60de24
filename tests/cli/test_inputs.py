"""Files the CLI reads besides measurement sets and laws: the rows file, prompt files and
position rates. Each bad encoding or value is one line naming the file, and the file is left
as it was."""

import argparse
import json

import pytest

from sdsl_jax.cli.options import UsageError
from sdsl_jax.decoding.rows import write_row
from sdsl_jax.decoding.run import MeasureRunError

ROW = {"draft_model": "d", "target_model": "t", "draft_params": 1e6, "target_params": 1e7,
       "acceptance": 0.5, "lookahead": 2}
BAD_TEXT = {"latin1": "caf\xe9\n".encode("latin-1"),
            "utf16": '{"draft_model": "d"}\n'.encode("utf-16"),
            "binary": b"\x00\x01\x02\x03" * 8}


@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
def test_rows_file_in_another_encoding_is_refused_untouched(tmp_path, kind):
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(BAD_TEXT[kind])
    with pytest.raises(MeasureRunError, match="rows.jsonl") as info:
        write_row(str(rows), ROW)
    assert "\n" not in str(info.value)
    assert rows.read_bytes() == BAD_TEXT[kind]


def test_rows_file_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(MeasureRunError, match="--rows"):
        write_row(str(tmp_path), ROW)


def test_rows_file_with_a_byte_order_mark_is_updated(tmp_path):
    rows = tmp_path / "rows.jsonl"
    other = dict(ROW, draft_model="other")
    rows.write_bytes(b"\xef\xbb\xbf" + json.dumps(other).encode() + b"\n")
    write_row(str(rows), ROW)
    lines = [json.loads(line) for line in rows.read_text(encoding="utf-8").splitlines()]
    assert [line["draft_model"] for line in lines] == ["other", "d"]


class _Model:
    """What file_prompts needs of a model: its tokenizer (bytes here)."""

    @staticmethod
    def encode(text):
        return list(text.encode("utf-8"))


def _prompts_args(path):
    return argparse.Namespace(prompt_file=str(path), prompts=None, documents=None,
                              teacher_forced=False)


def test_prompt_file_with_a_byte_order_mark_reads_the_same_prompts(tmp_path):
    from sdsl_jax.cli.measure_prompts import file_prompts
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_bytes(b"first prompt\r\nsecond\n")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    prompts, name = file_prompts(_prompts_args(plain), _Model)
    assert prompts == [list(b"first prompt"), list(b"second")]
    assert file_prompts(_prompts_args(marked), _Model)[0] == prompts
    assert name.startswith("file:")


@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
def test_prompt_file_in_another_encoding_is_one_line(tmp_path, kind):
    from sdsl_jax.cli.measure_prompts import file_prompts
    path = tmp_path / "prompts.txt"
    path.write_bytes(BAD_TEXT[kind])
    with pytest.raises(UsageError, match="--prompt-file: .*prompts.txt") as info:
        file_prompts(_prompts_args(path), _Model)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content,needle", [
    (b'{"position_rates": [0.5], "acceptance": "x"}', "acceptance"),
    (b'{"position_rates": [0.5], "cost_ratio": NaN}', "cost_ratio"),
    (b"[0.8, 1.5]", "1.5"),
    ("[0.8, 0.5] caf\xe9".encode("latin-1"), "UTF-8"),
    (BAD_TEXT["utf16"], "UTF-16"),
    (b"", "rates.json"),
])
def test_position_rates_file_is_named_in_one_line(tmp_path, run_cli, content, needle):
    rates = tmp_path / "rates.json"
    rates.write_bytes(content)
    code, out, err = run_cli("plan", "--position-rates", rates)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "rates.json" in err and needle in err and "--cost-ratio:" not in err
    assert rates.read_bytes() == content


def test_position_rates_with_a_byte_order_mark(tmp_path, run_cli):
    rates = tmp_path / "rates.json"
    rates.write_bytes(b"\xef\xbb\xbf[0.8, 0.7, 0.6]")
    code, out, err = run_cli("plan", "--position-rates", rates, "--cost-ratio", "0.1", "--json")
    assert code == 0, err
    assert json.loads(out)["position_rates"] == [0.8, 0.7, 0.6]


# --------------------------------------------------------------------------
# Refusals found by the property tests (tests/cli/test_bad_input.py), each
# pinned here by one fixed case: exit 2, one line naming what is wrong, and
# nothing written.


def _refusal_cases(tmp):
    corpus = tmp / "corpus"
    empty = tmp / "empty"
    rates = tmp / "rates.json"
    table = tmp / "latency.csv"
    return [
        (["plan", "--laws=", "--target-params", "70B", "--target-tokens", "15T"],
         "--laws: empty"),
        (["plan", "--csv", tmp / "c.csv", "--out="], "--out: empty"),
        (["fit", tmp / "m.csv", "--out", ""], "--out: empty"),
        (["plot", "throughput", "--laws", " "], "--laws: empty"),
        (["plan", "--laws", tmp / "laws.json", "--pretraining-law", "hoffmann2022",
          "--target-params", "70B", "--target-tokens", "15T"], "--laws replaces the presets"),
        (["plan", "--position-rates", rates, "--cost-ratio", "0.1", "--out", tmp / "p.csv"],
         "drop --out"),
        (["train", "--sizes", "10k", "--steps", "1", "--out", corpus / "run", "--no-stdlib",
          "--corpus", corpus], "is inside --corpus"),
        (["reproduce", "--preset", "tiny", "--out", corpus, "--no-stdlib", "--corpus", corpus],
         "is inside --corpus"),
        (["train", "--sizes", "10k", "--steps", "1", "--out", tmp / "run", "--no-stdlib",
          "--corpus", empty], "holds no text files"),
        (["train", "--sizes", "10k", "--steps", "1", "--out", tmp / "run",
          "--seq-len", "99999999999"], "--seq-len: must be at most"),
        (["train", "--sizes", "10k", "--steps", "1", "--out", tmp / "run", "--batch-size", "4096",
          "--seq-len", "65536"], "tokens per step"),
        (["measure", "--draft", tmp, "--target", tmp, "--lookahead", "2", "--prompts", "2",
          "--max-new-tokens", "99999999999", "--out", tmp / "r.jsonl"],
         "--max-new-tokens: must be at most"),
        (["plot", "acceptance", tmp / "m.csv", "--target-params", "7B"],
         "--target-params draw the laws' lines without MEASUREMENTS"),
        (["plot", "acceptance", "--weighting", "equal"], "--weighting weights the fits"),
        (["plot", "latency", table], "column 'prompts': must be a whole number"),
    ]


def test_refusals_found_by_the_property_tests(tmp_path, run_cli):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("some text\n")
    (tmp_path / "corpus" / "b.txt").write_text("more text\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "rates.json").write_text("[0.8, 0.7]")
    (tmp_path / "c.csv").write_text("target_params,target_tokens\n70B,15T\n")
    (tmp_path / "m.csv").write_text("draft_params\n1\n")
    (tmp_path / "laws.json").write_text("{}")
    (tmp_path / "latency.csv").write_text(
        "draft_params,target_params,draft_tokens,target_tokens,ttft,prompts\n"
        "1e8,7e9,1e12,1e12,0.5,1.5\n")
    for argv, needle in _refusal_cases(tmp_path):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        folders = {p for p in tmp_path.rglob("*") if p.is_dir()}
        code, out, err = run_cli(argv)
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, argv
        assert {p for p in tmp_path.rglob("*") if p.is_dir()} == folders, argv


@pytest.mark.parametrize("content,needle", [
    (b"[0.8, null, 0.6]", "draft position 2 has no rate but a later one has"),
    (b"[" * 100000 + b"]" * 100000, "nests its JSON too deeply"),
])
def test_position_rates_with_a_gap_or_nested_too_deeply(tmp_path, run_cli, content, needle):
    rates = tmp_path / "rates.json"
    rates.write_bytes(content)
    code, _, err = run_cli("plan", "--position-rates", rates, "--cost-ratio", "0.1")
    assert code == 2 and needle in err and err.count("\n") == 1
