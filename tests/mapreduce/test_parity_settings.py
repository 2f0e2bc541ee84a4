"""Non-default settings reach both engines: the same chain (ingest, score)
with encoder.max_length=64, encoder.batch_size=16 and label thresholds
0.9/-0.9, on Spark (the jobs' functions in the test session) and on the
mrjob twins (-r local, through the launcher that submit.sh uses). The
twin's output must equal Spark's, and Spark's must differ from its own run
at the default settings, so a test where both engines ignored the settings
fails, and so does one where either did (the twin then equals Spark's
default output, which differs from Spark's). The engines' agreement at the
default settings, long texts included, is test_parity.py's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.spark import common, ingest, score
from udfs.ingest_rows import split_rows

from .conftest import MOVIE_TSV, launch

pytestmark = pytest.mark.slow

NON_DEFAULT = [
    "encoder.max_length=64",
    "encoder.batch_size=16",
    "ingest.positive_min=0.9",
    "ingest.negative_max=-0.9",
]


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory) -> Path:
    """90 real rated snippets, 30 of them long (six snippets joined, well over
    64 tokens), as JSON Lines."""
    from scripts.datasets import package_file

    with open(package_file(MOVIE_TSV), encoding="utf-8") as fh:
        next(fh)
        rows = [line.rstrip("\r\n").split("\t", 2) for _, line in zip(range(240), fh, strict=False)]
    out = [{"text": text, "sentiment": float(rating)} for _, rating, text in rows[:60]]
    for i in range(30):
        chunk = rows[60 + 6 * i : 66 + 6 * i]
        out.append({"text": " ".join(t for _, _, t in chunk), "sentiment": float(chunk[0][1])})
    path = tmp_path_factory.mktemp("raw") / "raw.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def spark_chain(spark, raw: Path, out: Path, overrides: list[str]) -> dict:
    sets = [a for o in overrides for a in ("--set", o)]
    common.run_main(
        ingest.main,
        spark,
        ingest.parser().parse_args(
            [*sets, "--input", str(raw), "--format", "jsonl", "--source", "p", "--rating-field", "sentiment"]
            + ["--output", str(out / "records"), "--rejects", str(out / "rejects"), "--output-format", "jsonl"]
        ),
    )
    common.run_main(
        score.main,
        spark,
        score.parser().parse_args(
            [*sets, "--input", str(out / "records"), "--input-format", "jsonl"]
            + ["--output", str(out / "scored"), "--output-format", "jsonl", "--model", "sentiment@1"]
        ),
    )
    return {t: read_dir(out / t) for t in ("records", "scored")}


def mr_chain(raw: Path, out: Path, overrides: list[str]) -> dict:
    sets = [a for o in overrides for a in ("--set", o)]
    for cmd in (
        ["ingest", "-r", "local", *sets, "--source", "p", "--rating-field", "sentiment", str(raw)]
        + ["--output-dir", str(out / "records")],
        ["score", "-r", "local", *sets, "--model", "sentiment@1", str(out / "records")]
        + ["--output-dir", str(out / "scored")],
    ):
        launch(*cmd, timeout=600)
    records, _ = split_rows(read_dir(out / "records"))
    return {"records": records, "scored": read_dir(out / "scored")}


def read_dir(path: Path) -> list[dict]:
    files = [p for p in sorted(path.iterdir()) if p.name.startswith("part-")]
    return [json.loads(line) for p in files for line in p.read_text().splitlines() if line.strip()]


def labels(rows: list[dict]) -> dict:
    return {r["id"]: r["label"] for r in rows}


def probabilities(rows: list[dict]) -> dict:
    return {r["id"]: (r["predicted"], r["probability"]) for r in rows}


def assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for rid in a:
        assert a[rid][0] == b[rid][0], rid
        assert a[rid][1] == pytest.approx(b[rid][1], abs=1e-5), rid


def differs(a: dict, b: dict) -> bool:
    return any(a[k][0] != b[k][0] or abs(a[k][1] - b[k][1]) > 1e-4 for k in a)


def test_non_default_settings_reach_both_engines(spark, tiny_registry, raw_file, tmp_path):
    registry = [f"registry_dir={tiny_registry.root}"]
    spark_default = spark_chain(spark, raw_file, tmp_path / "spark_default", registry)
    spark_custom = spark_chain(spark, raw_file, tmp_path / "spark_custom", registry + NON_DEFAULT)
    mr_custom = mr_chain(raw_file, tmp_path / "mr_custom", registry + NON_DEFAULT)

    # the two engines agree at the non-default settings
    assert labels(mr_custom["records"]) == labels(spark_custom["records"])
    assert_same_scores(probabilities(mr_custom["scored"]), probabilities(spark_custom["scored"]))
    # and Spark's answer moved with the settings, so the twin's did too
    # (it equals Spark's to 1e-5; the two Spark runs differ by more than 1e-4)
    assert labels(spark_custom["records"]) != labels(spark_default["records"])
    assert differs(probabilities(spark_custom["scored"]), probabilities(spark_default["scored"]))
    assert labels(mr_custom["records"]) != labels(spark_default["records"])
    assert differs(probabilities(mr_custom["scored"]), probabilities(spark_default["scored"]))


def test_label_map_on_both_engines(spark, tmp_path):
    """A third class mapped on the command line instead of rejected row by row;
    with the vocabulary declared (--labels), a label outside it is rejected."""
    rows = [
        {"text": "fine", "stance": "pos"},
        {"text": "meh", "stance": "neutral"},
        {"text": "awful", "stance": "negative"},
        {"text": "odd", "stance": "other"},
    ]
    raw = tmp_path / "labels.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--source", "s", "--label-field", "stance", "--label-map", "neutral=,pos=positive,negative=negative"]
    args += ["--labels", "positive,negative"]
    common.run_main(
        ingest.main,
        spark,
        ingest.parser().parse_args(
            [*args, "--input", str(raw), "--format", "jsonl", "--output", str(tmp_path / "s_rec")]
            + ["--rejects", str(tmp_path / "s_rej"), "--output-format", "jsonl"]
        ),
    )
    spark_records, spark_rejects = read_dir(tmp_path / "s_rec"), read_dir(tmp_path / "s_rej")
    launch("ingest", "-r", "inline", *args, str(raw), "--output-dir", str(tmp_path / "mr"))
    mr_records, mr_rejects = split_rows(read_dir(tmp_path / "mr"))
    by_text = {r["text"]: r["label"] for r in spark_records}
    assert by_text == {"fine": "positive", "meh": None, "awful": "negative"}
    assert labels(mr_records) == labels(spark_records)
    assert [r["reason"] for r in spark_rejects] == [r["reason"] for r in mr_rejects] == ["unknown_label"]
