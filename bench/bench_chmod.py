"""What a NodeManager without Hadoop's native library pays per file of a
localised archive, in one run:

- a chmod process under each of the JVM's ways of starting one
  (bench/ChmodCost.java, N processes from one JVM):
  jdk.lang.Process.launchMechanism=POSIX_SPAWN (Java 17's default) and
  =VFORK;
- Hadoop's own setPermission, as the NodeManager's localiser calls it
  (bench/SetPermissionCost.java): Hadoop's LocalFs under VFORK (a chmod
  process per file) and infra/java's NioLocalFs (java.nio, no process), which
  infra/yarn.py gives the local NodeManager.

Rounds alternate; each line is the best of its rounds, ratios are of those.

    .venv/bin/python bench/bench_chmod.py [--n 2000] [--rounds 2] [--files 42000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCH = Path(__file__).resolve().parent / "ChmodCost.java"
SET_PERMISSION = Path(__file__).resolve().parent / "SetPermissionCost.java"
MECHANISMS = ("POSIX_SPAWN", "VFORK")
HADOOP_IMPLS = {"LocalFs (VFORK)": "-", "NioLocalFs": "aibatch.hadoop.NioLocalFs"}


def ms_each(cmd: list[str], source: Path) -> float:
    """Runs one of the bench's Java files; the cost per file it prints."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found = re.search(r"([\d.]+) ms each", out)
    if not found:
        raise SystemExit(f"unexpected output from {source.name}: {out!r}")
    return float(found.group(1))


def cost_ms(mechanism: str, n: int) -> float:
    java = shutil.which("java") or "java"
    return ms_each([java, f"-Djdk.lang.Process.launchMechanism={mechanism}", str(BENCH), str(n)], BENCH)


def set_permission_cost(n: int) -> dict[str, Callable[[], float]]:
    """Hadoop's setPermission, each of HADOOP_IMPLS: what measures it."""
    from infra.hdfs import check_java
    from infra.settings import DEFAULT_HADOOP_HOME
    from infra.yarn import hadoop_jars, nio_local_fs_classes

    java = check_java()
    classes = nio_local_fs_classes(DEFAULT_HADOOP_HOME, java)
    if classes is None:
        raise SystemExit("infra/java's NioLocalFs could not be compiled (no javac?)")
    cp = f"{classes}:{hadoop_jars(DEFAULT_HADOOP_HOME)}/*"
    base = [java, "-Djdk.lang.Process.launchMechanism=VFORK", "-cp", cp, str(SET_PERMISSION)]
    return {name: partial(ms_each, [*base, impl, str(n)], SET_PERMISSION) for name, impl in HADOOP_IMPLS.items()}


def best_of(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each case measured rounds times, alternating; the best of each."""
    seen: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, measure in cases.items():
            seen[name].append(measure())
    return {name: min(v) for name, v in seen.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="chmod processes per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements of each mechanism")
    parser.add_argument("--files", type=int, default=42_000, help="files of the archive, for the total")
    args = parser.parse_args()
    best = best_of(args.rounds, {m: partial(cost_ms, m, args.n) for m in MECHANISMS})
    for mechanism in MECHANISMS:
        print(
            f"{mechanism:12s} {best[mechanism]:6.2f} ms a chmod process (best of {args.rounds}); "
            f"{args.files:,} files: {best[mechanism] * args.files / 1000:.0f} s"
        )
    print(f"VFORK / POSIX_SPAWN: {best['VFORK'] / best['POSIX_SPAWN']:.2f}")
    fast = best_of(args.rounds, set_permission_cost(args.n))
    for name in HADOOP_IMPLS:
        print(
            f"{name:16s} {fast[name]:7.3f} ms a file in Hadoop's setPermission (best of {args.rounds}); "
            f"{args.files:,} files: {fast[name] * args.files / 1000:.1f} s"
        )
    print(f"NioLocalFs / LocalFs (VFORK): {fast['NioLocalFs'] / fast['LocalFs (VFORK)']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
