"""Smoke run of the foundation: start HDFS, write a file through WebHDFS,
read it back with Spark from hdfs://, write Parquet, read that back through
WebHDFS, and stop HDFS again (if this run started it).

Run with: .venv/bin/python scripts/smoke.py
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from infra.hdfs import LocalHDFS  # noqa: E402
from infra.settings import load_settings  # noqa: E402

TEXT = "Spark reads HDFS\nHDFS keeps the files\nSpark writes Parquet to HDFS\n"


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    import pyarrow.parquet as pq
    from hdfs import InsecureClient
    from pyspark.sql import SparkSession

    from jobs.spark import hdfs_roundtrip

    node = LocalHDFS(load_settings())
    started = node.start()
    print(node.describe())
    try:
        client = InsecureClient(node.webhdfs_url, user=node.user)
        base = f"/user/{node.user}/smoke"
        client.write(f"{base}/in.txt", data=TEXT, encoding="utf-8", overwrite=True)
        print(f"wrote {base}/in.txt through WebHDFS")
        t0 = time.monotonic()
        spark = SparkSession.builder.master("local[2]").appName("aibatch-smoke").getOrCreate()
        try:
            n = hdfs_roundtrip.roundtrip(
                spark, f"{node.hdfs_url}{base}/in.txt", f"{node.hdfs_url}{base}/counts", overwrite=True
            )
        finally:
            spark.stop()
        print(
            f"Spark read {node.hdfs_url}{base}/in.txt and wrote {n} word counts as Parquet "
            f"({time.monotonic() - t0:.1f} s)"
        )
        rows = []
        for part in client.list(f"{base}/counts"):
            if part.endswith(".parquet"):
                with client.read(f"{base}/counts/{part}") as reader:
                    rows += pq.read_table(io.BytesIO(reader.read())).to_pylist()
        rows.sort(key=lambda r: (-r["count"], r["word"]))
        print("read back through WebHDFS:", ", ".join(f"{r['word']}={r['count']}" for r in rows))
        assert rows[0] == {"word": "hdfs", "count": 3}, rows[0]
    finally:
        if started:
            node.stop()
            print("HDFS stopped")
    print("smoke run OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
