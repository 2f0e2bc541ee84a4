"""What a NodeManager without Hadoop's native library pays per file of a
localised archive, under each of the JVM's ways of starting a process:
runs bench/ChmodCost.java (N chmod processes from one JVM) with
jdk.lang.Process.launchMechanism=POSIX_SPAWN (Java 17's default) and
=VFORK (what infra/yarn.py gives the local NodeManager), alternately, and
prints each one's cost per process and their ratio, measured in one run.

    .venv/bin/python bench/bench_chmod.py [--n 2000] [--rounds 2] [--files 42000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "ChmodCost.java"
MECHANISMS = ("POSIX_SPAWN", "VFORK")


def cost_ms(mechanism: str, n: int) -> float:
    java = shutil.which("java") or "java"
    out = subprocess.run(
        [java, f"-Djdk.lang.Process.launchMechanism={mechanism}", str(BENCH), str(n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"([\d.]+) ms each", out)
    if not found:
        raise SystemExit(f"unexpected output from {BENCH.name}: {out!r}")
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="chmod processes per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements of each mechanism")
    parser.add_argument("--files", type=int, default=42_000, help="files of the archive, for the total")
    args = parser.parse_args()
    seen: dict[str, list[float]] = {m: [] for m in MECHANISMS}
    for _ in range(args.rounds):
        for mechanism in MECHANISMS:
            seen[mechanism].append(cost_ms(mechanism, args.n))
    best = {m: min(v) for m, v in seen.items()}
    for mechanism in MECHANISMS:
        print(
            f"{mechanism:12s} {best[mechanism]:6.2f} ms a chmod process (best of {args.rounds}); "
            f"{args.files:,} files: {best[mechanism] * args.files / 1000:.0f} s"
        )
    print(f"VFORK / POSIX_SPAWN: {best['VFORK'] / best['POSIX_SPAWN']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
