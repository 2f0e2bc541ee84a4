"""The project code as one zip (udfs/ and jobs/, Python files only): what
`./submit.sh` ships to Spark with --py-files and to mrjob tasks with
--py-files, so a job imports only the code it shipped.

Run with: .venv/bin/python -m jobs.pyfiles TARGET.zip   (prints the path)
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_zip(target: str | os.PathLike) -> Path:
    """Write the zip atomically (a temp file, then a rename), so concurrent
    submits never read a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for package in ("udfs", "jobs"):
            for path in sorted((ROOT / package).rglob("*.py")):
                if "__pycache__" not in path.parts:
                    z.write(path, path.relative_to(ROOT))
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    print(build_zip(sys.argv[1]))
