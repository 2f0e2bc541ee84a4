"""Spark ingest splits a JSON Lines file into tasks at byte offsets, as
Hadoop does, and every split boundary here falls inside a multi-byte UTF-8
character, an invalid byte sequence or a CRLF: the lines, ids and reject
reasons equal the mrjob twin's (-r inline) and the plain-Python rules' on
the whole file."""

from __future__ import annotations

import pytest

from jobs.mapreduce.mr_ingest_records import MRIngestRecords
from jobs.spark import ingest
from tests.mapreduce.conftest import json_lines, run_job
from udfs import records as R
from udfs.ingest_rows import split_rows

SPLIT = 64  # bytes per Spark split (spark.sql.files.maxPartitionBytes)
PREFIX = b'{"text": "'
# What straddles each boundary, and where in it the boundary falls.
STRADDLING = [
    ("e-acute, 2 bytes", "caf\u00e9".encode()[-2:], 1),
    ("euro sign, 3 bytes, after byte 1", "\u20ac".encode(), 1),
    ("euro sign, 3 bytes, after byte 2", "\u20ac".encode(), 2),
    ("emoji, 4 bytes", "\U0001f600".encode(), 2),
    ("truncated sequence + invalid byte", b"\xe2\x82\xff", 1),
    ("two invalid bytes", b"\xff\xfe", 1),
    ("lone continuation bytes", b"\x80\x80\x80", 2),
    ("latin-1 byte pair", b"\xe9\xe8", 1),
]


def straddling_file() -> tuple[bytes, list[int]]:
    """JSON Lines whose k-th split boundary (k * SPLIT) falls inside the k-th
    STRADDLING sequence; then one boundary inside a CRLF. Returns the bytes
    and the boundaries."""
    data = b""
    boundaries = []
    for k, (_, seq, cut) in enumerate(STRADDLING, start=1):
        boundary = k * SPLIT
        filler = boundary - cut - len(data) - len(PREFIX)
        assert filler >= 1, "lines too long for the split size"
        data += PREFIX + b"w" * filler + seq + b' end"}\n'
        assert data[boundary - cut : boundary - cut + len(seq)] == seq
        boundaries.append(boundary)
    # a CRLF cut in two, then a blank line made of one CRLF
    boundary = (len(STRADDLING) + 1) * SPLIT
    line = PREFIX + b"x" * (boundary - 1 - len(data) - len(PREFIX) - 2) + b'"}'
    data += line + b"\r\n\r\n"
    assert data[boundary - 1 : boundary + 1] == b"\r\n"
    boundaries.append(boundary)
    data += b'{"text": "last line, no terminator"}'
    return data, boundaries


@pytest.fixture
def small_splits(spark):
    key = "spark.sql.files.maxPartitionBytes"
    before = spark.conf.get(key)
    spark.conf.set(key, str(SPLIT))
    try:
        yield
    finally:
        spark.conf.set(key, before)


def test_split_boundaries_inside_characters_give_the_twins_ids_and_reasons(spark, tmp_path, small_splits):
    data, boundaries = straddling_file()
    path = tmp_path / "straddling.jsonl"
    path.write_bytes(data)
    spec = R.SourceSpec("cut", "jsonl")

    lines = ingest.read_lines(spark, str(path))
    assert lines.rdd.getNumPartitions() == -(-len(data) // SPLIT) > len(boundaries)
    result = ingest.ingest(spark, [(str(path), spec)])
    try:
        spark_records = {r["id"]: r.asDict() for r in result.records.collect()}
        spark_rejects = sorted((r["id"], r["reason"], r["raw"]) for r in result.rejects.collect())
        counts = result.counts()
    finally:
        result.release()

    out, counters = run_job(MRIngestRecords, ["-r", "inline", "--no-conf", "--source", "cut", str(path)])
    mr_records, mr_rejects = split_rows(json_lines(out))
    assert spark_records == {r["id"]: r for r in mr_records}
    assert spark_rejects == sorted((r["id"], r["reason"], r["raw"]) for r in mr_rejects)

    # and both equal the rules applied to the whole file at once
    whole = list(R.parse_file(spec, path.name, data))
    assert sorted(r["id"] for k, r, _ in whole if k == "record") == sorted(spark_records)
    assert sorted((r["id"], r["reason"], r["raw"]) for k, r, _ in whole if k == "reject") == spark_rejects
    assert counts == {"input": len(STRADDLING) + 2, "skipped": {R.BLANK_LINE: 1}}
    assert counters[0]["ingest"]["skipped blank_line"] == 1
    assert sorted(r["reason"] for r in mr_rejects) == ["invalid_utf8"] * 4
    # the characters cut by a boundary arrive whole
    valid = [seq.decode() for _, seq, _ in STRADDLING if _is_utf8(seq)]
    assert sorted(r["text"][-5:] for r in mr_records if r["text"].startswith("w")) == sorted(c + " end" for c in valid)


def _is_utf8(seq: bytes) -> bool:
    try:
        seq.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
