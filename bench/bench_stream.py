"""Benchmark of ./submit.sh stream --available-now against the batch jobs on
the same records: N real review snippets (plus the bad messages of
scripts/stream_messages.py) put on a Kafka topic and, byte for byte, in one
JSON Lines file; then (a) `stream --available-now` drains the topic (ingest
rules, scoring, Parquet per micro-batch, checkpoint) and (b) `ingest` +
`score` read the file, each through ./submit.sh, end to end (JVM start
included), in this one run. Prints rows/s of both and their ratio, and the
good/rejected counts, which must agree. Needs the Spark runtime's Kafka
connector (docs/streams.md) and a registered head (./submit.sh train).

Run with: .venv/bin/python bench/bench_stream.py [-n 2000] [--model sentiment@latest]
(with SPARK_HOME and PYSPARK_PYTHON naming a Spark whose connector is served)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.kafka import LocalKafka  # noqa: E402
from scripts.stream_messages import produce, sample_messages  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2000, help="real records (bad ones are added)")
    p.add_argument("--model", default="sentiment@latest")
    args = p.parse_args()
    submit = str(ROOT / "submit.sh")
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp_name:
        tmp = Path(tmp_name)
        messages = sample_messages(args.n)
        (tmp / "messages.jsonl").write_bytes(b"\n".join(messages) + b"\n")
        with LocalKafka.on_free_ports(tmp / "kafka") as kafka:
            produce(kafka.bootstrap, "bench", messages)
            common = ["--source", "bench", "--rating-field", "rating"]
            s_stream, out = timed(
                [submit, "stream", "--bootstrap", kafka.bootstrap, "--topic", "bench", "--model", args.model]
                + common
                + ["--output", str(tmp / "stream")]
            )
        print(out.strip().splitlines()[0])
        s_ingest, out_i = timed(
            [submit, "ingest", "--input", str(tmp / "messages.jsonl"), "--format", "jsonl"]
            + common
            + ["--output", str(tmp / "records"), "--rejects", str(tmp / "rejects")]
        )
        s_score, _ = timed(
            [submit, "score", "--input", str(tmp / "records"), "--output", str(tmp / "scored"), "--model", args.model]
        )
        print(out_i.strip().splitlines()[0])
    n = len(messages)
    batch = s_ingest + s_score
    good_stream = re.search(r"good (\d+) \+ rejected (\d+)", out)
    good_batch = re.search(r"good (\d+) \+ rejected (\d+)", out_i)
    assert good_stream and good_batch and good_stream.groups() == good_batch.groups(), (out, out_i)
    load = os.getloadavg()[0]
    print(f"messages {n}; load average {load:.1f} at the end; {os.cpu_count()} cores")
    print(f"stream --available-now: {s_stream:.1f} s, {n / s_stream:.1f} rows/s (one JVM)")
    print(f"ingest + score:         {batch:.1f} s ({s_ingest:.1f} + {s_score:.1f}), {n / batch:.1f} rows/s (two JVMs)")
    print(f"ratio stream / batch:   {(n / s_stream) / (n / batch):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
