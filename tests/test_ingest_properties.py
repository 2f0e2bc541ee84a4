"""Property test (hypothesis): for generated JSON Lines files (any text, raw
bytes, bad JSON, BOMs, blank lines, duplicates, LF/CRLF/CR endings), every
line is a record, a reject or a counted skip on both engines, and the Spark
job's functions and the mrjob twin (-r inline) give the same outcome."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobs.mapreduce.mr_ingest_records import MRIngestRecords
from jobs.spark import ingest
from tests.mapreduce.conftest import json_lines, run_job
from tests.test_ingest_bad_inputs import n_lines, outcome
from udfs import records as R
from udfs.ingest_rows import split_rows

SPEC = R.SourceSpec("prop", "jsonl", rating_field="rating", rating_labels=("negative", "positive"))

json_line = st.builds(
    lambda text, rating, ascii_only: json.dumps({"text": text, "rating": rating}, ensure_ascii=ascii_only).encode(),
    st.text(max_size=12),
    st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(["high", True]),
    st.booleans(),
)
raw_bytes = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
fixed = st.sampled_from(
    [b"", b"  ", b'{"text": "cut', b"[1]", b'{"text": "a\\ud800"}', b'{"text": "\\u200b"}', b'{"text": "caf\xe9"}']
)
line = st.tuples(st.booleans(), json_line | raw_bytes | fixed).map(lambda t: R.BOM + t[1] if t[0] else t[1])
ending = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def jsonl_files(draw) -> bytes:
    rows = draw(st.lists(st.tuples(line, ending), max_size=20))
    if rows and draw(st.booleans()):
        rows += [rows[0]]  # a duplicate
    data = b"".join(text + end for text, end in rows)
    return data.rstrip(b"\r\n") if draw(st.booleans()) else data  # with or without a final terminator


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=jsonl_files())
# Found by this test in a fresh-clone run: a file starting with two BOMs
# (Spark's reader drops the first; the inline twin reads both).
@example(data=R.BOM + R.BOM + b"\n")
@example(data=R.BOM + R.BOM + b'{"text": "two marks", "rating": 1.0}\n' + R.BOM + R.BOM + b"[1]\n")
# And a file of only a BOM, which Hadoop's reader reads as no line at all.
@example(data=R.BOM)
def test_every_line_is_accounted_for_and_the_engines_agree(spark, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("prop") / "in.jsonl"
    path.write_bytes(data)

    result = ingest.ingest(spark, [(str(path), SPEC)])
    try:
        records = [r.asDict() for r in result.records.collect()]
        rejects = [r.asDict() for r in result.rejects.collect()]
        skipped = {
            r["reason"]: r["count"] for r in result.parsed.where("kind = 'skip'").groupBy("reason").count().collect()
        }
    finally:
        result.release()
    spark_side = outcome(records, rejects, skipped)

    out, counters = run_job(
        MRIngestRecords, ["-r", "inline", "--no-conf", "--source", "prop", "--rating-field", "rating", str(path)]
    )
    mr_records, mr_rejects = split_rows(json_lines(out))
    group = counters[-1].get("ingest", {}) if counters else {}
    twin_skipped = {k.removeprefix("skipped "): v for k, v in group.items() if k.startswith("skipped ")}

    assert outcome(mr_records, mr_rejects, twin_skipped) == spark_side
    assert len(records) + len(rejects) + sum(skipped.values()) == n_lines(data)
    assert group.get("input", 0) == len(records) + len(rejects)
