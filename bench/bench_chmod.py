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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCH = Path(__file__).resolve().parent / "ChmodCost.java"
SET_PERMISSION = Path(__file__).resolve().parent / "SetPermissionCost.java"
MECHANISMS = ("POSIX_SPAWN", "VFORK")
HADOOP_IMPLS = {"LocalFs (VFORK)": "-", "NioLocalFs": "aibatch.hadoop.NioLocalFs"}


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


def set_permission_ms(impl: str, n: int) -> float:
    from infra.hdfs import check_java
    from infra.settings import DEFAULT_HADOOP_HOME
    from infra.yarn import nio_local_fs_classes

    java = check_java()
    classes = nio_local_fs_classes(DEFAULT_HADOOP_HOME, java)
    if classes is None:
        raise SystemExit("infra/java's NioLocalFs could not be compiled (no javac?)")
    jars = DEFAULT_HADOOP_HOME / "share" / "hadoop" / "common" / "lib"
    out = subprocess.run(
        [java, "-Djdk.lang.Process.launchMechanism=VFORK", "-cp", f"{classes}:{jars}/*"]
        + [str(SET_PERMISSION), impl, str(n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"([\d.]+) ms each", out)
    if not found:
        raise SystemExit(f"unexpected output from {SET_PERMISSION.name}: {out!r}")
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
    hadoop: dict[str, list[float]] = {name: [] for name in HADOOP_IMPLS}
    for _ in range(args.rounds):
        for name, impl in HADOOP_IMPLS.items():
            hadoop[name].append(set_permission_ms(impl, args.n))
    fast = {name: min(v) for name, v in hadoop.items()}
    for name in HADOOP_IMPLS:
        print(
            f"{name:16s} {fast[name]:7.3f} ms a file in Hadoop's setPermission (best of {args.rounds}); "
            f"{args.files:,} files: {fast[name] * args.files / 1000:.1f} s"
        )
    print(f"NioLocalFs / LocalFs (VFORK): {fast['NioLocalFs'] / fast['LocalFs (VFORK)']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
