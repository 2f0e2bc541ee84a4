"""Bad inputs end to end through ./submit.sh (Spark) and ./submit.sh mr
(the twin on -r local): a folder as Spark leaves it (hidden .crc files,
_SUCCESS) holding a file with a byte-order mark, CR, CRLF and blank lines
and bad rows gives the same records, rejects and counted skips on both; a
truncated .gz fails both, naming the file."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest

from udfs.ingest_rows import split_rows

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

ROWS = [json.dumps({"text": f"row {i}", "rating": i - 2.0}).encode() for i in range(6)]
DATA = (
    b"\xef\xbb\xbf" + ROWS[0] + b"\r\n" + ROWS[1] + b"\r" + ROWS[2] + b"\n\n  \r\n"
    b'{"text": "caf\xe9"}\n{"text": "\\u200b"}\n{"text": "cut' + b"\r" + ROWS[3] + b"\n" + ROWS[3] + b"\r\n" + ROWS[4]
)


def submit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "submit.sh"), *args], cwd="/tmp", capture_output=True, text=True, errors="replace", timeout=900
    )


def spark_ingest(src: Path, out: Path) -> subprocess.CompletedProcess:
    return submit(
        "ingest",
        "--input",
        str(src),
        "--format",
        "jsonl",
        "--source",
        "e2e",
        "--rating-field",
        "rating",
        "--output",
        str(out / "records"),
        "--rejects",
        str(out / "rejects"),
        "--output-format",
        "jsonl",
    )


def twin_ingest(src: Path, out: Path) -> subprocess.CompletedProcess:
    return submit(
        "mr", "ingest", "-r", "local", "--source", "e2e", "--rating-field", "rating", str(src), "--output-dir", str(out)
    )


def rows_in(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("part-*")) for line in f.read_bytes().splitlines() if line]


def test_a_spark_style_folder_gives_the_same_rows_and_skips_on_both(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "part-00000.jsonl").write_bytes(DATA)
    (src / ".part-00000.jsonl.crc").write_bytes(b"crc\x00\xff\xfe")
    (src / "_SUCCESS").write_bytes(b"")

    spark = spark_ingest(src, tmp_path / "spark")
    assert spark.returncode == 0, spark.stdout[-3000:] + spark.stderr[-3000:]
    assert "ingest: input rows 9 = good 5 + rejected 4" in spark.stdout
    assert "skipped, not records (blank_line): 2" in spark.stdout

    twin = twin_ingest(src, tmp_path / "twin")
    assert twin.returncode == 0, twin.stderr[-3000:]
    assert re.search(r"skipped blank_line=2\b", twin.stderr)

    records, rejects = split_rows(rows_in(tmp_path / "twin"))
    key = lambda r: r["id"]  # noqa: E731
    spark_records = rows_in(tmp_path / "spark" / "records")
    spark_rejects = rows_in(tmp_path / "spark" / "rejects")
    assert sorted(records, key=key) == sorted(spark_records, key=key)
    assert sorted((r["id"], r["reason"], r["raw"]) for r in rejects) == sorted(
        (r["id"], r["reason"], r["raw"]) for r in spark_rejects
    )
    assert sorted(r["reason"] for r in rejects) == ["duplicate_record", "empty_text", "invalid_utf8", "malformed_json"]


def test_a_truncated_gz_fails_both_naming_the_file(tmp_path):
    src = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(b"".join(r + b"\n" for r in ROWS * 50))
    src.write_bytes(whole[: len(whole) // 2])

    spark = spark_ingest(src, tmp_path / "spark")
    assert spark.returncode != 0
    assert re.search(r"cut\.jsonl\.gz: cannot be read to its end \(.*(EOF|end of)", spark.stdout + spark.stderr)
    assert not (tmp_path / "spark" / "records").exists()

    twin = twin_ingest(src, tmp_path / "twin")
    assert twin.returncode != 0
    assert f"{src}: truncated gzip file" in twin.stderr
