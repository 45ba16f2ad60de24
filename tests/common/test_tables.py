"""The one reading layer: every kind of file a careless user gives gets one clear line."""

import codecs

import pytest

from sdsl_jax.common import tables
from sdsl_jax.common.tables import (InputFileError, check_column_names, decode_text, parse_csv_table,
                                    read_csv_table, read_json, read_text)

REQUIRED = ("target_params", "target_tokens")
OPTIONAL = ("draft_tokens",)


def _csv(tmp_path, data, name="in.csv"):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _read(path, **kwargs):
    return read_csv_table(path, required=REQUIRED, optional=OPTIONAL, **kwargs)


def _refused(call, *words):
    """The InputFileError's message, after checking it holds every word and is one line."""
    with pytest.raises(InputFileError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


# --------------------------------------------------------------------------
# Text: encodings, folders, missing files.


def test_utf8_with_and_without_a_bom_reads_the_same(tmp_path):
    plain = _csv(tmp_path, "a,é\n", "plain.txt")
    marked = _csv(tmp_path, codecs.BOM_UTF8 + "a,é\n".encode(), "marked.txt")
    assert read_text(plain) == read_text(marked) == "a,é\n"


def test_latin1_names_the_file_line_and_byte(tmp_path):
    path = _csv(tmp_path, "ok\ncaf\xe9\n".encode("latin-1"))
    message = _refused(lambda: read_text(path), str(path), "line 2", "0xE9", "UTF-8")
    assert "binary" not in message


@pytest.mark.parametrize("codec, name", [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_wide_unicode_with_a_bom_says_which_and_to_save_as_utf8(tmp_path, codec, name):
    path = _csv(tmp_path, "target_params,target_tokens\n".encode(codec))
    _refused(lambda: read_text(path), str(path), name, "save it as UTF-8")


def test_utf16_without_a_bom_is_not_called_binary(tmp_path):
    path = _csv(tmp_path, "target_params,target_tokens\n".encode("utf-16-le"))
    _refused(lambda: read_text(path), str(path), "UTF-16", "save it as UTF-8")


def test_a_nul_byte_says_binary_with_its_line(tmp_path):
    path = _csv(tmp_path, b"a,b\n1,2\n3\x004,5\n")
    _refused(lambda: read_text(path), str(path), "line 3", "NUL", "binary")


@pytest.mark.parametrize("magic, what", [(b"PK\x03\x04", "xlsx"), (b"PAR1", "Parquet"),
                                         (b"\x89PNG\r\n", "PNG")])
def test_known_binary_files_are_named(tmp_path, magic, what):
    path = _csv(tmp_path, magic + b"\xff\xfe rest")
    _refused(lambda: read_text(path), str(path), what, "not a text file")


def test_binary_bytes_without_a_nul_say_binary(tmp_path):
    path = _csv(tmp_path, bytes(range(1, 256)) * 4)
    _refused(lambda: read_text(path), str(path), "0x80", "binary")


def test_a_folder_and_a_missing_file(tmp_path):
    _refused(lambda: read_text(tmp_path), str(tmp_path), "is a folder, expected a file")
    _refused(lambda: read_text(tmp_path / "nope.csv"), "nope.csv: cannot read it: no such file")


def test_an_unreadable_file_gives_the_system_reason(tmp_path, monkeypatch):
    path = _csv(tmp_path, "a\n")

    def refuse(*args, **kwargs):  # chmod 0 does not stop root, who runs CI here
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tables, "open", refuse, raising=False)
    _refused(lambda: read_text(path), str(path), "Permission denied")


def test_decode_text_names_the_source():
    _refused(lambda: decode_text(b"\xe9", "prompts.txt"), "prompts.txt", "line 1")


# --------------------------------------------------------------------------
# JSON.


def test_read_json_accepts_a_bom_and_names_line_and_column_of_an_error(tmp_path):
    good = _csv(tmp_path, codecs.BOM_UTF8 + b'{"a": [1, 2]}', "good.json")
    assert read_json(good) == {"a": [1, 2]}
    bad = _csv(tmp_path, '{\n  "a": [1,\n  2,,\n]}', "bad.json")
    _refused(lambda: read_json(bad), "bad.json", "line 3", "column", "not valid JSON")


def test_read_json_refuses_empty_latin1_and_duplicated_keys(tmp_path):
    _refused(lambda: read_json(_csv(tmp_path, " \n", "e.json")), "e.json", "empty")
    _refused(lambda: read_json(_csv(tmp_path, '{"a": "\xe9"}'.encode("latin-1"), "l.json")),
             "l.json", "UTF-8")
    _refused(lambda: read_json(_csv(tmp_path, '{"a": 1, "a": 2}', "d.json")),
             "d.json", "'a'", "twice")


# --------------------------------------------------------------------------
# CSV tables.


def test_a_good_table_keeps_row_and_line_numbers(tmp_path):
    path = _csv(tmp_path, codecs.BOM_UTF8 + b" target_params ,target_tokens\r\n70B,15T\r\n\r\n"
                b"7B,\"2T\"\r\n")
    table = _read(path)
    assert table.header == ["target_params", "target_tokens"]
    assert table.rows == [["70B", "15T"], ["7B", "2T"]]
    assert table.row_numbers == [1, 2]
    assert table.line_numbers == [2, 4]
    assert table.column("target_params") == ["70B", "7B"]
    assert table.column("draft_tokens", "") == ["", ""]
    assert table.where(0) == f"{path}: row 1"
    assert table.where(1, "target_tokens") == f"{path}: row 2 (line 4), column 'target_tokens'"
    assert table.error(1, "target_tokens", "bad").row == 2


def test_a_multiline_cell_keeps_the_line_the_row_starts_on(tmp_path):
    path = _csv(tmp_path, 'target_params,target_tokens\n"7\nB",1T\n70B,2T,3\n')
    _refused(lambda: _read(path), "row 2 (line 4)", "3 fields")


def test_empty_and_header_only_files(tmp_path):
    _refused(lambda: _read(_csv(tmp_path, "", "e.csv")), "e.csv", "empty file", "target_params")
    _refused(lambda: _read(_csv(tmp_path, "\n\n", "b.csv")), "b.csv", "empty file")
    header_only = _csv(tmp_path, "target_params,target_tokens\n", "h.csv")
    _refused(lambda: _read(header_only), "h.csv", "only a header")
    assert len(_read(header_only, allow_empty=True)) == 0


def test_blank_and_duplicated_column_names(tmp_path):
    _refused(lambda: _read(_csv(tmp_path, "target_params,,target_tokens\n1,2,3\n")),
             "column 2 has no name")
    _refused(lambda: _read(_csv(tmp_path, "target_params,target_tokens,\n1,2,\n")),
             "column 3 has no name", "end of the header")
    _refused(lambda: _read(_csv(tmp_path, "target_params,target_tokens,target_params\n1,2,3\n")),
             "'target_params'", "twice", "columns 1 and 3")


def test_a_missing_required_column_lists_what_was_found(tmp_path):
    _refused(lambda: _read(_csv(tmp_path, "target_params,draft_tokens\n1,2\n")),
             "missing required column 'target_tokens'", "target_params, draft_tokens")


def test_unknown_columns_are_refused_with_the_known_ones_and_a_guess(tmp_path):
    message = _refused(lambda: _read(_csv(tmp_path, "target_params,target_tokens,draft_token\n1,2,3\n")),
                       "unknown column 'draft_token'", "did you mean 'draft_tokens'?",
                       "target_params, target_tokens, draft_tokens")
    assert "missing" not in message
    message = _refused(lambda: _read(_csv(tmp_path, "target_params,target_tokens,notes\n1,2,3\n")),
                       "unknown column 'notes'", "draft_tokens")
    assert "did you mean" not in message


def test_a_misspelt_required_column_is_named_as_a_typo_before_it_is_missing(tmp_path):
    _refused(lambda: _read(_csv(tmp_path, "target_param,target_tokens\n1,2\n")),
             "'target_param'", "did you mean 'target_params'?")


def test_keep_keeps_unknown_columns_but_refuses_likely_typos(tmp_path):
    table = _read(_csv(tmp_path, "target_params,target_tokens,notes\n1,2,hi\n"), unknown="keep")
    assert table.column("notes") == ["hi"]
    _refused(lambda: _read(_csv(tmp_path, "target_params,target_tokens,draft_token\n1,2,3\n"),
                           unknown="keep"), "'draft_token'", "did you mean 'draft_tokens'?", "typo")
    _refused(lambda: _read(_csv(tmp_path, "Target_Params,target_tokens\n1,2\n"), unknown="keep"),
             "'Target_Params'", "did you mean 'target_params'?")


def test_keep_does_not_call_an_extra_column_a_typo_of_one_the_file_already_has(tmp_path):
    table = _read(_csv(tmp_path, "target_params,target_tokens,draft_tokens,draft_tokenz\n1,2,3,4\n"),
                  unknown="keep")
    assert table.column("draft_tokenz") == ["4"]


def test_a_long_row_names_the_column_without_a_header(tmp_path):
    path = _csv(tmp_path, "target_params,target_tokens\n1,2\n3,4,5\n")
    _refused(lambda: _read(path), str(path), "row 2", "3 fields but the header names 2 columns",
             "column 3 has no header")
    path = _csv(tmp_path, "target_params,target_tokens\n\n3,4,5,6\n")
    _refused(lambda: _read(path), "row 1 (line 3)", "columns 3 to 4 have no header")


def test_a_short_row_names_the_missing_column(tmp_path):
    path = _csv(tmp_path, "target_params,target_tokens,draft_tokens\n1,2,3\n4,5\n")
    _refused(lambda: _read(path), "row 2", "2 fields but the header names 3 columns",
             "missing column 'draft_tokens'")
    path = _csv(tmp_path, "target_params,target_tokens,draft_tokens\n4\n")
    _refused(lambda: _read(path), "missing columns 'target_tokens', 'draft_tokens'")


def test_a_row_of_empty_cells_is_a_row_not_a_blank_line(tmp_path):
    table = _read(_csv(tmp_path, "target_params,target_tokens\n,\n"))
    assert table.rows == [["", ""]]


def test_broken_quoting_names_the_line(tmp_path):
    _refused(lambda: _read(_csv(tmp_path, 'target_params,target_tokens\n1,"2"x\n')),
             "line 2", "not valid CSV")
    _refused(lambda: _read(_csv(tmp_path, 'target_params,target_tokens\n1,"2\n3,4\n')),
             "not valid CSV")


@pytest.mark.parametrize("data, words", [
    ("target_params,target_tokens\n1,caf\xe9\n".encode("latin-1"), ("line 2", "0xE9")),
    ("target_params,target_tokens\n1,2\n".encode("utf-16"), ("UTF-16",)),
    (b"target_params,target_tokens\n1,\x002\n", ("NUL", "binary")),
])
def test_csv_tables_refuse_what_read_text_refuses(tmp_path, data, words):
    path = _csv(tmp_path, data)
    _refused(lambda: _read(path), str(path), *words)


def test_parse_csv_table_and_check_column_names_share_the_rules():
    table = parse_csv_table("\ufefftarget_params,target_tokens\n1,2\n", "<text>", required=REQUIRED)
    assert table.records() == [{"target_params": "1", "target_tokens": "2"}]
    _refused(lambda: check_column_names(["target_params", "trget_tokens"], "m.jsonl",
                                        required=REQUIRED, known=OPTIONAL, unknown="keep"),
             "m.jsonl", "did you mean 'target_tokens'?")
    with pytest.raises(ValueError, match="'refuse' or 'keep'"):
        parse_csv_table("a\n1\n", "<text>", required=("a",), unknown="drop")


def test_input_file_error_is_a_value_error_with_its_parts(tmp_path):
    path = _csv(tmp_path, "target_params,target_tokens\n1,2,3\n")
    with pytest.raises(ValueError) as info:
        _read(path)
    assert (info.value.path, info.value.row, info.value.line) == (str(path), 1, 2)


def test_short_binary_is_not_taken_for_utf16(tmp_path):
    path = _csv(tmp_path, b"\x00\x01\x02abc")
    message = _refused(lambda: read_text(path), "NUL", "binary")
    assert "UTF-16" not in message
    path = _csv(tmp_path, "prompt one\n".encode("utf-16-be"))
    _refused(lambda: read_text(path), "UTF-16")


def test_json_nested_too_deeply_is_one_line_not_a_recursion_error(tmp_path):
    path = _csv(tmp_path, "[" * 100_000, "deep.json")
    _refused(lambda: read_json(path), "deep.json", "nested too deeply")
