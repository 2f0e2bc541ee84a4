"""The real rows the benchmarks run on: the bundled default data (the
sources of conf/pipeline.toml, read from their packages' files) parsed by
the ingest rules, ordered by id, the first N. Deterministic, so every
benchmark that takes the same --rows runs on the same rows."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from udfs import records as R  # noqa: E402
from udfs.config import load_config  # noqa: E402
from udfs.datasets import package_file  # noqa: E402


def real_records(n: int, config: str | Path = ROOT / "conf" / "pipeline.toml") -> list[dict]:
    cfg = load_config(config)
    records = []
    for source in cfg.ingest.sources:
        path = package_file(source.package_file)
        spec = cfg.ingest.spec(source)
        if spec.format == "parquet":
            continue
        for kind, row in R.parse_file(spec, path.name, path.read_bytes()):
            if kind == "record":
                records.append(row)
    unique = {r["id"]: r for r in records}
    rows = [unique[k] for k in sorted(unique)]
    if n > len(rows):
        raise SystemExit(f"--rows {n}: the default data has only {len(rows)} records")
    return rows[:n]
