"""encoder.runtime = "onnxruntime" against torch (the default): the same
embeddings (cosine >= 0.9999) and labels (except rows within 1e-4 of 0.5,
counted and reported) on real short and long texts; and the parity of the
two engines when both run ONNX Runtime (Spark score job and the mrjob twin
on the inline runner, probabilities to 1e-5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.mapreduce.mr_score_records import MRScoreRecords
from jobs.spark import common, score
from udfs import head as H
from udfs import model as M
from udfs import onnx_runtime
from udfs.config import EncoderConfig

from .conftest import json_lines, run_job

ONNX = ["--set", "encoder.runtime=onnxruntime"]


@pytest.fixture(scope="module")
def rows(movie_lines):
    """120 real short snippets and 30 long Rotten Tomatoes plot summaries."""
    from tests.test_score_partitions import skewed_rows
    from udfs.config import load_config
    from udfs.records import SourceSpec, parse_header, parse_record

    spec = SourceSpec(source="movies", format="tsv", rating_field="sentiment", rating_labels=("negative", "positive"))
    header = parse_header("tsv", movie_lines[0])
    short = [parse_record(spec, raw, header)[1] for raw in movie_lines[1:121]]
    from pathlib import Path

    long = skewed_rows(load_config(Path(__file__).resolve().parents[2] / "conf" / "pipeline.toml"))[-30:]
    return short + long


@pytest.fixture(scope="module")
def exported():
    return onnx_runtime.export(str(M.resolve_model_dir(None).resolve()))


def test_onnx_export_is_cached_by_the_weights_hash(exported):
    version = M.weights_version(str(M.resolve_model_dir(None).resolve()))
    assert exported.parent.name == version and exported.is_file()
    assert onnx_runtime.export(str(M.resolve_model_dir(None).resolve())) == exported  # no second export


def test_onnxruntime_matches_torch(exported, rows, tiny_registry):
    enc = EncoderConfig()
    texts = [r["text"] for r in rows]
    a = M.embed(M.load_encoder(None, "fp32"), texts, enc.batch_size, enc.max_length)
    b = M.embed(M.load_encoder(None, "fp32", runtime="onnxruntime"), texts, enc.batch_size, enc.max_length)
    assert float((a * b).sum(axis=1).min()) >= onnx_runtime.MIN_COSINE
    arrays = tiny_registry.load("sentiment@1").arrays
    pa, pb = H.predict_proba(arrays, a), H.predict_proba(arrays, b)
    near = np.abs(pa.max(axis=1) - 0.5) <= 1e-4
    differ = np.argmax(pa, axis=1) != np.argmax(pb, axis=1)
    print(f"{len(texts)} rows, {int(near.sum())} within 1e-4 of 0.5, {int(differ.sum())} labels differ")
    assert not (differ & ~near).any()


def test_both_engines_on_onnxruntime_agree(spark, exported, rows, tiny_registry, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = tmp_path / "pipeline.toml"
    config.write_text(f'registry_dir = "{tiny_registry.root}"\n[encoder]\nruntime = "onnxruntime"\n')
    (tmp_path / "records").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "records" / "part-0.parquet")
    args = score.parser().parse_args(
        ["--config", str(config), "--input", str(tmp_path / "records"), "--output", str(tmp_path / "scored")]
    )
    common.run_main(score.main, spark, args)
    s_rows = {r["id"]: r for r in spark.read.parquet(str(tmp_path / "scored")).collect()}

    stdin = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    out, _ = run_job(
        MRScoreRecords, ["-r", "inline", "--no-conf", "--config", str(config), "--model", "sentiment@1"], stdin
    )
    m_rows = {r["id"]: r for r in json_lines(out)}
    assert set(s_rows) == set(m_rows) == {r["id"] for r in rows}
    for rid, s in s_rows.items():
        assert s["predicted"] == m_rows[rid]["predicted"]
        assert abs(s["probability"] - m_rows[rid]["probability"]) < 1e-5
