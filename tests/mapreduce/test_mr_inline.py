"""The mrjob twins on the inline runner (sandboxed, --no-conf): the full set
of unit cases. Output order never matters here: rows are compared as sets
or sorted, except where the job promises an order."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from jobs.mapreduce.mr_compute_stats import MRComputeStats
from jobs.mapreduce.mr_ingest_records import MRIngestRecords
from jobs.mapreduce.mr_score_records import MRScoreRecords, ShippedModelMissing
from udfs import records as R
from udfs.config import EncoderConfig
from udfs.ingest_rows import split_rows
from udfs.models import ModelError

from .conftest import json_lines, run_job

INLINE = ["--no-conf", "-r", "inline"]

GOOD_AND_BAD = [
    b'{"text": "I love this movie", "sentiment": 3.2}',
    b'{"text": "terrible,   awful film", "sentiment": -2.5}',
    b'{"text": "just fine", "sentiment": 0.1}',
    b"not json",
    b"[1, 2]",
    b'{"text": "I love this movie", "sentiment": 3.2}',
    b'{"sentiment": 1}',
    b'{"text": 5}',
    b'{"text": "   "}',
    b'{"text": "meh", "sentiment": "x"}',
    b'\xff\xfe{"text": "bad utf"}',
    b"",
]


def ingest(lines: list[bytes], *args: str):
    out, counters = run_job(
        MRIngestRecords,
        [*INLINE, "--source", "t", "--rating-field", "sentiment", *args],
        stdin=b"\n".join(lines) + b"\n",
    )
    return split_rows(json_lines(out)), counters


def test_ingest_records_and_rejects_with_reasons():
    (records, rejects), counters = ingest(GOOD_AND_BAD)
    rid = lambda raw: R.record_id("t", raw)  # noqa: E731
    assert sorted(records, key=lambda r: r["id"]) == sorted(
        [
            {
                "id": rid(GOOD_AND_BAD[0]),
                "source": "t",
                "text": "I love this movie",
                "label": "positive",
                "rating": 3.2,
            },
            {
                "id": rid(GOOD_AND_BAD[1]),
                "source": "t",
                "text": "terrible, awful film",
                "label": "negative",
                "rating": -2.5,
            },
            {"id": rid(GOOD_AND_BAD[2]), "source": "t", "text": "just fine", "label": None, "rating": 0.1},
        ],
        key=lambda r: r["id"],
    )
    assert sorted((r["reason"], r["raw"]) for r in rejects) == sorted(
        [
            ("malformed_json", "not json"),
            ("not_a_json_object", "[1, 2]"),
            ("duplicate_record", '{"text": "I love this movie", "sentiment": 3.2}'),
            ("missing_text", '{"sentiment": 1}'),
            ("wrong_type:text", '{"text": 5}'),
            ("empty_text", '{"text": "   "}'),
            ("wrong_type:rating", '{"text": "meh", "sentiment": "x"}'),
            ("invalid_utf8", '\\xff\\xfe{"text": "bad utf"}'),
        ]
    )
    ingest_counters = counters[-1]["ingest"]
    # Blank lines are not records; every other line is counted once.
    assert ingest_counters["input"] == 11 == len(records) + len(rejects)
    assert ingest_counters["good"] == 3 and ingest_counters["rejected"] == 8
    assert ingest_counters["reason duplicate_record"] == 1


def test_ingest_does_not_depend_on_input_order():
    (records, rejects), _ = ingest(GOOD_AND_BAD)
    shuffled = GOOD_AND_BAD[:]
    random.Random(7).shuffle(shuffled)
    (records2, rejects2), _ = ingest(shuffled)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, records)) == sorted(map(key, records2))
    assert sorted(map(key, rejects)) == sorted(map(key, rejects2))


def test_ingest_empty_input():
    (records, rejects), counters = ingest([])
    assert records == [] and rejects == []
    assert counters[-1].get("ingest", {}).get("input", 0) == 0


def test_ingest_tsv_with_header(movie_lines):
    lines = movie_lines[:21]
    out, _ = run_job(
        MRIngestRecords,
        [
            *INLINE,
            "--source",
            "movies",
            "--format",
            "tsv",
            "--header",
            "id\tsentiment\ttext",
            "--rating-field",
            "sentiment",
        ],
        stdin=b"\n".join(lines) + b"\n",
    )
    records, rejects = split_rows(json_lines(out))
    assert rejects == []
    assert len(records) == 20
    header = R.parse_header("tsv", lines[0])
    spec = R.SourceSpec(source="movies", format="tsv", rating_field="sentiment", rating_labels=("negative", "positive"))
    expected = [R.parse_record(spec, raw, header)[1] for raw in lines[1:]]
    assert sorted(records, key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])


def test_ingest_tsv_needs_header():
    with pytest.raises(Exception, match="--format tsv needs --header"):
        run_job(MRIngestRecords, [*INLINE, "--source", "m", "--format", "tsv"], stdin=b"1\t2\tx\n")


SCORED = [
    {"id": "a", "source": "s1", "text": "Good good film", "predicted": "positive"},
    {"id": "b", "source": "s1", "text": "bad film", "predicted": "negative"},
    {"id": "c", "source": "s2", "text": "good acting, the film", "predicted": "positive"},
    {"id": "d", "source": "s2", "text": None, "predicted": None},
]


def stats(rows, *args):
    out, counters = run_job(
        MRComputeStats, [*INLINE, *args], stdin=b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    )
    tables: dict[str, list] = {}
    for line in b"".join(out).splitlines():
        table, row = line.split(b"\t", 1)
        tables.setdefault(json.loads(table), []).append(json.loads(row))
    return tables, counters


def test_stats_tables_in_order():
    tables, counters = stats(SCORED, "--set", "stats.top_k=2")
    assert tables["counts"] == [
        {"source": "s1", "label": "negative", "count": 1},
        {"source": "s1", "label": "positive", "count": 1},
        {"source": "s2", "label": "", "count": 1},
        {"source": "s2", "label": "positive", "count": 1},
    ]
    assert tables["term_freq"] == [
        {"label": "negative", "term": "bad", "count": 1},
        {"label": "negative", "term": "film", "count": 1},
        {"label": "positive", "term": "acting", "count": 1},
        {"label": "positive", "term": "film", "count": 2},
        {"label": "positive", "term": "good", "count": 3},
    ]
    assert tables["top_terms"] == [
        {"label": "negative", "rank": 1, "term": "bad", "count": 1},
        {"label": "negative", "rank": 2, "term": "film", "count": 1},
        {"label": "positive", "rank": 1, "term": "good", "count": 3},
        {"label": "positive", "rank": 2, "term": "film", "count": 2},
    ]
    assert counters[0]["stats"]["rows"] == 4


def test_stats_input_order_does_not_matter():
    first, _ = stats(SCORED)
    second, _ = stats(list(reversed(SCORED)))
    assert first == second


def test_stats_empty_input():
    tables, _ = stats([])
    assert tables == {}


def score_args(registry, *extra):
    return [*INLINE, "--set", f"registry_dir={registry.root}", "--model", "sentiment@1", *extra]


def test_score_matches_the_model_called_directly(tiny_registry, movie_lines):
    from udfs.predict import ScoreSettings, score_texts

    spec = R.SourceSpec(source="movies", format="tsv", rating_field="sentiment", rating_labels=("negative", "positive"))
    header = R.parse_header("tsv", movie_lines[0])
    rows = [R.parse_record(spec, raw, header)[1] for raw in movie_lines[1:41]]
    reject = {"id": "r1", "source": "movies", "reason": "malformed_json", "raw": "x"}
    stdin = b"".join(json.dumps(r).encode() + b"\n" for r in [*rows, reject])
    out, counters = run_job(MRScoreRecords, score_args(tiny_registry, "--flush-rows", "16"), stdin=stdin)
    scored = {r["id"]: r for r in json_lines(out)}
    assert set(scored) == {r["id"] for r in rows}
    head = tiny_registry.load("sentiment@1")
    direct = score_texts(
        [r["text"] for r in rows], ScoreSettings.from_config(EncoderConfig(), dict(head.arrays), head.labels)
    )
    for row, predicted, probability in zip(rows, direct["predicted"], direct["probability"], strict=True):
        got = scored[row["id"]]
        assert {k: got[k] for k in row} == row  # input columns kept as they were
        assert got["predicted"] == predicted
        assert abs(got["probability"] - probability) < 1e-5
        assert got["head"] == "sentiment@1" and got["head_version"] == head.weights_sha256[:12]
        assert got["encoder"] == "all-MiniLM-L6-v2" and len(got["encoder_version"]) == 12
        assert got["run_id"] and got["scored_at"].endswith("Z")
    c = counters[-1]["score"]  # the scoring step (the first deals rows to buckets)
    assert c["rows"] == 40 and c["skipped_rejects"] == 1
    assert counters[0]["score"]["cost_mflop"] > 0
    # The inline runner splits the dealt rows over a few map tasks; each
    # flushes every 16 rows and at its end, one batch of <= 64 rows a flush.
    assert 3 <= c["batches"] <= 8


def test_score_with_embedding(tiny_registry):
    rows = [{"id": "x", "source": "s", "text": "A fine film", "label": None, "rating": None}]
    out, _ = run_job(
        MRScoreRecords,
        score_args(tiny_registry, "--set", "score.with_embedding=true"),
        stdin=json.dumps(rows[0]).encode() + b"\n",
    )
    (got,) = json_lines(out)
    emb = np.asarray(got["embedding"])
    assert emb.shape == (384,) and abs(np.linalg.norm(emb) - 1) < 1e-5


def test_score_empty_input(tiny_registry):
    out, _ = run_job(MRScoreRecords, score_args(tiny_registry), stdin=b"")
    assert json_lines(out) == []


def test_score_unknown_model_lists_known_versions(tiny_registry):
    with pytest.raises(ModelError, match=r"unknown model 'models:/sentiment/7'.*registered: sentiment \(versions 1\)"):
        run_job(
            MRScoreRecords,
            [*INLINE, "--set", f"registry_dir={tiny_registry.root}", "--model", "sentiment@7"],
            stdin=b'{"id": "x", "source": "s", "text": "t"}\n',
        )


class MRScoreWithoutShippedModel(MRScoreRecords):
    def model_dirs(self):
        return []


def test_score_fails_without_the_shipped_model(tiny_registry):
    with pytest.raises(ShippedModelMissing, match=r"shipped encoder copy ./encoder is missing"):
        run_job(
            MRScoreWithoutShippedModel, score_args(tiny_registry), stdin=b'{"id": "x", "source": "s", "text": "t"}\n'
        )


def test_stats_bad_input_line_is_named():
    from jobs.mapreduce.mr_compute_stats import BadScoredRow

    with pytest.raises(BadScoredRow, match=r"not a scored row.*b'\{oops'"):
        run_job(MRComputeStats, INLINE, stdin=json.dumps(SCORED[0]).encode() + b"\n{oops\n")


def test_score_refuses_a_head_trained_on_other_encoder_weights(tiny_registry, tmp_path):
    from tests.model_store import TestStore
    from udfs.lineage import EncoderMismatch

    head = tiny_registry.load("sentiment@1")
    other = TestStore(tmp_path / "models")
    other.register(
        "sentiment", dict(head.arrays), {**head.meta, "encoder": {**head.meta["encoder"], "version": "000000000000"}}
    )
    with pytest.raises(EncoderMismatch, match="trained on encoder weights 000000000000"):
        run_job(
            MRScoreRecords,
            [*INLINE, "--set", f"registry_dir={other.root}", "--model", "sentiment@1"],
            stdin=b'{"id": "x", "source": "s", "text": "t"}\n',
        )


def test_stats_reads_a_spark_output_dir_without_its_hidden_files(tmp_path):
    """A Spark JSON Lines output chained into a twin: its .crc and _SUCCESS
    files are not input (they would be read as rows and fail)."""
    (tmp_path / "part-00000.json").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in SCORED))
    (tmp_path / ".part-00000.json.crc").write_bytes(b"crc\x00\xff\xfe binary")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    out, _ = run_job(MRComputeStats, [*INLINE, str(tmp_path)])
    expected, _ = run_job(MRComputeStats, [*INLINE], stdin=b"".join(json.dumps(r).encode() + b"\n" for r in SCORED))
    assert sorted(out) == sorted(expected) and out
