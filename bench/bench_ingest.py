"""Benchmark of ingest on one big JSON Lines file (default 335 MB of real
short posts): rows/s of (a) plain single-process Python applying the same
rules (udfs.records) to the file streamed line by line, deduplicating in a
dict: the limit for one core; (b) the Spark job through ./submit.sh with the
default conf/spark-defaults.conf (local[*]), on the local file and on the
file in HDFS; (c) the mrjob twin on -r local and (d) on -r hadoop (the
Hadoop Streaming jar in the LocalJobRunner, the file in HDFS with one block
per core). Everything end to end (process start, reading, parsing,
duplicates, output), measured in this one run; the ratio reported is per
core: (engine rows/s / cores) / (plain Python rows/s). Every engine's good
and rejected counts are printed and must agree.

Run with: .venv/bin/python bench/bench_ingest.py [--mb 335] [--runs spark,spark-hdfs,local,hadoop]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from udfs import records as R  # noqa: E402

SPEC = R.SourceSpec("posts", "jsonl", rating_field="sentiment", rating_labels=("negative", "positive"))


def real_texts() -> list[tuple[str, float | None]]:
    """(text, rating) of every record of the default data (conf/pipeline.toml)."""
    from scripts.datasets import package_file
    from udfs.config import load_config

    cfg = load_config(ROOT / "conf" / "pipeline.toml")
    out = []
    for source in cfg.ingest.sources:
        path = package_file(source.package_file)
        for kind, row, _ in R.parse_file(cfg.ingest.spec(source), path.name, path.read_bytes()):
            if kind == R.RECORD:
                out.append((row["text"], row["rating"]))
    return out


def write_posts(path: Path, mb: int) -> None:
    """mb MB (10^6 bytes) of JSON Lines of real short texts, one a line with
    a serial number; every 40th line repeated (a duplicate) and a bad line
    every 100,000 (malformed JSON, invalid UTF-8, a blank line)."""
    texts = real_texts()
    target = mb * 1_000_000
    size = n = 0
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as fh:
        while size < target:
            text, rating = texts[n % len(texts)]
            line = json.dumps({"n": n, "text": text, "sentiment": rating}, ensure_ascii=False).encode() + b"\n"
            if n % 40 == 0:
                line += line
            if n % 100_000 == 0:
                line += b'{"text": "cut off\n{"text": "caf\xe9"}\n\n'
            fh.write(line)
            size += len(line)
            n += 1
    tmp.rename(path)


def plain_python(path: Path) -> tuple[float, dict]:
    """(seconds, counts) of the rules in one process, streaming the file."""
    start = time.perf_counter()
    seen: set[str] = set()
    good = rejected = 0
    with open(path, "rb") as fh:
        for line in R.iter_lines(fh):
            kind, row, _ = R.parse_line(SPEC, line)
            if kind == R.RECORD:
                if row["id"] in seen:
                    rejected += 1
                else:
                    seen.add(row["id"])
                    good += 1
            elif kind == R.REJECT:
                rejected += 1
    return time.perf_counter() - start, {"good": good, "rejected": rejected}


def worker_costs(path: Path, lines: int = 300_000) -> None:
    """CPU microseconds a line of what Spark's Python worker does for ingest
    (udfs.ingest_batches.line_parser), in this process on the file's first
    lines: Arrow batch of 10,000 raw lines to Python bytes, the parse rules,
    the parsed rows back to an Arrow batch."""
    import pyarrow as pa

    from udfs import ingest_batches as B

    raws = []
    with open(path, "rb") as f:
        for raw in R.iter_lines(f):
            raws.append(raw)
            if len(raws) == lines:
                break
    batches = [
        pa.RecordBatch.from_arrays([pa.array(raws[i : i + 10_000], pa.binary())], names=["raw"])
        for i in range(0, len(raws), 10_000)
    ]
    start = time.process_time()
    pylists = [b.column("raw").to_pylist() for b in batches]
    to_py = time.process_time() - start
    start = time.process_time()
    parsed = [[R.parse_line(SPEC, raw) for raw in chunk] for chunk in pylists]
    parse = time.process_time() - start
    start = time.process_time()
    for chunk in parsed:
        B.to_batch(chunk)
    back = time.process_time() - start
    start = time.process_time()
    for _ in B.line_parser(SPEC)(iter(batches)):
        pass
    whole = time.process_time() - start
    n = len(raws) / 1e6
    print(
        f"  Python worker, CPU us a line ({len(raws)} lines): Arrow to bytes {to_py / n:.2f}, "
        f"parse rules {parse / n:.2f}, rows to Arrow {back / n:.2f}; the batch function as Spark calls it {whole / n:.2f}",
        flush=True,
    )


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace")
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        # the error lines, not the Java stack frames after them
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.lstrip().startswith("at ")]
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n" + "\n".join(errors[-60:]))
    return seconds, proc.stdout + proc.stderr


def run_spark(src: str, out: str, env: dict, event_dir: Path | None = None) -> tuple[float, dict]:
    """The Spark job through ./submit.sh; with event_dir, Spark's event log
    (uncompressed) is written there and where the time went is printed."""
    cmd = [str(ROOT / "submit.sh")]
    if event_dir is not None:
        event_dir.mkdir(parents=True, exist_ok=True)
        conf = event_dir / "spark-defaults.conf"
        conf.write_text(
            (ROOT / "conf" / "spark-defaults.conf").read_text()
            + f"\nspark.eventLog.enabled true\nspark.eventLog.compress false\nspark.eventLog.dir {event_dir.as_uri()}\n"
        )
        cmd += ["--spark-conf", str(conf)]
    cmd += ["ingest", "--input", src, "--format", "jsonl", "--source", "posts"]
    cmd += ["--rating-field", "sentiment", "--output", f"{out}/records", "--rejects", f"{out}/rejects"]
    started = time.time()
    seconds, log = timed(cmd, env)
    m = re.search(r"input rows (\d+) = good (\d+) \+ rejected (\d+)", log)
    if not m:
        raise SystemExit(f"no summary line in the Spark job's output:\n{log[-2000:]}")
    if event_dir is not None:
        print_stages(event_dir, started, started + seconds)
    return seconds, {"good": int(m[2]), "rejected": int(m[3])}


def print_stages(event_dir: Path, started: float, ended: float) -> None:
    """Where a Spark run's wall time went, from its event log: the launch
    (submit.sh, spark-submit's JVM, the Python driver, the SparkContext),
    the driver's work before the first Spark job, each Spark job (its call
    site: the line of jobs/spark/ingest.py that started it), and the end
    (stopping the session, the commit, the JVM's exit)."""
    logs = sorted(event_dir.glob("**/events_*"), key=lambda f: f.stat().st_mtime)
    if not logs:
        print("    (no event log written)")
        return
    events = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    app_start = app_end = None
    jobs: dict[int, list] = {}
    queries: dict[str, str] = {}  # SQL execution id: its description (the action and its call site)
    for e in events:
        kind = e["Event"]
        if kind == "SparkListenerApplicationStart":
            app_start = e["Timestamp"] / 1000
        elif kind == "SparkListenerApplicationEnd":
            app_end = e["Timestamp"] / 1000
        elif kind.endswith("SparkListenerSQLExecutionStart"):
            queries[str(e["executionId"])] = e["description"]
        elif kind == "SparkListenerJobStart":
            props = e.get("Properties", {})
            site = props.get("callSite.short") or queries.get(str(props.get("spark.sql.execution.id")), "?")
            jobs[e["Job ID"]] = [e["Submission Time"] / 1000, None, site]
        elif kind == "SparkListenerJobEnd":
            jobs[e["Job ID"]][1] = e["Completion Time"] / 1000
    if app_start is None or app_end is None or not jobs:
        print("    (event log incomplete)")
        return
    first = min(j[0] for j in jobs.values())
    last = max(j[1] or j[0] for j in jobs.values())
    print(f"    launch to SparkContext       {app_start - started:6.1f} s")
    print(f"    driver before first job      {first - app_start:6.1f} s")
    by_site: dict[str, list[float]] = {}
    for start, end, site in jobs.values():
        entry = by_site.setdefault(site, [0.0, 0])
        entry[0] += (end or start) - start
        entry[1] += 1
    for site, (secs, n) in by_site.items():
        print(f"    {n:2d} Spark job(s) {secs:6.1f} s  {site}")
    gaps = (last - first) - sum(secs for secs, _ in by_site.values())
    print(f"    driver between jobs          {gaps:6.1f} s")
    print(f"    session stop and exit        {ended - last:6.1f} s (application end after {app_end - last:.1f} s)")


def run_twin(runner: str, src: str, out: str, env: dict) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jobs.mapreduce.launch", "ingest", "-r", runner, "--source", "posts"]
    cmd += ["--rating-field", "sentiment", src, "--output-dir", out]
    seconds, log = timed(cmd, env)
    counters = {k: int(v) for k, v in re.findall(r"^\s+(good|rejected)=(\d+)$", log, re.M)}
    return seconds, counters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=335, help="file size in MB (default 335)")
    parser.add_argument(
        "--runs",
        default="spark,spark-hdfs,local,hadoop",
        help="of spark, spark-hdfs, local, hadoop, and spark-1-line (the Spark job on a one-line file: its fixed cost)",
    )
    parser.add_argument("--stages", action="store_true", help="print where each Spark run's time went (event log)")
    parser.add_argument(
        "--worker-costs", action="store_true", help="print the CPU cost a line of Spark's Python worker's steps"
    )
    parser.add_argument("--data-dir", default=str(ROOT / "var" / "bench"), help="where the file is kept for reruns")
    args = parser.parse_args()
    runs = [r for r in args.runs.split(",") if r]
    cores = os.cpu_count() or 1

    path = Path(args.data_dir) / f"posts-{args.mb}mb.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", flush=True)
        write_posts(path, args.mb)
    lines = sum(1 for _ in R.iter_lines(open(path, "rb")))
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB, {lines} lines, {cores} cores", flush=True)

    seconds, counts = plain_python(path)
    rows = counts["good"] + counts["rejected"]
    results = {"plain Python, 1 process": (seconds, counts, 1)}
    print(f"  plain Python: {rows / seconds:9.0f} rows/s  {counts}", flush=True)
    if args.worker_costs:
        worker_costs(path)

    env = dict(os.environ)
    node = None
    fixed = None
    with tempfile.TemporaryDirectory(dir=ROOT / "var") as tmp:
        if {"spark-hdfs", "hadoop"} & set(runs):
            from hdfs import InsecureClient

            from infra.hdfs import LocalHDFS, free_ports
            from infra.settings import HdfsSettings

            ports = dict(zip(HdfsSettings.PORT_KEYS, free_ports(len(HdfsSettings.PORT_KEYS)), strict=True))
            node = LocalHDFS(HdfsSettings(data_dir=Path(tmp) / "hdfs").with_overrides(**ports))
            node.start()
            env.update(node.env())
            client = InsecureClient(node.webhdfs_url, user=node.user)
            # One block per core (whole MiB): Hadoop's LocalJobRunner runs one
            # map task per split, and streaming splits by block.
            mib = 1 << 20
            block = max(mib, -(-path.stat().st_size // cores // mib) * mib)
            client.upload(f"/user/{node.user}/bench/posts.jsonl", str(path), blocksize=block)
            hdfs_file = f"{node.hdfs_url}/user/{node.user}/bench/posts.jsonl"
        try:
            for run in runs:
                events = Path(tmp) / f"events-{run}" if args.stages else None
                if run == "spark":
                    name, (s, c) = (
                        "Spark ./submit.sh, local file",
                        run_spark(path.resolve().as_uri(), Path(tmp).resolve().as_uri() + "/spark", env, events),
                    )
                elif run == "spark-1-line":
                    one = Path(tmp) / "one-line.jsonl"
                    with open(path, "rb") as f:
                        one.write_bytes(f.readline())
                    s, _ = run_spark(one.resolve().as_uri(), Path(tmp).resolve().as_uri() + "/one", env, events)
                    print(f"  Spark ./submit.sh, a 1-line file: {s:.1f} s (the job's fixed cost)", flush=True)
                    fixed = s
                    continue
                elif run == "spark-hdfs":
                    assert node is not None
                    out = f"{node.hdfs_url}/user/{node.user}/bench/spark"
                    name, (s, c) = "Spark ./submit.sh, HDFS file", run_spark(hdfs_file, out, env, events)
                elif run == "local":
                    name, (s, c) = "mrjob -r local", run_twin("local", str(path), f"{tmp}/local", env)
                elif run == "hadoop":
                    assert node is not None
                    out = f"{node.hdfs_url}/user/{node.user}/bench/mr"
                    name, (s, c) = "mrjob -r hadoop, HDFS file", run_twin("hadoop", hdfs_file, out, env)
                else:
                    raise SystemExit(f"unknown run {run!r}")
                results[name] = (s, c, cores)
                print(f"  {name}: {rows / s:9.0f} rows/s  {c}", flush=True)
        finally:
            if node is not None:
                node.stop()

    limit = rows / results["plain Python, 1 process"][0]
    print(f"\n{rows} input rows; rows/s end to end, and per core as a ratio to plain Python on one core:")
    for name, (s, c, n) in results.items():
        agree = "" if c == counts else f"   COUNTS DIFFER: {c} != {counts}"
        print(f"  {name:32s} {s:7.1f} s {rows / s:9.0f} rows/s  per core {rows / s / n / limit:5.2f}{agree}")
    if fixed is not None:
        plain = results["plain Python, 1 process"][0]
        best = plain / (cores * (fixed + plain / cores))
        print(f"  Spark on a 1-line file           {fixed:7.1f} s: with no cost per row beyond the parse itself,")
        print(
            f"    the Spark job's ratio would be at most {best:.2f} (fixed cost + the parse split over {cores} cores)"
        )
    return 0 if all(c == counts for _, c, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
