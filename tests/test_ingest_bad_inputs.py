"""A corpus of bad inputs (issue 12), generated here, each through the Spark
ingest job's functions (the test session's SparkSession, every case its own
source in one run) and through the mrjob twin on -r inline: every line of
the input is a record, a reject or a counted skip (input lines = good +
rejected + skipped, lines counted here independently), and both engines give
the same records, the same rejects with the same reasons, and the same
skips. CSV has no twin: CSV cases are compared with the plain-Python rules
(udfs.records.parse_file) instead. Files that cannot be read to their end
fail on both engines with an error naming the file.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from jobs.mapreduce.mr_ingest_records import MRIngestRecords
from jobs.spark import ingest
from tests.mapreduce.conftest import json_lines, run_job
from udfs import records as R
from udfs.ingest_rows import split_rows
from udfs.input_files import UnreadableInputError

BOM = b"\xef\xbb\xbf"
TSV_HEADER = b"id\tsentiment\ttext"


def j(**fields) -> bytes:
    return json.dumps(fields).encode()


def lines(*rows: bytes, end: bytes = b"\n") -> bytes:
    return b"".join(row + end for row in rows)


GOOD = [j(text=f"good row {i}", rating=float(i % 5) - 2) for i in range(5)]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    good: int
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    fmt: str = "jsonl"
    file: str = "data.jsonl"
    extra_files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # beside the data file


CASES = [
    Case("malformed_json", lines(GOOD[0], b'{"text": "cut off', b'{"text": }', GOOD[1]), 2, {"malformed_json": 2}),
    Case("not_an_object", lines(b'["a", "list"]', b'"a string"', b"42", b"null", GOOD[0]), 1, {"not_a_json_object": 4}),
    Case("missing_text", lines(j(rating=1.0), b'{"text": null}', j(body="wrong field")), 0, {"missing_text": 3}),
    Case("wrong_type_text", lines(j(text=5), j(text=["a"]), j(text={"a": 1}), j(text=True)), 0, {"wrong_type:text": 4}),
    Case(
        "wrong_type_rating",
        lines(j(text="a", rating="high"), j(text="b", rating=True), b'{"text": "c", "rating": NaN}', GOOD[2]),
        1,
        {"wrong_type:rating": 3},
    ),
    Case(
        "label",
        lines(j(text="a", label="meh"), j(text="b", label=1), j(text="c", label="positive")),
        1,
        {"unknown_label": 1, "wrong_type:label": 1},
    ),
    Case(
        "invalid_utf8",
        lines(
            b'{"text": "caf\xe9"}', b'{"text": "cut \xe2\x82"}', b'{"text": "\xed\xa0\x80"}', b'{"text": "\xc0\xaf"}'
        ),
        0,
        {"invalid_utf8": 4},
    ),
    Case(
        "unpaired_surrogate_escape",
        lines(b'{"text": "a\\ud800 b"}', b'{"text": "pair \\ud83d\\ude00"}'),
        1,
        {"invalid_unicode": 1},
    ),
    Case("whitespace_text", lines(j(text="   "), j(text="\t\n "), j(text="")), 0, {"empty_text": 3}),
    Case(
        "zero_width_text",
        lines(j(text="\u200b\u200b"), j(text="\ufeff"), j(text="\u200d \u2060\u00ad"), j(text="a\u200b")),
        1,
        {"empty_text": 3},
    ),
    Case(
        "nul_and_control_text", lines(j(text="\x00"), j(text="\x00 \x01\x7f"), j(text="ok\x00")), 1, {"empty_text": 2}
    ),
    Case("raw_nul_byte", lines(b'{"text": "a\x00b"}', b"\x00\x00"), 0, {"malformed_json": 2}),
    Case("duplicates", lines(GOOD[0], GOOD[0], GOOD[1], GOOD[0], GOOD[1]), 2, {"duplicate_record": 3}),
    Case("blank_lines", lines(GOOD[0], b"", b"   ", b"\t", b"\x0b\x0c", GOOD[1]), 2, {}, {"blank_line": 4}),
    Case("bom_first_line", BOM + lines(GOOD[0], GOOD[1]), 2),
    Case("bom_every_line", lines(BOM + GOOD[0], BOM + GOOD[1], BOM), 2, {}, {"blank_line": 1}),
    # Hadoop's reader drops the BOM at a file's start: a file of nothing else has no line
    # (found by test_ingest_properties.py), one with a line ending after it has a blank one.
    Case("bom_only", BOM, 0),
    Case("bom_only_gzip", gzip.compress(BOM), 0, file="data.jsonl.gz"),
    Case("bom_then_newline", BOM + b"\n", 0, {}, {"blank_line": 1}),
    Case("bom_last_no_newline", lines(GOOD[0]) + BOM, 1, {}, {"blank_line": 1}),
    Case("cr_line_endings", lines(*GOOD[:3], end=b"\r"), 3),
    Case("crlf_line_endings", lines(*GOOD[:3], end=b"\r\n"), 3),
    Case("mixed_endings_and_blanks", GOOD[0] + b"\r\r\n" + GOOD[1] + b"\n\r\n" + GOOD[2], 3, {}, {"blank_line": 2}),
    Case("no_final_newline", lines(GOOD[0]) + GOOD[1], 2),
    Case("one_long_line", lines(j(text="long " * 250_000), GOOD[0]), 2),
    Case("only_blank_lines", b"\n\n  \r\n", 0, {}, {"blank_line": 3}),
    Case("empty_file", b"", 0),
    Case(
        "hidden_files_beside",
        lines(GOOD[0], GOOD[1]),
        2,
        extra_files={".data.jsonl.crc": b"\x00crc\xff", "_SUCCESS": b"", "_temporary/part-0": lines(GOOD[2])},
    ),
    Case(
        "gzip_file",
        gzip.compress(lines(GOOD[0], b"", b"{bad")),
        1,
        {"malformed_json": 1},
        {"blank_line": 1},
        file="data.jsonl.gz",
    ),
    Case("bzip2_file", bz2.compress(lines(GOOD[0], GOOD[0])), 1, {"duplicate_record": 1}, file="data.jsonl.bz2"),
    Case(
        "tsv_bad_rows",
        lines(TSV_HEADER, b"1\t2.0\tfine", b"2\t1.0", b"3\t1.0\ttoo\tmany", b"4\tabc\ttext", b"5\t-3\tbad day"),
        2,
        {"wrong_field_count": 2, "wrong_type:rating": 1},
        {"header_line": 1},
        fmt="tsv",
        file="data.tsv",
    ),
    Case(
        "tsv_bom_and_repeated_header",
        BOM + lines(TSV_HEADER, b"1\t2.0\tfine", TSV_HEADER, b"2\t1.0\talso fine"),
        2,
        {},
        {"header_line": 2},
        fmt="tsv",
        file="data.tsv",
    ),
]

CSV_HEADER = b"id,sentiment,text"
CSV_CASES = [
    # one stray quote costs its row, not the rows after it
    Case(
        "csv_stray_quote",
        lines(CSV_HEADER, b'1,1.0,"stray quote', b"2,1.0,a", b"3,1.0,b", b"4,1.0,c", b"5,1.0,d"),
        4,
        {"malformed_csv": 1},
        {"header_line": 1},
        fmt="csv",
        file="data.csv",
    ),
    Case(
        "csv_quoted_newline_and_stray_quote",
        lines(CSV_HEADER, b'1,1.0,"two', b'lines"', b'2,1.0,"stray', b"3,1.0,x", b'4,1.0,"again', b'two"', b""),
        3,
        {"malformed_csv": 1},
        {"header_line": 1, "blank_line": 1},
        fmt="csv",
        file="data.csv",
    ),
    Case(
        "csv_unterminated_at_end_crlf",
        lines(CSV_HEADER, b"1,1.0,a", b"2,1.0,b", b'3,1.0,"never closed', end=b"\r\n"),
        2,
        {"malformed_csv": 1},
        {"header_line": 1},
        fmt="csv",
        file="data.csv",
    ),
]


def n_lines(data: bytes) -> int:
    """Lines as Hadoop counts them, counted here without the project's code
    (its LineRecordReader drops a BOM at the file's start, so a file of only
    a BOM has none)."""
    if data == BOM:
        return 0
    parts = re.split(rb"\r\n|\r|\n", data)
    return len(parts) - (parts[-1] == b"")


def spec_of(case: Case) -> R.SourceSpec:
    if case.fmt == "jsonl":
        return R.SourceSpec(
            case.name, "jsonl", rating_field="rating", label_field="label", labels=("negative", "positive")
        )
    return R.SourceSpec(case.name, case.fmt, rating_field="sentiment", rating_labels=("negative", "positive"))


def write_case(base: Path, case: Case) -> Path:
    folder = base / case.name
    folder.mkdir()
    (folder / case.file).write_bytes(case.data)
    for name, data in case.extra_files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def outcome(records: list[dict], rejects: list[dict], skipped: dict[str, int]) -> dict:
    return {
        "records": sorted((r["id"], r["text"], r["label"], r["rating"]) for r in records),
        "rejects": sorted((r["id"], r["reason"], r["raw"]) for r in rejects),
        "skipped": {k: v for k, v in skipped.items() if v},
    }


@pytest.fixture(scope="module")
def spark_outcomes(spark, tmp_path_factory) -> dict[str, dict]:
    """Every case (JSON Lines, TSV, CSV) as its own source in one ingest run."""
    base = tmp_path_factory.mktemp("corpus")
    sources = [(str(write_case(base, c)), spec_of(c)) for c in CASES + CSV_CASES]
    result = ingest.ingest(spark, sources)
    try:
        records = [r.asDict() for r in result.records.collect()]
        rejects = [r.asDict() for r in result.rejects.collect()]
        skips = result.parsed.where("kind = 'skip'").groupBy("source", "reason").count().collect()
    finally:
        result.release()
    out = {}
    for c in CASES + CSV_CASES:
        skipped = {r["reason"]: r["count"] for r in skips if r["source"] == c.name}
        out[c.name] = outcome(
            [r for r in records if r["source"] == c.name], [r for r in rejects if r["source"] == c.name], skipped
        )
    return {"base": base, **out}


def twin_outcome(folder: Path, case: Case) -> dict:
    args = ["-r", "inline", "--no-conf", "--source", case.name]
    if case.fmt == "tsv":
        args += ["--format", "tsv", "--header", TSV_HEADER.decode(), "--rating-field", "sentiment"]
    else:
        args += ["--rating-field", "rating", "--label-field", "label", "--labels", "negative,positive"]
    out, counters = run_job(MRIngestRecords, [*args, str(folder)])
    records, rejects = split_rows(json_lines(out))
    group = counters[-1].get("ingest", {}) if counters else {}
    skipped = {k.removeprefix("skipped "): v for k, v in group.items() if k.startswith("skipped ")}
    return outcome(records, rejects, skipped)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_on_both_engines(case, spark_outcomes, tmp_path):
    spark = spark_outcomes[case.name]
    twin = twin_outcome(write_case(tmp_path, case), case)
    assert twin == spark

    data = R.decompress(case.file, case.data)
    good, rejected, skipped = len(spark["records"]), len(spark["rejects"]), sum(spark["skipped"].values())
    assert good + rejected + skipped == n_lines(data)
    assert good == case.good
    assert dict(Counter(reason for _, reason, _ in spark["rejects"])) == case.reasons
    assert spark["skipped"] == case.skipped


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.name for c in CSV_CASES])
def test_bad_csv_matches_the_rules(case, spark_outcomes):
    spark = spark_outcomes[case.name]
    rules = list(R.parse_file(spec_of(case), case.file, case.data))
    expected = outcome(
        [r for k, r, _ in rules if k == R.RECORD],
        [r for k, r, _ in rules if k == R.REJECT],
        dict(Counter(r["reason"] for k, r, _ in rules if k == R.SKIP)),
    )
    assert spark == expected
    assert len(spark["records"]) == case.good
    assert dict(Counter(reason for _, reason, _ in spark["rejects"])) == case.reasons
    assert spark["skipped"] == case.skipped


def test_bom_and_line_endings_do_not_change_ids(spark_outcomes):
    plain = spark_outcomes["crlf_line_endings"]["records"]
    assert [r[1:] for r in spark_outcomes["cr_line_endings"]["records"]] == [r[1:] for r in plain]
    ids = {R.record_id("bom_first_line", GOOD[0]), R.record_id("bom_first_line", GOOD[1])}
    assert {r[0] for r in spark_outcomes["bom_first_line"]["records"]} == ids


TRUNCATED = gzip.compress(lines(*(j(text=f"row {i}") for i in range(400))))
UNREADABLE = [
    ("truncated_gzip", "data.jsonl.gz", TRUNCATED[: len(TRUNCATED) // 2], "truncated gzip|Unexpected end"),
    ("plain_text_named_gz", "data.jsonl.gz", lines(GOOD[0]), "gzip"),
    ("truncated_bzip2", "data.jsonl.bz2", bz2.compress(lines(*GOOD))[:-20], "bzip2|end of|EOF"),
]


@pytest.mark.parametrize("name, file, data, cause", UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_unreadable_file_fails_naming_it_on_both_engines(spark, tmp_path, name, file, data, cause):
    path = tmp_path / file
    path.write_bytes(data)
    with pytest.raises(UnreadableInputError, match=re.escape(file)) as spark_error:
        ingest.ingest(spark, [(str(path), R.SourceSpec(name, "jsonl"))])
    assert re.search(cause, str(spark_error.value), re.I)
    with pytest.raises(UnreadableInputError, match=re.escape(str(path))) as twin_error:
        run_job(MRIngestRecords, ["-r", "inline", "--no-conf", "--source", name, str(path)])
    assert re.search(cause, str(twin_error.value), re.I)


def test_header_without_the_text_column_fails_naming_the_file(spark, tmp_path):
    path = tmp_path / "no_text.csv"
    path.write_bytes(lines(b"id,sentiment,body", b"1,1.0,words"))
    with pytest.raises(
        ValueError, match=r"no_text\.csv: header \['id', 'sentiment', 'body'\] has no text field 'text'"
    ):
        ingest.ingest(spark, [(str(path), R.SourceSpec("h", "csv"))])
    with pytest.raises(ValueError, match="--header 'id\\\\tsentiment\\\\tbody' has no text field 'text'"):
        run_job(
            MRIngestRecords,
            ["-r", "inline", "--no-conf", "--source", "h", "--format", "tsv", "--header", "id\tsentiment\tbody"],
            stdin=b"1\t1.0\twords\n",
        )
