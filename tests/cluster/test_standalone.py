"""The chain on a real Spark standalone cluster (Spark's own Master and two
Workers from the installed pyspark, each in its own JVM, on loopback), its
executors running the packed environment that ./submit.sh ships with
--archives URL#environment: output equal to local mode joined on id, every
daemon listening on loopback only, and a clear failure without the archive."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import (
    assert_packed_env,
    assert_same_chain,
    listening_sockets,
    process_tree,
    read_chain,
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
    master = set(listening_sockets(standalone.running()["master"]))
    s = standalone.settings
    assert {("127.0.0.1", s.spark_master_port), ("127.0.0.1", s.spark_master_http_port)} <= master


def test_chain_on_standalone_equals_local_mode(
    standalone, env_archive, hdfs, webhdfs, hdfs_raw, cluster_config, local_chain, tmp_path
):
    out, report = f"{hdfs_raw}/standalone", tmp_path / "report.json"
    env = {**hdfs.env(), "AIBATCH_ENV_ARCHIVE": env_archive["url"]}
    proc = submit(
        "--master",
        standalone.master_url,
        "--config",
        str(cluster_config),
        str(os.path.join(os.path.dirname(__file__), "chain_app.py")),
        "--raw",
        f"{hdfs_raw}/raw",
        "--out",
        out,
        "--model",
        "sentiment@1",
        "--report",
        str(report),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_chain(read_chain(webhdfs, out), local_chain)
    probe = json.loads(report.read_text())
    # Standalone executors run in <worker work dir>/app-<id>/<executor id>/.
    assert_packed_env(probe["workers"], probe["driver"]["prefix"], standalone.settings.spark_workers, "/work/app-")
    assert {os.path.dirname(os.path.dirname(r["cwd"])) for r in probe["workers"]} == {
        str(standalone.work_dir(w)) for w in standalone.worker_names()
    }


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
        f"{hdfs_raw}/local/records",
        "--output",
        f"{hdfs_raw}/never",
        env=env,
    )
    assert proc.returncode == 2
    assert f"the packed environment {missing} does not exist: run ./submit.sh pack --upload" in proc.stderr
