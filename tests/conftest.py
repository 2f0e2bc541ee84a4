"""Shared fixtures: one single-node HDFS and one local[2] SparkSession for the
whole test run, both stopped at the end even when tests fail."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import cds
from infra.hdfs import LocalHDFS, free_ports
from infra.settings import DEFAULT_HADOOP_HOME, HdfsSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml): one worker per CPU this process may use,
    at most 4 (each worker starts its own HDFS, SparkSession and gateways)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_xdist_make_scheduler(config, log):
    """How `-n auto` spreads the tests: a module's tests run on one worker, so
    its module-scoped chains run once, and the modules under tests/cluster/
    form one unit, run one after another on one worker, because their YARN
    and standalone clusters pack and unpack the same 3 GB environment (about
    30 GB of disk at their peak) and must not do it side by side. Units are
    handed out in collection order (`--no-loadscope-reorder`), which puts the
    cluster unit, the longest, first. (xdist's own `--dist loadgroup` does not
    group under pytest 9.2, whose nodes keep their id elsewhere.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/cluster" if module.startswith("tests/cluster/") else module

    return ModuleScheduling(config, log)


# The suite's short-lived JVMs, Spark's driver (spark-submit, and the
# tests' own SparkSession) and Hadoop's client commands (`hadoop jar` running
# a twin's step), compile with C1 only: C2 spent about a third of a short
# job's CPU compiling (docs/development.md). What they compute is the same;
# the benchmarks under bench/ run with the JVM's defaults. A value of your
# own wins. (Not JAVA_TOOL_OPTIONS: every JVM then prints a line on stderr,
# which mrjob's `hadoop fs` parsing takes for an error.)
for _opts in ("SPARK_SUBMIT_OPTS", "HADOOP_CLIENT_OPTS"):
    os.environ.setdefault(_opts, "-XX:TieredStopAtLevel=1")
# Executors on YARN and standalone, and YARN's application master, too: the
# driver's SparkConf takes spark.* Java system properties from SPARK_SUBMIT_OPTS.
if "spark.executor.extraJavaOptions" not in os.environ["SPARK_SUBMIT_OPTS"]:
    os.environ["SPARK_SUBMIT_OPTS"] += (
        " -Dspark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1"
        " -Dspark.yarn.am.extraJavaOptions=-XX:TieredStopAtLevel=1"
    )
# The tests' own SparkSessions map Spark's classes from the class-data sharing
# archive setup builds, as ./submit.sh's jobs do, unless SPARK_SUBMIT_OPTS
# says otherwise (infra/cds.py).
os.environ["SPARK_SUBMIT_OPTS"] = cds.with_archive(os.environ["SPARK_SUBMIT_OPTS"])


def module_seconds(reports) -> dict[str, float]:
    """Seconds per test module: setup, call and teardown summed, as the
    workers measured them."""
    totals: dict[str, float] = {}
    for rep in reports:
        if getattr(rep, "when", None) in ("setup", "call", "teardown") and hasattr(rep, "duration"):
            module = rep.nodeid.split("::", 1)[0]
            totals[module] = totals.get(module, 0.0) + rep.duration
    return totals


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """After --durations: what each part of the suite cost (docs/development.md
    quotes it), per directory and for the 25 costliest modules."""
    reports = [rep for reps in terminalreporter.stats.values() for rep in reps]
    modules = module_seconds(reports)
    if len(modules) < 2:
        return
    total = sum(modules.values())
    parts: dict[str, float] = {}
    for module, seconds in modules.items():
        part = module.rsplit("/", 1)[0] if module.count("/") > 1 else "tests/*.py"
        parts[part] = parts.get(part, 0.0) + seconds
    write = terminalreporter.write_line
    terminalreporter.section("seconds per part of the suite (worker time, all workers together)")
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        write(f"{seconds:8.1f} s  {100 * seconds / total:5.1f} %  {part}")
    write(f"{total:8.1f} s  100.0 %  all {len(modules)} modules")
    terminalreporter.section("seconds per test module, the 25 costliest")
    for module, seconds in sorted(modules.items(), key=lambda kv: -kv[1])[:25]:
        write(f"{seconds:8.1f} s  {module}")


# Spark's Python workers must run this interpreter (the project's venv).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def make_hdfs(base: Path) -> LocalHDFS:
    """A private HDFS instance on free loopback ports under base."""
    nn, nn_http, dn, dn_http, dn_ipc = free_ports(5)
    settings = HdfsSettings(
        namenode_port=nn,
        namenode_http_port=nn_http,
        datanode_port=dn,
        datanode_http_port=dn_http,
        datanode_ipc_port=dn_ipc,
        data_dir=base,
    )
    return LocalHDFS(settings, hadoop_home=DEFAULT_HADOOP_HOME)


@pytest.fixture(scope="session")
def hdfs(tmp_path_factory) -> Iterator[LocalHDFS]:
    from jobs import commit

    node = make_hdfs(tmp_path_factory.mktemp("hdfs"))
    try:
        node.start()
        # Jobs commit their outputs by renames through this node's WebHDFS,
        # in this process and in the jobs the tests start.
        os.environ[commit.WEBHDFS_ENV] = f"{node.hdfs_url}={node.webhdfs_url}"
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def webhdfs(hdfs):
    from hdfs import InsecureClient

    return InsecureClient(hdfs.webhdfs_url, user=hdfs.user)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """A private single-node Kafka broker (KRaft) on free loopback ports."""
    from infra.kafka import LocalKafka

    broker = LocalKafka.on_free_ports(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def kafka_connector_jars() -> list[Path]:
    """Spark's Kafka connector for the installed pyspark (var/spark-kafka-V,
    ./scripts/setup.sh; docs/streams.md), where setup found one."""
    import pyspark

    return sorted((REPO_ROOT / "var" / f"spark-kafka-{pyspark.__version__}").glob("*.jar"))


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    builder = (
        # Up to 4 attempts per task, as conf/spark-defaults.conf's local[*,4]:
        # a lost Python worker is retried, not a failed job.
        SparkSession.builder.master("local[2,4]")
        .appName("aibatch-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
    )
    jars = kafka_connector_jars()
    if jars:  # so the stream job runs in this session (tests/test_stream_enrich.py), as --jars does for submit.sh
        builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    session = builder.getOrCreate()
    try:
        yield session
    finally:
        session.stop()


# ----- Spark jobs (issue 3): settings, a real data sample, a trained head -----

# Per cent of each default source file's raw records in the test sample
# (chosen by a hash of the id, so it spans each whole file): about 750 rows.
SAMPLE_PERCENT = 2


def private_config(
    base: Path, store: str = "models", changes: tuple[tuple[str, str], ...] = (), registry: Path | None = None
) -> Path:
    """base/pipeline.toml: conf/pipeline.toml with the model registry in
    registry (default base/store) and each (old, new) text of changes
    replaced."""
    text = (REPO_ROOT / "conf" / "pipeline.toml").read_text()
    registry_dir = registry or base / store
    for old, new in (('registry_dir = "var/mlflow"', f'registry_dir = "{registry_dir}"'), *changes):
        assert old in text, old
        text = text.replace(old, new)
    path = base / "pipeline.toml"
    path.write_text(text)
    return path


def assert_mrjob_fs_round_trip(fs, base: str, tmp_path: Path) -> None:
    """An mrjob filesystem's calls on a fresh dir base: mkdir (nested), put,
    exists, ls, cat, du and rm, each checked."""
    data = b"line one\nline two\n"
    local = tmp_path / "data.txt"
    local.write_bytes(data)
    assert not fs.exists(base)
    fs.mkdir(f"{base}/files")
    fs.put(str(local), f"{base}/files/data.txt")
    assert fs.exists(f"{base}/files/data.txt")
    assert list(fs.ls(base)) == [f"{base}/files/data.txt"]
    assert b"".join(fs.cat(f"{base}/files/data.txt")) == data
    assert fs.du(base) == len(data)
    fs.rm(base)
    assert not fs.exists(base)


@pytest.fixture(scope="session")
def pipeline_config(tmp_path_factory) -> Path:
    """conf/pipeline.toml with the model registry in a private temp dir."""
    return private_config(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory, pipeline_config) -> Path:
    """SAMPLE_PERCENT % of the raw records of every default source file, in the
    file's own format and compression (real data, small)."""
    import bz2
    import gzip

    from scripts.datasets import package_file
    from udfs.config import load_config
    from udfs.records import decompress, in_sample, record_id, split_records

    out = tmp_path_factory.mktemp("sample")
    for source in load_config(pipeline_config).ingest.sources:
        path = package_file(source.package_file)
        raws = list(split_records(source.format, decompress(path.name, path.read_bytes())))
        keep = [raw for raw in raws[1:] if in_sample(record_id(source.name, raw), SAMPLE_PERCENT)]
        data = b"\n".join([raws[0], *keep]) + b"\n"  # the header, then the sample
        if path.name.endswith(".gz"):
            data = gzip.compress(data)
        elif path.name.endswith(".bz2"):
            data = bz2.compress(data)
        (out / source.file).write_bytes(data)
    return out


@pytest.fixture(scope="session")
def hdfs_sample(hdfs, webhdfs, sample_dir) -> str:
    """sample_dir copied into HDFS; its hdfs:// URL."""
    dest = f"/user/{hdfs.user}/tests/sample/raw"
    webhdfs.makedirs(dest)
    for f in sorted(sample_dir.iterdir()):
        webhdfs.upload(f"{dest}/{f.name}", str(f), overwrite=True)
    return f"{hdfs.hdfs_url}{dest}"


@pytest.fixture(scope="session")
def trained(spark, hdfs, hdfs_sample, pipeline_config) -> dict:
    """The real sample ingested into HDFS and a tiny head trained on it with
    the train job: {'records', 'model', 'summary', 'config'}."""
    from jobs.spark import common, ingest, train

    base = hdfs_sample.rsplit("/raw", 1)[0]
    records = f"{base}/records"
    common.run_main(
        ingest.main,
        spark,
        ingest.parser().parse_args(
            [
                "--config",
                str(pipeline_config),
                "--input",
                hdfs_sample,
                "--output",
                records,
                "--rejects",
                f"{base}/rejects",
            ]
        ),
    )
    summary = common.run_main(
        train.main, spark, train.parser().parse_args(["--config", str(pipeline_config), "--input", records])
    )
    return {"records": records, "model": summary["model"], "summary": summary, "config": str(pipeline_config)}


# Spark's Python workers import udfs/ and jobs/ from the checkout in tests
# (submit.sh ships them as a zip instead, and unsets PYTHONPATH).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
