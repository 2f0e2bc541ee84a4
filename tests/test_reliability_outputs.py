"""Outputs are committed, never destroyed first (issue 12), Spark side: a job
writes to staging and replaces its outputs only when it succeeded (records and
rejects as one commit), refuses an output that is or holds its input, refuses
an existing output without --overwrite and never merges into it; a failed
run leaves the previous output intact and says so; a killed Python worker is
retried and the output is exactly that of an undisturbed run."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from jobs import commit
from jobs.spark import common, ingest

ROOT = Path(__file__).resolve().parent.parent

GOOD = [b'{"text": "A fine film."}', b'{"text": "A dull film."}', b'{"text": "broken']
OTHER = [b'{"text": "Another film entirely."}']


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run_ingest(spark, config, src: Path | str, records, rejects, *extra: str) -> dict:
    args = ingest.parser().parse_args(
        [
            "--config",
            str(config),
            "--input",
            str(src),
            "--format",
            "jsonl",
            "--output",
            str(records),
            "--rejects",
            str(rejects),
            *extra,
        ]
    )
    return common.run_main(ingest.main, spark, args)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under path (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def texts(spark, path) -> list[str]:
    return sorted(r["text"] for r in spark.read.parquet(str(path)).collect())


def test_existing_output_is_refused_without_overwrite(spark, tmp_path, pipeline_config):
    src = write_jsonl(tmp_path / "in" / "a.jsonl", GOOD)
    rec, rej = tmp_path / "out" / "records", tmp_path / "out" / "rejects"
    run_ingest(spark, pipeline_config, src, rec, rej)
    before = snapshot(tmp_path / "out")
    with pytest.raises(commit.OutputError, match=re.escape(f"output {rec} exists: pass --overwrite")):
        run_ingest(spark, pipeline_config, src, rec, rej)
    assert snapshot(tmp_path / "out") == before


def test_overwrite_replaces_and_never_merges(spark, tmp_path, pipeline_config):
    rec, rej = tmp_path / "out" / "records", tmp_path / "out" / "rejects"
    run_ingest(spark, pipeline_config, write_jsonl(tmp_path / "in1" / "a.jsonl", GOOD), rec, rej)
    assert texts(spark, rec) == ["A dull film.", "A fine film."]
    summary = run_ingest(
        spark, pipeline_config, write_jsonl(tmp_path / "in2" / "b.jsonl", OTHER), rec, rej, "--overwrite"
    )
    assert (summary["good"], summary["rejected"]) == (1, 0)
    assert texts(spark, rec) == ["Another film entirely."]  # no part file of the first run left
    assert spark.read.parquet(str(rej)).count() == 0
    assert (rec / "_SUCCESS").is_file() and (rej / "_SUCCESS").is_file()
    # nothing but the two outputs beside them: no staging or previous copies
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["records", "rejects"]


@pytest.mark.parametrize("where", ["input", "inside", "holds"])
def test_output_that_is_or_holds_the_input_is_refused_before_any_work(spark, tmp_path, pipeline_config, where):
    src_dir = tmp_path / "data"
    write_jsonl(src_dir / "a.jsonl", GOOD)
    before = snapshot(src_dir)
    records = {"input": src_dir, "inside": src_dir / "records", "holds": tmp_path}[where]
    with pytest.raises(commit.OutputError, match="choose an output"):
        run_ingest(spark, pipeline_config, src_dir, records, tmp_path / "rejects", "--overwrite")
    assert snapshot(src_dir) == before
    assert not (tmp_path / "rejects").exists()


def test_failed_run_leaves_the_previous_outputs_intact_and_says_so(spark, tmp_path, pipeline_config):
    src = write_jsonl(tmp_path / "in" / "a.jsonl", GOOD)
    rec, rej = tmp_path / "out" / "records", tmp_path / "out" / "rejects"
    run_ingest(spark, pipeline_config, src, rec, rej)
    before = snapshot(tmp_path / "out")
    # The second run's rejects cannot be written (their parent is a file):
    # its records were written first, to staging, and must not replace the old.
    (tmp_path / "blocker").write_text("a file, not a dir")
    with pytest.raises(Exception) as failed:
        run_ingest(spark, pipeline_config, src, rec, tmp_path / "blocker" / "rejects", "--overwrite")
    assert f"previous output left intact at {rec}" in "; ".join(getattr(failed.value, "__notes__", []))
    assert snapshot(tmp_path / "out") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["records", "rejects"]


def test_second_rename_failing_rolls_back_the_first(spark, tmp_path, monkeypatch):
    old_records = tmp_path / "records"
    old_rejects = tmp_path / "rejects"
    spark.createDataFrame([("old",)], "text string").write.parquet(str(old_records))
    spark.createDataFrame([("old reject",)], "text string").write.parquet(str(old_rejects))
    before = snapshot(tmp_path)
    real_rename = commit.LocalFileSystem.rename

    def rename_failing_for_rejects(self, src, dst):
        if dst == str(old_rejects) and ".staging-" in src:
            raise OSError("disk gone")
        return real_rename(self, src, dst)

    monkeypatch.setattr(commit.LocalFileSystem, "rename", rename_failing_for_rejects)
    outputs = {"records": str(old_records), "rejects": str(old_rejects)}
    with pytest.raises(commit.CommitError, match="previous outputs restored"):
        with common.committed_outputs(spark, outputs, overwrite=True) as staging:
            spark.createDataFrame([("new",)], "text string").write.parquet(staging["records"])
            spark.createDataFrame([("new reject",)], "text string").write.parquet(staging["rejects"])
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records", "rejects"]


def test_outputs_on_hdfs_commit_together_and_refuse_reruns(spark, hdfs, webhdfs, pipeline_config):
    base = f"/user/{hdfs.user}/tests/reliability-hdfs"
    webhdfs.write(f"{base}/in/a.jsonl", data=b"\n".join(GOOD) + b"\n", overwrite=True)
    url = hdfs.hdfs_url + base
    run_ingest(spark, pipeline_config, f"{url}/in", f"{url}/out/records", f"{url}/out/rejects")
    assert sorted(webhdfs.list(f"{base}/out")) == ["records", "rejects"]
    assert webhdfs.status(f"{base}/out/rejects/_SUCCESS")["type"] == "FILE"
    # a file put whole into a committed output, again replacing it (how a job's run report gets there)
    for text in (b"<html>first</html>", b"<html>second</html>"):
        commit.put_file(f"{url}/out/records/_report.html", text)
    with webhdfs.read(f"{base}/out/records/_report.html") as reader:
        assert reader.read() == b"<html>second</html>"
    assert not [name for name in webhdfs.list(f"{base}/out/records") if name.startswith(".")]
    with pytest.raises(commit.OutputError, match="exists: pass --overwrite"):
        run_ingest(spark, pipeline_config, f"{url}/in", f"{url}/out/records", f"{url}/out/rejects")
    with pytest.raises(commit.OutputError, match="is the input .* or inside it"):
        run_ingest(spark, pipeline_config, f"{url}/in", f"{url}/in/records", f"{url}/out/rejects2")
    webhdfs.write(f"{base}/in2/b.jsonl", data=b"\n".join(OTHER) + b"\n", overwrite=True)
    run_ingest(spark, pipeline_config, f"{url}/in2", f"{url}/out/records", f"{url}/out/rejects", "--overwrite")
    assert texts(spark, f"{url}/out/records") == ["Another film entirely."]
    assert sorted(webhdfs.list(f"{base}/out")) == ["records", "rejects"]


def test_spark_defaults_retry_tasks_in_local_mode():
    conf = (ROOT / "conf" / "spark-defaults.conf").read_text()
    master = re.search(r"^spark\.master\s+(\S+)", conf, re.M).group(1)
    attempts = re.fullmatch(r"local\[(\*|\d+),(\d+)\]", master)
    assert attempts and int(attempts.group(2)) > 1, master


# ----- a Python worker killed mid-task -----


def hold_first_attempt(marker_dir: str):
    """A partition function: the first attempt of partition 0 writes its
    worker's pid and waits to be killed; every other attempt passes rows on."""

    def run(index, rows):
        marker = Path(marker_dir)
        if index == 0 and not (marker / "killed").exists():
            (marker / "worker.pid").write_text(str(os.getpid()))
            time.sleep(300)
        yield from rows

    return run


def kill_worker_when_ready(marker: Path, killed: list) -> None:
    pid_file = marker / "worker.pid"
    for _ in range(6000):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    (marker / "killed").write_text("1")
    os.kill(pid, signal.SIGKILL)
    killed.append(cmdline.decode())


def write_numbers(spark, out: Path, marker: Path) -> None:
    rows = spark.sparkContext.parallelize([(i, f"row {i}") for i in range(200)], 4)
    frame = spark.createDataFrame(rows.mapPartitionsWithIndex(hold_first_attempt(str(marker))), "n long, s string")
    with common.committed_outputs(spark, {"output": str(out)}) as staging:
        frame.write.parquet(staging["output"])


def test_killed_python_worker_is_retried_and_the_output_is_exact(spark, tmp_path):
    calm = tmp_path / "calm"
    calm.mkdir()
    (calm / "killed").write_text("not this time")
    write_numbers(spark, tmp_path / "undisturbed", calm)

    marker = tmp_path / "marker"
    marker.mkdir()
    killed: list[str] = []
    killer = threading.Thread(target=kill_worker_when_ready, args=(marker, killed), daemon=True)
    killer.start()
    write_numbers(spark, tmp_path / "killed", marker)
    killer.join(timeout=60)
    assert killed and "pyspark.daemon" in killed[0]
    undisturbed = spark.read.parquet(str(tmp_path / "undisturbed"))
    assertDataFrameEqual(spark.read.parquet(str(tmp_path / "killed")), undisturbed)
    assert undisturbed.count() == 200
