"""The twins on mrjob's `-r local` and `-r hadoop` runners, launched as
`./submit.sh mr` launches them (jobs/mapreduce/launch.py: a fresh Python
that imports only the shipped zip). `-r hadoop` runs the real Hadoop
Streaming jar in Hadoop's LocalJobRunner, reading and writing the test
run's HDFS. One good and one bad case per job and runner; the good score
case is a single skewed file, which must run as balanced map tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import assert_mrjob_fs_round_trip
from tests.test_score_partitions import MAX_SHARE, costs_of, skewed_rows
from udfs import records as R
from udfs.config import EncoderConfig, load_config
from udfs.ingest_rows import split_rows

from .test_mr_inline import GOOD_AND_BAD, SCORED

ROOT = Path(__file__).resolve().parent.parent.parent
RUNNERS = ["local", "hadoop"]
pytestmark = pytest.mark.slow


class Runner:
    """Runs a twin on one runner; inputs and outputs live on the local disk
    (local) or on the test run's HDFS (hadoop)."""

    def __init__(self, name, hdfs, webhdfs, tmp_path):
        self.name, self.hdfs, self.webhdfs, self.tmp = name, hdfs, webhdfs, tmp_path
        self.base = f"/user/{hdfs.user}/mr-{uuid.uuid4().hex[:8]}"

    def put(self, name: str, data: bytes) -> str:
        if self.name == "hadoop":
            self.webhdfs.write(f"{self.base}/{name}", data=data, overwrite=True)
            return f"{self.hdfs.hdfs_url}{self.base}/{name}"
        path = self.tmp / name
        path.write_bytes(data)
        return str(path)

    def out(self, name: str) -> str:
        if self.name == "hadoop":
            return f"{self.hdfs.hdfs_url}{self.base}/{name}"
        return str(self.tmp / name)

    def parts(self, out: str) -> list[bytes]:
        """Each part file of out, in order (one per task of the last step)."""
        if self.name == "hadoop":
            path = out[len(self.hdfs.hdfs_url) :]
            parts = []
            for part in sorted(p for p in self.webhdfs.list(path) if p.startswith("part-")):
                with self.webhdfs.read(f"{path}/{part}") as reader:
                    parts.append(reader.read())
            return parts
        return [p.read_bytes() for p in sorted(Path(out).glob("part-*"))]

    def read(self, out: str) -> bytes:
        return b"".join(self.parts(out))

    def run(self, job: str, *args: str) -> subprocess.CompletedProcess:
        env = self.hdfs.env()
        return subprocess.run(
            [sys.executable, "-m", "jobs.mapreduce.launch", job, "-r", self.name, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=600,
        )


@pytest.fixture(params=RUNNERS)
def runner(request, hdfs, webhdfs, tmp_path):
    return Runner(request.param, hdfs, webhdfs, tmp_path)


def lines_of(data: bytes) -> list[dict]:
    # Hadoop's TextOutputFormat ends a key-only line with a tab: JSON whitespace.
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_ingest_good_and_bad_rows(runner):
    src = runner.put("in.jsonl", b"\n".join(GOOD_AND_BAD) + b"\n")
    out = runner.out("records")
    proc = runner.run("ingest", "--source", "t", "--rating-field", "sentiment", src, "--output-dir", out)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    records, rejects = split_rows(lines_of(runner.read(out)))
    assert len(records) == 3 and len(rejects) == 8
    assert {r["id"] for r in records} == {R.record_id("t", GOOD_AND_BAD[i]) for i in range(3)}
    assert sorted(r["reason"] for r in rejects) == sorted(
        [
            "malformed_json",
            "not_a_json_object",
            "duplicate_record",
            "missing_text",
            "wrong_type:text",
            "empty_text",
            "wrong_type:rating",
            "invalid_utf8",
        ]
    )
    assert b"good=3" in proc.stderr and b"rejected=8" in proc.stderr


@pytest.fixture(scope="module")
def skewed(tiny_registry) -> tuple[list[dict], dict]:
    """The skewed rows and what the model, called directly, gives for them
    (computed once for both runners)."""
    from udfs.predict import ScoreSettings, score_texts

    rows = skewed_rows(load_config(ROOT / "conf" / "pipeline.toml"))
    head = tiny_registry.load("sentiment@1")
    direct = score_texts(
        [r["text"] for r in rows], ScoreSettings.from_config(EncoderConfig(), dict(head.arrays), head.labels)
    )
    return rows, direct


def test_score_a_skewed_file_in_balanced_map_tasks(runner, tiny_registry, skewed):
    """The score twin's map tasks follow the map slots, not the input's HDFS
    blocks: a single file (one block) whose long texts all sit in its last
    15% of lines runs as several scoring map tasks of about equal estimated
    cost. Each scoring map task writes one part file (the step is map-only),
    so the part files count the tasks and carry each task's rows. Every row's
    label and probability are the model's, called directly."""
    rows, direct = skewed
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
    per_task = [lines_of(data) for data in runner.parts(out)]
    assert len(per_task) >= 2
    total = costs_of(rows).sum()
    shares = [costs_of(task).sum() / total if task else 0.0 for task in per_task]
    assert abs(sum(shares) - 1) < 1e-9 and max(shares) <= MAX_SHARE, shares
    assert sorted(r["id"] for task in per_task for r in task) == sorted(r["id"] for r in rows)

    scored = {r["id"]: r for task in per_task for r in task}
    for row, predicted, probability in zip(rows, direct["predicted"], direct["probability"], strict=True):
        assert scored[row["id"]]["predicted"] == predicted
        assert abs(scored[row["id"]]["probability"] - probability) < 1e-5
    if runner.name == "hadoop":  # the Hadoop job id is the run id
        assert next(iter(scored.values()))["run_id"].startswith("job_local")


def test_score_unknown_model_fails_before_the_job(runner, tiny_registry):
    src = runner.put("records.jsonl", b'{"id": "x", "source": "s", "text": "fine"}\n')
    proc = runner.run(
        "score",
        "--set",
        f"registry_dir={tiny_registry.root}",
        "--model",
        "sentiment@9",
        src,
        "--output-dir",
        runner.out("scored"),
    )
    assert proc.returncode == 2
    assert b"unknown model 'models:/sentiment/9'" in proc.stderr
    assert b"registered: sentiment (versions 1)" in proc.stderr


def test_stats_tables(runner):
    src = runner.put("scored.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in SCORED))
    out = runner.out("stats")
    proc = runner.run("stats", "--set", "stats.top_k=2", src, "--output-dir", out)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    tables: dict[str, list] = {}
    for line in runner.read(out).splitlines():
        table, row = line.split(b"\t", 1)
        tables.setdefault(json.loads(table), []).append(json.loads(row))
    assert [t["term"] for t in tables["top_terms"]] == ["bad", "film", "good", "film"]
    assert tables["counts"][2] == {"source": "s2", "label": "", "count": 1}
    assert sum(t["count"] for t in tables["term_freq"]) == 8


def test_stats_bad_line_fails_naming_it(runner):
    src = runner.put("scored.jsonl", json.dumps(SCORED[0]).encode() + b"\nnot a row\n")
    proc = runner.run("stats", src, "--output-dir", runner.out("stats"))
    assert proc.returncode != 0
    # -r local relays the task's traceback; -r hadoop leaves it in the task log mrjob scans.
    assert b"not a scored row" in proc.stderr or b"BadScoredRow" in proc.stderr, proc.stderr.decode()[-3000:]


def test_hadoop_runner_keeps_file_uris_off_the_jvm(tmp_path):
    """-r hadoop's filesystem calls on file:/// URIs (the job's scratch dir
    on Hadoop's LocalJobRunner) run in Python: with a hadoop command that
    does not exist, mkdir, put, ls, cat and rm still work there, and hdfs://
    still goes to `hadoop fs`. The Hadoop version comes from the jar's name."""
    from infra.settings import DEFAULT_HADOOP_HOME
    from jobs.mapreduce.hadoop_runner import HadoopRunner, LocalFirstFilesystem, jar_version
    from jobs.mapreduce.mr_compute_stats import MRComputeStats

    job = MRComputeStats(["-r", "hadoop", str(tmp_path / "in.jsonl")])
    assert job._runner_class() is HadoopRunner
    fs = LocalFirstFilesystem([str(tmp_path / "no-hadoop" / "bin" / "hadoop")])
    src = tmp_path / "f.txt"
    src.write_bytes(b"x\n")
    scratch = f"file://{tmp_path}/scratch"
    fs.mkdir(scratch)
    fs.put(str(src), f"{scratch}/f.txt")
    assert list(fs.ls(scratch)) == [f"{scratch}/f.txt"]
    assert b"".join(fs.cat(f"{scratch}/f.txt")) == b"x\n"
    fs.rm(scratch)
    assert not fs.exists(scratch)
    with pytest.raises(OSError):  # an hdfs:// address nobody declared is hadoop fs's, and there is none
        fs.mkdir("hdfs://127.0.0.1:1/x")
    version = Path(DEFAULT_HADOOP_HOME).name.split("-", 1)[1]  # var/hadoop-3.5.0
    assert jar_version([str(Path(DEFAULT_HADOOP_HOME) / "bin" / "hadoop")]) == version
    assert jar_version([str(tmp_path / "no-hadoop" / "bin" / "hadoop")]) is None


def test_hadoop_runner_reaches_hdfs_through_webhdfs(hdfs, tmp_path, monkeypatch):
    """On YARN the job's scratch dir is on HDFS: with the NameNode's WebHDFS
    address known (here $AIBATCH_WEBHDFS, set for the test HDFS), its
    mkdir, put, ls, cat, du and rm go through WebHDFS, with no hadoop
    command at all (this one does not exist); the relative scratch dir
    mrjob makes (hdfs:///user/...) resolves through HADOOP_CONF_DIR."""
    from jobs.mapreduce.hadoop_runner import LocalFirstFilesystem

    fs = LocalFirstFilesystem([str(tmp_path / "no-hadoop" / "bin" / "hadoop")])
    assert_mrjob_fs_round_trip(fs, f"{hdfs.hdfs_url}/user/{hdfs.user}/wh-{uuid.uuid4().hex[:8]}", tmp_path)
    monkeypatch.setenv("HADOOP_CONF_DIR", str(hdfs.conf_dir))
    assert_mrjob_fs_round_trip(fs, f"hdfs:///user/{hdfs.user}/wh-{uuid.uuid4().hex[:8]}", tmp_path)


@pytest.mark.parametrize("through", ["webhdfs", "hadoop fs"])
def test_an_owner_only_file_stays_owner_only_on_hdfs(through, hdfs, webhdfs, tmp_path, monkeypatch):
    """The enrich twin ships the API key to YARN tasks as a 0600 file: its
    HDFS copy is 0600 from the start (so other users cannot read it and YARN
    localises it privately), through WebHDFS and through `hadoop fs`; other
    files keep the cluster's umask."""
    from infra.settings import DEFAULT_HADOOP_HOME
    from jobs.mapreduce.hadoop_runner import LocalFirstFilesystem

    monkeypatch.setenv("HADOOP_CONF_DIR", str(hdfs.conf_dir))
    hadoop = str(DEFAULT_HADOOP_HOME / "bin" / "hadoop")
    fs = LocalFirstFilesystem([hadoop])
    if through == "hadoop fs":
        fs = fs.hadoop  # mrjob's fallback where WebHDFS is not known
    key, plain = tmp_path / "api_key", tmp_path / "plain.txt"
    key.touch(mode=0o600)
    key.write_text("sk-not-a-real-key")
    plain.write_text("shared")
    plain.chmod(0o644)
    base = f"/user/{hdfs.user}/private-{uuid.uuid4().hex[:8]}"
    fs.mkdir(f"{hdfs.hdfs_url}{base}")  # as mrjob does before its puts
    for local in (key, plain):
        fs.put(str(local), f"{hdfs.hdfs_url}{base}/{local.name}")
    assert webhdfs.status(f"{base}/api_key")["permission"] == "600"
    assert webhdfs.status(f"{base}/plain.txt")["permission"] == "644"
    webhdfs.delete(base, recursive=True)
