"""What a Spark job costs before it does any work, with and without the
driver's class-data sharing archive (infra/cds.py), in one run: a one-line
`./submit.sh ingest`, alternately without the archive (SPARK_SUBMIT_OPTS
names -Xshare:auto, so submit.sh adds none) and with it (submit.sh's
default), each with the JVM's default compilers and with C1 only (as the
test suite runs). Prints wall and CPU seconds (user + system, the whole
process tree) per run and the medians' ratios.

    .venv/bin/python bench/bench_startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.cds import ARCHIVE  # noqa: E402

MODES = {
    "defaults, no archive": "-Xshare:auto",
    "defaults, archive": "",
    "C1 only, no archive": "-Xshare:auto -XX:TieredStopAtLevel=1",
    "C1 only, archive": "-XX:TieredStopAtLevel=1",
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(work: Path, opts: str, i: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_SUBMIT_OPTS", "PYTHONPATH")}
    if opts:
        env["SPARK_SUBMIT_OPTS"] = opts
    out = work / f"out-{i}"
    cpu, started = children_cpu(), time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "submit.sh"), "ingest", "--input", f"file://{work}/one.jsonl", "--format", "jsonl"]
        + ["--source", "bench", "--rating-field", "sentiment"]
        + ["--output", f"file://{out}/records", "--rejects", f"file://{out}/rejects"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall, cpu = time.monotonic() - started, children_cpu() - cpu
    if proc.returncode != 0 or "input rows 1 = good 1 + rejected 0" not in proc.stdout:
        raise SystemExit(
            f"./submit.sh ingest failed ({opts or 'archive'}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        )
    shutil.rmtree(out)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, interleaved (default 3)")
    args = parser.parse_args()
    if not ARCHIVE.is_file():
        raise SystemExit(f"no class-data sharing archive at {ARCHIVE}: run ./scripts/setup.sh")
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        (work / "one.jsonl").write_text(json.dumps({"text": "one short line", "sentiment": 1.0}) + "\n")
        for i in range(args.runs):
            for mode, opts in MODES.items():
                wall, cpu = one_run(work, opts, i)
                results[mode].append((wall, cpu))
                print(f"  run {i + 1} {mode:22s} {wall:6.1f} s wall {cpu:6.1f} s CPU", flush=True)
    print(f"./submit.sh ingest of a one-line file, median of {args.runs} (archive: {ARCHIVE}):")
    med = {m: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for m, r in results.items()}
    for mode, (wall, cpu) in med.items():
        print(f"  {mode:22s} {wall:6.1f} s wall {cpu:6.1f} s CPU")
    for jit in ("defaults", "C1 only"):
        (w0, c0), (w1, c1) = med[f"{jit}, no archive"], med[f"{jit}, archive"]
        print(f"  {jit}: with the archive / without: wall {w1 / w0:.2f}, CPU {c1 / c0:.2f}")


if __name__ == "__main__":
    main()
