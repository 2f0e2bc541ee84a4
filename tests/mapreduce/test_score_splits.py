"""The score twin's map tasks follow the map slots, not the input's HDFS
blocks: a single file (one block) whose long texts all sit in its last 15%
of lines runs as several scoring map tasks of about equal estimated cost, on
`-r local` and `-r hadoop` (the real Hadoop Streaming jar, LocalJobRunner).
Each scoring map task writes one part file (the step is map-only), so the
part files count the tasks and carry each task's rows."""

from __future__ import annotations

import json

import pytest

from tests.test_score_partitions import MAX_SHARE, costs_of, skewed_rows
from udfs.config import load_config

from .test_mr_runners import ROOT, Runner

pytestmark = pytest.mark.slow


@pytest.fixture(params=["local", "hadoop"])
def runner(request, hdfs, webhdfs, tmp_path):
    return Runner(request.param, hdfs, webhdfs, tmp_path)


def part_rows(runner: Runner, out: str) -> list[list[dict]]:
    """The rows of each part file of out, one list per file (per map task)."""
    if runner.name == "hadoop":
        path = out[len(runner.hdfs.hdfs_url) :]
        parts = []
        for name in sorted(p for p in runner.webhdfs.list(path) if p.startswith("part-")):
            with runner.webhdfs.read(f"{path}/{name}") as reader:
                parts.append(reader.read())
    else:
        from pathlib import Path

        parts = [p.read_bytes() for p in sorted(Path(out).glob("part-*"))]
    return [[json.loads(line) for line in data.splitlines() if line.strip()] for data in parts]


def test_single_file_scored_in_balanced_map_tasks(runner, tiny_registry):
    rows = skewed_rows(load_config(ROOT / "conf" / "pipeline.toml"))
    src = runner.put("records.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    out = runner.out("scored")
    proc = runner.run(
        "score",
        "--set",
        f"registry_dir={tiny_registry.root}",
        "--model",
        "sentiment@1",
        "--map-slots",
        "2",
        src,
        "--output-dir",
        out,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    per_task = part_rows(runner, out)
    assert len(per_task) >= 2
    total = costs_of(rows).sum()
    shares = [costs_of(task).sum() / total if task else 0.0 for task in per_task]
    assert abs(sum(shares) - 1) < 1e-9 and max(shares) <= MAX_SHARE, shares
    assert sorted(r["id"] for task in per_task for r in task) == sorted(r["id"] for r in rows)
