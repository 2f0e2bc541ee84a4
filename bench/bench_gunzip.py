"""What unpacking the packed environment costs in decompression, in one run:
GNU gzip against igzip (Intel ISA-L, Debian's isal), each as Hadoop's
FileUtil.unTar runs it (`gzip -dc ARCHIVE`), its output read from a pipe
and counted (both must give the same number of bytes). YARN's
localiser, each standalone executor and a client-mode driver run that on the
archive of ./submit.sh pack; infra/bin/gzip, first on their PATH, picks
igzip where installed (infra/daemons.py).

The archive is var/pack's (./submit.sh pack makes it); with --mb N, a gzip
(level 1, as venv-pack writes it) of its first N MB of tar instead. Rounds
alternate; each line is the best of its rounds (CPU seconds of the
decompressor: user + system), the ratio is of those.

    .venv/bin/python bench/bench_gunzip.py [--mb 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("gzip", "igzip")


def archive() -> Path:
    found = sorted((ROOT / "var" / "pack").glob("aibatch-env-*.tar.gz"))
    if not found:
        raise SystemExit("no packed environment under var/pack: run ./submit.sh pack first")
    return found[-1]


def sample(src: Path, mb: int, out: Path) -> Path:
    """A level-1 gzip of the first mb MB of src's tar stream."""
    left = mb * 1_000_000
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    with subprocess.Popen(["gzip", "-dc", str(src)], stdout=subprocess.PIPE) as proc, open(out, "wb") as fh:
        assert proc.stdout is not None
        while left > 0:
            chunk = proc.stdout.read(min(left, 1 << 20))
            if not chunk:
                break
            fh.write(comp.compress(chunk))
            left -= len(chunk)
        proc.kill()
        fh.write(comp.flush())
    return out


def cpu_seconds(tool: str, path: Path) -> tuple[float, float, int]:
    """(CPU s, wall s, bytes out) of `tool -dc path` into a pipe, as
    FileUtil.unTar pipes it into tar; the bytes are counted here."""
    before = os.times()
    started = time.monotonic()
    out_bytes = 0
    with subprocess.Popen([tool, "-dc", str(path)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 22):
            out_bytes += len(chunk)
    if proc.returncode:
        raise SystemExit(f"{tool} -dc {path} failed with exit code {proc.returncode}")
    wall = time.monotonic() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return cpu, wall, out_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, help="a sample of this many MB of tar instead of the whole archive")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for tool in TOOLS:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install {'isal' if tool == 'igzip' else tool}")
    with tempfile.TemporaryDirectory(prefix="bench-gunzip-") as tmp:
        path = archive() if args.mb is None else sample(archive(), args.mb, Path(tmp) / "sample.tar.gz")
        size = path.stat().st_size
        best: dict[str, tuple[float, float]] = {}
        outputs = set()
        for _ in range(args.rounds):
            for tool in TOOLS:
                cpu, wall, out_bytes = cpu_seconds(tool, path)
                outputs.add(out_bytes)
                best[tool] = min(best.get(tool, (cpu, wall)), (cpu, wall))
    if len(outputs) != 1:
        raise SystemExit(f"the decompressors gave different sizes: {sorted(outputs)} bytes")
    (out_bytes,) = outputs
    print(
        f"{path.name}: {size / 1e9:.2f} GB gzip, {out_bytes / 1e9:.2f} GB of tar; decompressing it (best of {args.rounds}):"
    )
    for tool in TOOLS:
        cpu, wall = best[tool]
        print(
            f"  {tool:6} -dc  {cpu:6.1f} s CPU  {wall:6.1f} s wall  {out_bytes / 1e6 / cpu:6.0f} MB/s of tar per CPU second"
        )
    print(f"igzip / gzip (CPU): {best['igzip'][0] / best['gzip'][0]:.2f}")


if __name__ == "__main__":
    main()
