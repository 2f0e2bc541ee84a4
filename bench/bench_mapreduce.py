"""Benchmark of the mrjob score twin against the model in plain Python, on
the same real rows and the same 2 cores: (a) plain Python, the limit: one
process, torch on all cores, the same length-sorted batching; (b) mrjob
-r inline (one process, one torch thread); (c) -r local (map tasks in
parallel, one torch thread each); (d) -r hadoop: the real Hadoop Streaming
jar in the LocalJobRunner, input and output on HDFS (started if needed).
Prints rows/s and each ratio to the limit, all measured in this one run.

--workload mixed (the default): --rows real rows in one file whose last
lines are long Rotten Tomatoes plot summaries (10-20%, bench_spark.mixed_rows),
uploaded to HDFS with the default block size (one block): the twin's
pre-split step, not the file layout, decides the map tasks. --workload
default: the Spark benchmark's first rows of the default data.

Run with: .venv/bin/python bench/bench_mapreduce.py [--workload mixed|default] [--rows 10000]
          [--runners inline,local,hadoop] [--small-rows 500]

Each twin also runs on the first --small-rows rows: the difference between
the two runs is the time of the remaining rows without the fixed costs
(Python and torch start in every task, model loads, the pre-split step,
job set-up), printed as the start-up-excluded rate beside the end-to-end one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_spark import default_rows, mixed_rows  # the same real rows as the Spark benchmark

from infra.hdfs import LocalHDFS
from udfs.config import EncoderConfig, load_config

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("TQDM_DISABLE", "1")


def plain_python(rows, store, ref, threads: int) -> float:
    from udfs import model as M
    from udfs import models
    from udfs.predict import ScoreSettings, score_texts

    head = models.load(store, ref)
    settings = ScoreSettings.from_config(EncoderConfig(), dict(head.arrays), head.labels, torch_threads=threads)
    M.load_encoder(None)  # load time is not throughput: the twins load theirs in mapper_init too
    start = time.perf_counter()
    for i in range(0, len(rows), 1024):  # the twin's flush size: same batching
        score_texts([r["text"] for r in rows[i : i + 1024]], settings)
    return time.perf_counter() - start


def run_twin(runner: str, src: str, out: str, registry_root: Path, ref: str, env: dict) -> float:
    cmd = [
        sys.executable,
        "-m",
        "jobs.mapreduce.launch",
        "score",
        "-r",
        runner,
        "--set",
        f"registry_dir={registry_root}",
        "--model",
        ref,
        src,
        "--output-dir",
        out,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"-r {runner} failed:\n{proc.stderr.decode()[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["mixed", "default"], default="mixed")
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--runners", default="inline,local,hadoop")
    parser.add_argument(
        "--small-rows",
        type=int,
        default=500,
        help="each twin also runs on the first N rows; (rows - N) / (time - time on N) is its marginal rate, "
        "start-up excluded (0: skip)",
    )
    parser.add_argument(
        "--model", default="sentiment@latest", help="model URI or name@N in the MLflow store (default var/mlflow)"
    )
    parser.add_argument("--registry-dir", default=str(ROOT / "var" / "mlflow"), help="the embedded MLflow store")
    args = parser.parse_args()
    runners = [r for r in args.runners.split(",") if r]

    from udfs import models

    registry_root = Path(args.registry_dir)
    store = models.Store(models.tracking_uri("", registry_root), registry_root)
    ref = args.model
    cfg = load_config(ROOT / "conf" / "pipeline.toml")
    frame = mixed_rows(cfg, args.rows) if args.workload == "mixed" else default_rows(cfg, args.rows)
    rows = frame.to_dict("records")
    if len(rows) < args.rows:
        raise SystemExit(f"--rows {args.rows}: the default data has only {len(rows)} records")
    cores = os.cpu_count() or 1
    n_long = int(((frame["source"] == "rotten_tomatoes") & frame["label"].isna()).sum())
    print(
        f"{len(rows)} real rows in one file ({args.workload}: the last {n_long} = {n_long / len(rows):.1%} "
        f"plot summaries), {cores} cores, head {ref}"
    )

    results = {}
    seconds = plain_python(rows, store, ref, threads=cores)
    results["plain Python (limit)"] = seconds
    print(f"  plain Python, {cores} torch threads: {len(rows) / seconds:8.1f} rows/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "records.jsonl"
        src.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
        small = Path(tmp) / "small.jsonl"
        small.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows[: args.small_rows]))
        marginal: dict[str, float] = {}
        env = dict(os.environ)
        node: LocalHDFS | None = None
        if "hadoop" in runners:
            from hdfs import InsecureClient

            from infra.settings import load_settings

            node = LocalHDFS(load_settings())
            started = node.start()
            env.update(node.env())
            client = InsecureClient(node.webhdfs_url, user=node.user)
            base = f"/user/{node.user}/bench-mapreduce"
            client.delete(base, recursive=True)
            # the default block size: one block, one split; the twin's pre-split step makes the map tasks
            client.upload(f"{base}/records.jsonl", str(src))
            client.upload(f"{base}/small.jsonl", str(small))
        try:
            for runner in runners:
                for name, path, n in (("records", src, len(rows)), ("small", small, args.small_rows)):
                    if not n:
                        continue
                    if runner == "hadoop":
                        assert node is not None
                        s = run_twin(
                            runner,
                            f"{node.hdfs_url}{base}/{path.name}",
                            f"{node.hdfs_url}{base}/scored-{name}",
                            registry_root,
                            ref,
                            env,
                        )
                    else:
                        s = run_twin(
                            runner, str(path), str(Path(tmp) / f"out-{runner}-{name}"), registry_root, ref, env
                        )
                    if name == "records":
                        results[f"mrjob -r {runner}"] = s
                        print(f"  mrjob -r {runner:6s} (end to end): {len(rows) / s:8.1f} rows/s", flush=True)
                    else:
                        marginal[runner] = (len(rows) - n) / (results[f"mrjob -r {runner}"] - s)
                        print(
                            f"  mrjob -r {runner:6s} on the first {n} rows: {s:.1f} s; start-up excluded "
                            f"({len(rows)} - {n} rows in the time difference): {marginal[runner]:8.1f} rows/s",
                            flush=True,
                        )
        finally:
            if node is not None and started:
                node.stop()

    limit = results["plain Python (limit)"]
    print("\nrows/s and ratio to the limit (end to end for the twins: job start, model load, scoring, output):")
    for name, s in results.items():
        print(f"  {name:24s} {len(rows) / s:8.1f} rows/s   ratio {limit / s:5.2f}")
    if marginal:
        print(f"start-up excluded (marginal rate between {args.small_rows} and {len(rows)} rows):")
        for runner, rate in marginal.items():
            print(f"  mrjob -r {runner:15s} {rate:8.1f} rows/s   ratio {rate / (len(rows) / limit):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
