import json

import numpy as np
import pytest

from sdsl_jax.estimation.measurements import (
    MeasurementError,
    MeasurementSet,
    read_measurements,
    write_measurements,
)

HEADER = "draft_params,target_params,draft_tokens,target_tokens,draft_perplexity,target_perplexity,lookahead,acceptance"
ROW = "125e6,70e9,2e12,15e12,12.5,6.9,4,0.7"


def _records():
    """Acceptance-only, count-only and both-form rows, with optional and extra columns."""
    base = dict(draft_params=125e6, target_params=70e9, draft_tokens=2e12, target_tokens=15e12,
                draft_perplexity=12.345678901234567, target_perplexity=6.9, lookahead=4)
    return [
        {**base, "acceptance": 0.1 + 0.2, "target_model": "Llama-3-70B", "family": "llama",
         "seed": "17", "note": 'has, a "comma"'},
        {**base, "draft_params": 1e9, "accepted": 7, "trials": 9, "acceptance_low": 0.45,
         "acceptance_high": 0.94, "prompts": 100, "prompt_set": "hellaswag"},
        {**base, "lookahead": 6.0, "acceptance": 0.5, "accepted": 5, "trials": 10,
         "draft_model": "tiny", "seed": ""},
    ]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _csv(tmp_path, *rows, header=HEADER):
    return _write(tmp_path, "measurements.csv", "\n".join([header, *rows]) + "\n")


@pytest.mark.parametrize("ext", ["csv", "jsonl", "ndjson", "parquet"])
def test_round_trip(tmp_path, ext):
    original = MeasurementSet.from_records(_records())
    path = tmp_path / f"m.{ext}"
    write_measurements(original, path)
    back = read_measurements(path)
    assert back.source == str(path)
    assert list(back.columns) == list(original.columns)
    for name, values in original.columns.items():
        assert back.columns[name].dtype == values.dtype, name
        np.testing.assert_array_equal(back.columns[name], values, err_msg=name)
    # Precision survives: 0.1 + 0.2 is not 0.3, and the file must not round it.
    assert back.columns["acceptance"][0] == 0.1 + 0.2
    assert list(back.columns["seed"]) == ["17", "", ""]
    assert list(back.columns["note"]) == ['has, a "comma"', "", ""]
    # Writing what was read gives the same bytes: the format is a fixed point.
    again = tmp_path / f"again.{ext}"
    write_measurements(back, again)
    if ext != "parquet":
        assert again.read_bytes() == path.read_bytes()


def test_storage_convention():
    ms = MeasurementSet.from_records(_records())
    assert len(ms) == 3
    assert ms.columns["lookahead"].dtype == np.float64
    np.testing.assert_array_equal(ms.columns["lookahead"], [4, 4, 6])
    np.testing.assert_array_equal(np.isnan(ms.columns["trials"]), [True, False, False])
    assert ms.columns["target_model"].dtype == object
    assert list(ms.columns["target_model"]) == ["Llama-3-70B", "", ""]
    with pytest.raises(ValueError):
        ms.columns["acceptance"][0] = 0.9  # read-only


def test_acceptance_is_computed_from_counts():
    ms = MeasurementSet.from_records(_records())
    np.testing.assert_array_equal(ms.has_counts, [False, True, True])
    np.testing.assert_array_equal(ms.acceptance, [0.1 + 0.2, 7 / 9, 0.5])
    assert ms.acceptance.dtype == np.float64


def test_names_fall_back_to_sizes():
    ms = MeasurementSet.from_records(_records())
    assert list(ms.target_names) == ["Llama-3-70B", "70B", "70B"]
    assert list(ms.draft_names) == ["125M", "1B", "tiny"]


def test_select_by_mask_and_indices():
    ms = MeasurementSet.from_records(_records())
    picked = ms.select(ms.has_counts)
    assert len(picked) == 2
    np.testing.assert_array_equal(picked.acceptance, [7 / 9, 0.5])
    reordered = ms.select([2, 0])
    assert list(reordered.draft_names) == ["tiny", "125M"]
    with pytest.raises(ValueError, match="shape"):
        ms.select(np.array([True, False]))


def test_from_columns_keyword_and_nan_absent():
    ms = MeasurementSet.from_columns(
        draft_params=["125M", "1B"], target_params=np.array([70e9, 70e9]), draft_tokens=[2e12, 2e12],
        target_tokens=["15T", "15T"], draft_perplexity=[12.0, 10.0], target_perplexity=[7.0, 7.0],
        lookahead=[4, 5], acceptance=[0.6, np.nan], accepted=[None, 3], trials=[np.nan, 4])
    np.testing.assert_array_equal(ms.columns["draft_params"], [125e6, 1e9])
    np.testing.assert_array_equal(ms.acceptance, [0.6, 0.75])
    with pytest.raises(MeasurementError, match=r"measurements: row 2, column 'draft_perplexity': -1 is below 1"):
        MeasurementSet.from_columns(
            draft_params=[1e8, 1e8], target_params=[7e10, 7e10], draft_tokens=[1e12, 1e12],
            target_tokens=[1e12, 1e12], draft_perplexity=[12, -1], target_perplexity=[7, 7],
            lookahead=[4, 4], acceptance=[0.5, 0.5])


def test_suffix_sizes_in_csv(tmp_path):
    path = _csv(tmp_path, "125M,70B,2T,15T,12.5,6.9,4,0.7", "1.5e9, 7e10 ,2e12,15e12,12.5,6.9,4.0,0.7")
    ms = read_measurements(path)
    np.testing.assert_array_equal(ms.columns["draft_params"], [125e6, 1.5e9])
    np.testing.assert_array_equal(ms.columns["target_params"], [70e9, 70e9])
    np.testing.assert_array_equal(ms.columns["target_tokens"], [15e12, 15e12])


def test_suffix_not_accepted_outside_sizes(tmp_path):
    path = _csv(tmp_path, ROW, "125e6,70e9,2e12,15e12,12.5,6.9,4K,0.7")
    with pytest.raises(MeasurementError, match=r"row 2, column 'lookahead': '4K' is not a number"):
        read_measurements(path)


@pytest.mark.parametrize("cell, column, message", [
    ("-3,70e9,2e12,15e12,12.5,6.9,4,0.7", "draft_params", "-3 is not a positive number"),
    ("0,70e9,2e12,15e12,12.5,6.9,4,0.7", "draft_params", "0 is not a positive number"),
    ("125e6,-70B,2e12,15e12,12.5,6.9,4,0.7", "target_params", "'-70B' is not a positive number"),
    ("125e6,70e9,abc,15e12,12.5,6.9,4,0.7", "draft_tokens", "'abc' is not a positive number"),
    ("125e6,70e9,2e12,15e12,twelve,6.9,4,0.7", "draft_perplexity", "'twelve' is not a number"),
    ("125e6,70e9,2e12,15e12,nan,6.9,4,0.7", "draft_perplexity", "nan is not a finite number"),
    ("125e6,70e9,2e12,15e12,12.5,inf,4,0.7", "target_perplexity", "inf is not a finite number"),
    ("125e6,70e9,2e12,,12.5,6.9,4,0.7", "target_tokens", "missing value"),
    ("125e6,70e9,2e12,15e12,12.5,6.9,4,1.5", "acceptance", r"1.5 is not in \[0, 1\]"),
    ("125e6,70e9,2e12,15e12,12.5,6.9,4.5,0.7", "lookahead", "4.5 is not an integer >= 1"),
    ("125e6,70e9,2e12,15e12,12.5,6.9,0,0.7", "lookahead", "0 is not an integer >= 1"),
    ("125e6,70e9,2e12,15e12,12.5,6.9,4,", "acceptance", "missing value"),
])
def test_bad_value_names_file_row_and_column(tmp_path, cell, column, message):
    path = _csv(tmp_path, ROW, ROW, cell)
    with pytest.raises(MeasurementError, match=rf"measurements\.csv: row 3, column '{column}': {message}"):
        read_measurements(path)


def test_first_error_is_reported(tmp_path):
    bad = "-3,70e9,2e12,15e12,12.5,6.9,4.5,0.7"
    path = _csv(tmp_path, ROW, bad, "125e6,70e9,2e12,15e12,12.5,6.9,4,1.5")
    with pytest.raises(MeasurementError, match=r"row 2, column 'draft_params'"):
        read_measurements(path)


def test_count_errors(tmp_path):
    header = HEADER + ",accepted,trials"
    cases = [
        ("125e6,70e9,2e12,15e12,12.5,6.9,4,,11,10", "accepted", r"11 is more than trials \(10\)"),
        ("125e6,70e9,2e12,15e12,12.5,6.9,4,,2.5,10", "accepted", "2.5 is not an integer >= 0"),
        ("125e6,70e9,2e12,15e12,12.5,6.9,4,,0,0", "trials", "0 is not an integer >= 1"),
        ("125e6,70e9,2e12,15e12,12.5,6.9,4,,3,", "trials", "missing value"),
        ("125e6,70e9,2e12,15e12,12.5,6.9,4,0.5,7,10", "acceptance",
         r"0.5 disagrees with accepted/trials = 7/10 = 0.7"),
        ("125e6,70e9,2e12,15e12,12.5,6.9,4,,,", "acceptance", "missing value"),
    ]
    for row, column, message in cases:
        path = _csv(tmp_path, ROW + ",7,10", row, header=header)
        with pytest.raises(MeasurementError, match=rf"measurements\.csv: row 2, column '{column}': {message}"):
            read_measurements(path)
    # Within the tolerance both forms agree: a reported 0.7 for 7/10 loads.
    path = _csv(tmp_path, "125e6,70e9,2e12,15e12,12.5,6.9,4,0.7000001,7,10", header=header)
    assert read_measurements(path).acceptance[0] == 0.7


def test_interval_must_contain_acceptance(tmp_path):
    header = HEADER + ",acceptance_low,acceptance_high"
    cases = [("0.75,0.9", "acceptance_low", "0.75 is above the acceptance 0.7"),
             ("0.5,0.65", "acceptance_high", "0.65 is below the acceptance 0.7"),
             ("0.5,", "acceptance_high", "missing value")]
    for interval, column, message in cases:
        path = _csv(tmp_path, ROW + ",0.6,0.8", ROW + "," + interval, header=header)
        with pytest.raises(MeasurementError, match=rf"measurements\.csv: row 2, column '{column}': {message}"):
            read_measurements(path)


def test_missing_column(tmp_path):
    path = _csv(tmp_path, "125e6,70e9,2e12,12.5,6.9,4,0.7",
                header=HEADER.replace(",target_tokens", ""))
    with pytest.raises(MeasurementError, match=r"measurements\.csv: missing required column 'target_tokens' "
                                               r"\(columns found: draft_params, target_params, draft_tokens,"):
        read_measurements(path)


def test_missing_acceptance_and_half_pairs(tmp_path):
    path = _csv(tmp_path, "125e6,70e9,2e12,15e12,12.5,6.9,4", header=HEADER.replace(",acceptance", ""))
    with pytest.raises(MeasurementError, match=r"missing required column 'acceptance' \(or both 'accepted'"):
        read_measurements(path)
    path = _csv(tmp_path, "125e6,70e9,2e12,15e12,12.5,6.9,4,7", header=HEADER.replace("acceptance", "accepted"))
    with pytest.raises(MeasurementError, match=r"missing required column 'trials' \('accepted' is given"):
        read_measurements(path)


def test_empty_and_header_only_files(tmp_path):
    for name in ("measurements.csv", "measurements.jsonl", "measurements.parquet"):
        with pytest.raises(MeasurementError, match=rf"{name}: empty file"):
            read_measurements(_write(tmp_path, name, ""))
    with pytest.raises(MeasurementError, match=r"measurements\.csv: no measurement rows \(the file has only a header\)"):
        read_measurements(_csv(tmp_path))
    with pytest.raises(MeasurementError, match=r"measurements\.jsonl: no measurement rows"):
        read_measurements(_write(tmp_path, "measurements.jsonl", "\n  \n"))


def test_csv_ragged_row_and_blank_lines(tmp_path):
    path = _csv(tmp_path, ROW, "125e6,70e9")
    with pytest.raises(MeasurementError, match=r"measurements\.csv: row 2: 2 fields but the header names 8 "
                                               r"columns; missing columns 'draft_tokens', "):
        read_measurements(path)
    path = _csv(tmp_path, ROW, ROW + ",extra")
    with pytest.raises(MeasurementError, match=r"measurements\.csv: row 2: 9 fields .* column 9 has no header"):
        read_measurements(path)
    # A blank line is skipped, and the error then gives the file line as well as the row.
    path = _csv(tmp_path, ROW, "", "-1,70e9,2e12,15e12,12.5,6.9,4,0.7")
    with pytest.raises(MeasurementError, match=r"row 2 \(line 4\), column 'draft_params'"):
        read_measurements(path)


def test_jsonl_errors_name_the_line(tmp_path):
    good = json.dumps(dict(draft_params="125M", target_params=70e9, draft_tokens=2e12, target_tokens=15e12,
                           draft_perplexity=12.5, target_perplexity=6.9, lookahead=4, acceptance=0.7))
    path = _write(tmp_path, "measurements.jsonl", good + "\n\n" + '{"draft_params": 1e9,\n')
    with pytest.raises(MeasurementError, match=r"measurements\.jsonl: line 3: not valid JSON"):
        read_measurements(path)
    path = _write(tmp_path, "measurements.jsonl", good + "\n[1, 2]\n")
    with pytest.raises(MeasurementError, match=r"measurements\.jsonl: line 2: expected a JSON object"):
        read_measurements(path)
    bad = good.replace('"acceptance": 0.7', '"acceptance": true')
    path = _write(tmp_path, "measurements.jsonl", good + "\n\n" + bad + "\n")
    with pytest.raises(MeasurementError, match=r"measurements\.jsonl: row 2 \(line 3\), column 'acceptance': "
                                               r"True is not a number"):
        read_measurements(path)


def test_jsonl_encoding(tmp_path):
    good = json.dumps(dict(draft_params="125M", target_params=70e9, draft_tokens=2e12, target_tokens=15e12,
                           draft_perplexity=12.5, target_perplexity=6.9, lookahead=4, acceptance=0.7))
    # A byte-order mark is skipped, as in CSV; bytes that are not UTF-8 name their line.
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n")
    assert len(read_measurements(path)) == 1
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(good.encode() + b'\n{"family": "\xe9"}\n')
    with pytest.raises(MeasurementError, match=r"latin1\.jsonl: line 2: not UTF-8 text"):
        read_measurements(path)


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet"])
def test_a_failed_write_keeps_the_old_file(tmp_path, name, monkeypatch):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    path = tmp_path / name
    old = MeasurementSet.from_records(_records())
    write_measurements(old, path)
    before = path.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        write_measurements(MeasurementSet.from_records(_records()[:1]), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_parquet_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    columns = {name: [float(v)] * 2 for name, v in zip(HEADER.split(","), ROW.split(","))}
    columns["trials"] = [10, 10]
    columns["accepted"] = [7, 12]
    path = tmp_path / "measurements.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(MeasurementError, match=r"measurements\.parquet: row 2, column 'accepted': 12 is more"):
        read_measurements(path)
    _write(tmp_path, "measurements.parquet", "not parquet")
    with pytest.raises(MeasurementError, match=r"measurements\.parquet: not a readable Parquet file"):
        read_measurements(path)


def test_unknown_extension_and_format(tmp_path):
    path = _write(tmp_path, "measurements.xlsx", HEADER + "\n" + ROW + "\n")
    with pytest.raises(MeasurementError, match=r"measurements\.xlsx: .*'\.xlsx'.*\.csv, \.jsonl, \.ndjson or \.parquet") as info:
        read_measurements(path)
    # The CLI has no format option, so the message must not suggest one.
    assert "format" not in str(info.value).split(";")[1]
    # An explicit format overrides the extension.
    assert len(read_measurements(path, format="csv")) == 1
    with pytest.raises(ValueError, match="unknown measurement format 'xls'"):
        read_measurements(path, format="xls")


def test_bad_records(tmp_path):
    with pytest.raises(MeasurementError, match=r"measurements: row 2: expected a mapping"):
        MeasurementSet.from_records([_records()[0], [1, 2]])
    with pytest.raises(MeasurementError, match=r"runs: missing required column 'target_params' \(columns found: draft_params\)"):
        MeasurementSet.from_records([{"draft_params": 1e9}], source="runs")


def test_direct_construction_validates_and_arrays_are_read_only():
    ms = MeasurementSet.from_records(_records())
    columns = dict(ms.columns)
    columns["acceptance"] = np.array([0.3, np.nan, 1.5])
    with pytest.raises(MeasurementError, match=r"runs: row 3, column 'acceptance': 1.5 is not in"):
        MeasurementSet(columns, source="runs")
    picked = ms.select([0, 1])
    with pytest.raises(ValueError):
        picked.columns["draft_params"][0] = -1.0
    with pytest.raises(MeasurementError, match="differ in length"):
        MeasurementSet.from_columns({**dict(ms.columns), "seed": ["1"]})


# --------------------------------------------------------------------------
# What a careless user gives: encodings, files that are not files, headers.


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
@pytest.mark.parametrize("data, words", [
    (lambda text: text.encode("latin-1"), ("line 2", "not UTF-8", "0xE9")),
    (lambda text: text.encode("utf-16"), ("UTF-16", "save it as UTF-8")),
    (lambda text: text.encode().replace(b"Caf", b"\x00af"), ("NUL", "binary")),
])
def test_encodings_other_than_utf8_are_one_line(tmp_path, ext, data, words):
    if ext == "csv":
        text = f"{HEADER},draft_model\n{ROW},Café\n"
    else:
        record = dict(zip(HEADER.split(","), ROW.split(",")), draft_model="Café")
        text = json.dumps(record, ensure_ascii=False) + "\n"
        text = "\n" + text  # the bad byte on line 2 in both formats
    path = tmp_path / f"m.{ext}"
    path.write_bytes(data(text))
    with pytest.raises(MeasurementError) as info:
        read_measurements(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_a_bom_reads_like_no_bom(tmp_path, ext):
    plain = MeasurementSet.from_records(_records())
    write_measurements(plain, tmp_path / f"plain.{ext}")
    marked = tmp_path / f"marked.{ext}"
    marked.write_bytes(b"\xef\xbb\xbf" + (tmp_path / f"plain.{ext}").read_bytes())
    np.testing.assert_array_equal(read_measurements(marked).acceptance, plain.acceptance)


def test_a_folder_a_missing_file_and_a_binary_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(MeasurementError, match=r"dir\.csv is a folder, expected a file"):
        read_measurements(tmp_path / "dir.csv")
    with pytest.raises(MeasurementError, match=r"nope\.csv: cannot read it: no such file"):
        read_measurements(tmp_path / "nope.csv")
    (tmp_path / "book.csv").write_bytes(b"PK\x03\x04" + bytes(range(256)))
    with pytest.raises(MeasurementError, match=r"book\.csv looks like a zip archive"):
        read_measurements(tmp_path / "book.csv")


def test_duplicated_and_blank_column_names(tmp_path):
    with pytest.raises(MeasurementError, match=r"measurements\.csv: column 'lookahead' appears twice"):
        read_measurements(_csv(tmp_path, ROW + ",4", header=HEADER + ",lookahead"))
    with pytest.raises(MeasurementError, match=r"measurements\.csv: column 9 has no name"):
        read_measurements(_csv(tmp_path, ROW + ",", header=HEADER + ","))


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_a_misspelt_column_is_refused_with_a_guess_but_extra_columns_are_kept(tmp_path, ext):
    if ext == "parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"m.{ext}"
    # Written by hand: the writer refuses 'accepted' without 'trials'.
    header = HEADER + ",accepted,trial,seed"
    if ext == "csv":
        path.write_text(f"{header}\n{ROW},7,10,3\n")
    elif ext == "jsonl":
        path.write_text(json.dumps(dict(zip(header.split(","), ROW.split(",") + ["7", "10", "3"]))) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({name: [value] for name, value in
                                 zip(header.split(","), ROW.split(",") + ["7", "10", "3"])}), path)
    with pytest.raises(MeasurementError, match=r"unknown column 'trial' \(did you mean 'trials'\?\)"):
        read_measurements(path)


def test_extra_columns_far_from_known_ones_round_trip(tmp_path):
    path = _csv(tmp_path, ROW + ",17,ok", header=HEADER + ",seed,notes")
    ms = read_measurements(path)
    assert list(ms.columns["seed"]) == ["17"] and list(ms.columns["notes"]) == ["ok"]


def test_a_perplexity_below_1_says_what_a_perplexity_is(tmp_path):
    rows = [ROW] * 10 + ["125e6,70e9,2e12,15e12,12.5,0.5,4,0.7"]
    with pytest.raises(MeasurementError, match=r"measurements\.csv: row 11, column 'target_perplexity': "
                                               r"0\.5 is below 1; a perplexity is exp\(loss\) >= 1"):
        read_measurements(_csv(tmp_path, *rows))
    # Exactly 1 (a loss of 0) is a perplexity.
    assert read_measurements(_csv(tmp_path, "125e6,70e9,2e12,15e12,1,1.0,4,0.7")).columns[
        "draft_perplexity"][0] == 1.0


def test_broken_csv_quoting_names_the_line(tmp_path):
    path = _csv(tmp_path, ROW, '125e6,70e9,2e12,15e12,12.5,6.9,4,"0.7"x')
    with pytest.raises(MeasurementError, match=r"measurements\.csv: line 3: not valid CSV"):
        read_measurements(path)
