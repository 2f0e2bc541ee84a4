"""What packing the environment costs, in one run: infra.pack's archive of
.venv compressed by zlib at level 1 in venv-pack's own process (as before),
against the same tar stream written into `igzip -1` (infra.pack's way where
igzip is installed). Each packs into a temporary cache of its own; the CPU
seconds are the packing process's and its children's (user + system),
the wall seconds the pack's; the two archives must hold the same tar
stream. A fresh clone packs once before its cluster tests, and again
whenever the lock files change.

    .venv/bin/python bench/bench_pack.py
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra import pack  # noqa: E402


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(cache: Path) -> tuple[Path, float, float]:
    c, t = cpu(), time.monotonic()
    path, packed = pack.Packer(cache_dir=cache).pack(force=True)
    assert packed
    return path, cpu() - c, time.monotonic() - t


def tar_digest(path: Path) -> str:
    """sha256 of the decompressed tar stream."""
    unzip = subprocess.Popen(["gzip", "-dc", str(path)], stdout=subprocess.PIPE)
    digest = subprocess.run(["sha256sum"], stdin=unzip.stdout, capture_output=True, text=True, check=True).stdout
    if unzip.wait() != 0:
        raise SystemExit(f"gzip -dc {path} failed")
    return digest.split()[0]


def main() -> int:
    if not shutil.which(pack.IGZIP):
        raise SystemExit("igzip is not installed (Debian's isal; ./scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory(dir=ROOT / "var") as tmp:
        results = {}
        igzip = pack.IGZIP
        for name in ("zlib", "igzip"):
            pack.IGZIP = igzip if name == "igzip" else "no-such-igzip"
            results[name] = timed(Path(tmp) / name)
        pack.IGZIP = igzip
        unpacked = pack.unpacked_bytes(results["zlib"][0]) / 1e9
        print(f"packing .venv ({unpacked:.2f} GB of files) into a tar.gz at level 1:")
        for path, cpu_s, wall_s in results.values():
            print(
                f"  {pack.compressor(path):13s} {path.stat().st_size / 1e9:5.2f} GB  "
                f"{cpu_s:6.1f} s CPU  {wall_s:6.1f} s wall"
            )
        digests = {name: tar_digest(path) for name, (path, _, _) in results.items()}
        if len(set(digests.values())) != 1:
            raise SystemExit(f"the archives hold different tar streams: {digests}")
        print("same tar stream in both: yes")
        (_, zc, zw), (_, ic, iw) = results["zlib"], results["igzip"]
        print(f"igzip / zlib: CPU {ic / zc:.2f}, wall {iw / zw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
