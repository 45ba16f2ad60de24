"""Atomic writes and JSON Lines: what a kill, a bad line or a failed writer leaves behind."""

import json
import os
import stat

import pytest

from sdsl_jax.common.io import (JsonlError, append_jsonl, atomic_write, atomic_write_text,
                                iter_jsonl, parse_jsonl, read_json, read_jsonl, write_json,
                                write_jsonl)


def _only(folder):
    return sorted(os.listdir(folder))


# --------------------------------------------------------------------------
# Atomic writes.


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert _only(tmp_path) == ["out.txt"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old\n")

    def write(handle):
        handle.write("half of the new")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        atomic_write(path, write)
    assert path.read_text() == "old\n"
    assert _only(tmp_path) == ["out.json"]


def test_unwritable_data_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(ValueError, match="Out of range float"):
        write_json(path, {"a": float("nan")})
    assert read_json(path) == {"a": 1}
    assert _only(tmp_path) == ["out.json"]


def test_binary_atomic_write(tmp_path):
    path = tmp_path / "blob"
    atomic_write(path, lambda handle: handle.write(b"\x00\xff"), mode="wb")
    assert path.read_bytes() == b"\x00\xff"


def test_new_files_get_the_permissions_open_gives(tmp_path):
    # mkstemp's 0600 would hide a replaced report or laws file from other users.
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) == 0o644


def test_a_missing_folder_is_named_by_the_destination(tmp_path):
    path = tmp_path / "no-such-folder" / "out.json"
    with pytest.raises(FileNotFoundError) as info:
        write_json(path, {})
    assert info.value.filename == str(path)


def test_write_json_matches_json_dump(tmp_path):
    data = {"b": [1, 2.5, None], "a": {"x": "é"}}
    write_json(tmp_path / "one.json", data)
    assert (tmp_path / "one.json").read_text() == json.dumps(data, indent=1) + "\n"
    write_json(tmp_path / "two.json", data, indent=2, sort_keys=True)
    assert (tmp_path / "two.json").read_text() == json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_json(tmp_path / "nan.json", {"x": float("nan")}, allow_nan=True)
    assert (tmp_path / "nan.json").read_text() == '{\n "x": NaN\n}\n'


def test_write_jsonl_round_trips_through_read_jsonl(tmp_path):
    records = [{"name": "a\u2028b"}, {"n": 1}]
    write_jsonl(tmp_path / "r.jsonl", records, ensure_ascii=False)
    assert "\u2028" in (tmp_path / "r.jsonl").read_text(encoding="utf-8")
    assert read_jsonl(tmp_path / "r.jsonl") == records


# --------------------------------------------------------------------------
# Appending and reading back.


def test_append_writes_whole_lines_and_syncs_each(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(path.read_bytes()), real_fsync(fd)))
    append_jsonl(path, {"step": 1})
    append_jsonl(str(path), {"step": 2})
    # Each record was on disk, newline included, when append returned.
    assert synced == [b'{"step": 1}\n', b'{"step": 1}\n{"step": 2}\n']
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_append_to_an_open_handle(tmp_path):
    path = tmp_path / "log.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        append_jsonl(handle, {"a": 1})
        append_jsonl(handle, {"a": 2})
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_a_missing_file_has_no_records(tmp_path):
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_torn_last_line_is_dropped_and_truncated(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    append_jsonl(path, {"a": 3})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_without_repair_the_torn_line_stays_on_disk(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a"')
    assert read_jsonl(path, repair=False) == [{"a": 1}]
    assert path.read_bytes() == b'{"a": 1}\n{"a"'


def test_blank_lines_are_skipped_and_line_numbers_kept():
    data = b'\n{"a": 1}\n   \n\r\n{"a": 2}\r\n'
    assert list(iter_jsonl(data)) == [(2, {"a": 1}), (5, {"a": 2})]


def test_a_whole_file_keeps_its_last_line_without_newline():
    assert parse_jsonl(b'{"a": 1}\n{"a": 2}') == [{"a": 1}, {"a": 2}]


def test_a_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert read_jsonl(path) == [{"a": 1}]
    assert parse_jsonl('\ufeff{"a": 1}\n') == [{"a": 1}]


def test_unicode_line_separators_inside_strings_do_not_split_lines():
    assert parse_jsonl('{"a": "x\u2028y\u0085z"}\n') == [{"a": "x\u2028y\u0085z"}]


@pytest.mark.parametrize("data, line, kind, message", [
    (b'{"a": 1}\n[1, 2]\n', 2, "object", "expected a JSON object, got list"),
    (b'{"a": 1}\n\n"text"\n', 3, "object", "expected a JSON object, got str"),
    (b'{"a": 1}\n{not json}\n', 2, "json", "not valid JSON (Expecting property name"),
    (b'{"a": 1}\n{"b": "\xff"}\n', 2, "utf-8", "not UTF-8 text (byte 0xFF); save it as UTF-8"),
    (b'{"a": 1}\n{"b": "\x00"}\n', 2, "utf-8", "a NUL byte; this looks like a binary file"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, data, line, kind, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    with pytest.raises(JsonlError) as info:
        read_jsonl(path)
    err = info.value
    assert (err.path, err.line, err.kind) == (str(path), line, kind)
    assert str(err).startswith(f"{path}: line {line}: {message}")
    assert isinstance(err, ValueError)


def test_records_come_one_at_a_time():
    # A caller checking each record reports line 1's problem before line 3's.
    records = iter_jsonl(b'{"a": 1}\n{"a": 2}\nnot json\n')
    assert next(records) == (1, {"a": 1})
    assert next(records) == (2, {"a": 2})
    with pytest.raises(JsonlError, match="line 3"):
        next(records)


def test_utf16_json_lines_say_so_on_line_1(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_bytes('{"a": 1}\n'.encode("utf-16"))
    with pytest.raises(JsonlError) as info:
        read_jsonl(path)
    assert (info.value.line, info.value.kind) == (1, "utf-8")
    assert str(info.value) == f"{path} is UTF-16 text; save it as UTF-8"


def test_a_json_error_is_an_input_file_error():
    from sdsl_jax.common.tables import InputFileError
    with pytest.raises(InputFileError, match="line 1"):
        parse_jsonl(b"[1]\n", "x.jsonl")


def test_read_json_skips_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert read_json(path) == {"a": 1}


def test_a_line_nested_too_deeply_is_a_jsonl_error():
    with pytest.raises(JsonlError, match="line 2: not valid JSON \\(nested too deeply"):
        parse_jsonl(b'{"a": 1}\n' + b"[" * 100_000 + b"\n", "deep.jsonl")
