"""The chain on a real Spark standalone cluster (Spark's own Master and two
Workers from the installed pyspark, each in its own JVM, on loopback), run
by docs/clusters.md's standalone command (the pipeline job: one application), its
executors running the packed environment that ./submit.sh ships with
--archives URL#environment: output equal to local mode joined on id, every
daemon listening on loopback only, and a clear failure without the archive."""

from __future__ import annotations

import pytest

from infra.daemons import GZIP_DIR
from udfs.worker_env import read_log_lines

from .conftest import (
    ROOT,
    assert_packed_env,
    assert_same_chain,
    daemon_path,
    listening_sockets,
    process_tree,
    read_parquet_chain,
    readme_commands,
    run_readme_line,
    submit,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(3600),
]  # one Spark application per cluster: minutes


def test_daemons_listen_on_loopback_only(standalone):
    pids = [p for p in standalone.running().values() if p]
    assert len(pids) == 1 + standalone.settings.spark_workers
    for pid in pids:
        sockets = {s for p in process_tree(pid) for s in listening_sockets(p)}
        assert sockets, pid
        assert {addr for addr, _ in sockets} == {"127.0.0.1"}, (pid, sockets)
    # executors, which the workers start, unpack the archive with infra/bin/gzip (igzip)
    for worker in standalone.worker_names():
        assert daemon_path(standalone.running()[worker])[0] == str(GZIP_DIR)
    master = set(listening_sockets(standalone.running()["master"]))
    s = standalone.settings
    assert {("127.0.0.1", s.spark_master_port), ("127.0.0.1", s.spark_master_http_port)} <= master


def test_readme_pipeline_on_standalone_equals_local_mode(
    standalone, env_archive, hdfs, spark, webhdfs, hdfs_raw, cluster_config, local_chain
):
    """docs/clusters.md's standalone command: the pipeline job (ingest -> score ->
    stats in one application, so the environment is unpacked once)."""
    (line,) = [c for c in readme_commands() if "$SPARK_MASTER" in c]
    assert " pipeline " in line and "$H/sa/" in line
    env = {
        **hdfs.env(),
        "H": hdfs_raw,
        "SPARK_MASTER": standalone.master_url,
        "AIBATCH_CONFIG": str(cluster_config),
    }
    env.pop("AIBATCH_ENV_ARCHIVE", None)  # where ./submit.sh pack --upload put it
    proc = run_readme_line(line, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_chain(read_parquet_chain(spark, webhdfs, f"{hdfs_raw}/sa"), local_chain)
    # Each scoring Python worker wrote which Python it ran to its executor's
    # log (udfs/worker_env.py); standalone executors run in
    # <worker work dir>/app-<id>/<executor id>/.
    reports, dirs = [], set()
    for worker in standalone.worker_names():
        for stderr in standalone.work_dir(worker).glob("app-*/*/stderr"):
            found = read_log_lines(stderr.read_text(errors="replace"))
            reports += found
            dirs |= {str(standalone.work_dir(worker))} if found else set()
    assert_packed_env(reports, str(ROOT / ".venv"), standalone.settings.spark_workers, "/work/app-")
    assert dirs == {str(standalone.work_dir(w)) for w in standalone.worker_names()}


def test_missing_archive_fails_before_submitting(standalone, hdfs, hdfs_raw, cluster_config):
    missing = f"{hdfs.hdfs_url}/user/{hdfs.user}/aibatch/env/no-such-env.tar.gz"
    env = {**hdfs.env(), "AIBATCH_ENV_ARCHIVE": missing}
    proc = submit(
        "--master",
        standalone.master_url,
        "--config",
        str(cluster_config),
        "score",
        "--input",
        f"{hdfs_raw}/raw",  # exists (a fixture wrote it): the archive is what is missing
        "--output",
        f"{hdfs_raw}/never",
        env=env,
    )
    assert proc.returncode == 2
    assert f"the packed environment {missing} does not exist: run ./submit.sh pack --upload" in proc.stderr
