"""The single-node YARN: its daemons (ResourceManager, NodeManager with the
MapReduce shuffle) each in their own JVM, listening on loopback (the
shuffle excepted: Hadoop gives it no bind-address setting), clear errors
when a port is taken, and clear failures when the packed environment is
missing, for Spark (--master yarn) and for mrjob (-r hadoop on YARN)."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra.daemons import GZIP_DIR, ClusterError
from infra.yarn import NODEMANAGER_LAUNCH, LocalYARN, framework_of

from .conftest import ROOT, daemon_path, listening_sockets, process_tree, submit

pytestmark = pytest.mark.slow


def test_daemons_listen_on_loopback_but_the_shuffle(yarn):
    pids = yarn.running()
    assert all(pids.values()), pids
    s = yarn.settings
    sockets = {name: {a for p in process_tree(pid) for a in listening_sockets(p)} for name, pid in pids.items()}
    assert {("127.0.0.1", p) for p in (s.rm_port, s.rm_scheduler_port, s.rm_tracker_port, s.rm_admin_port)} | {
        ("127.0.0.1", s.rm_http_port)
    } <= sockets["resourcemanager"]
    assert {addr for addr, _ in sockets["resourcemanager"]} == {"127.0.0.1"}
    nm = sockets["nodemanager"]
    assert {("127.0.0.1", s.nm_port), ("127.0.0.1", s.nm_localizer_port), ("127.0.0.1", s.nm_http_port)} <= nm
    # ShuffleHandler (hadoop-mapreduce-client-shuffle 3.5.0) binds
    # new InetSocketAddress(port): every interface, and only it does.
    assert {(a, p) for a, p in nm if a != "127.0.0.1"} == {("0.0.0.0", s.shuffle_port)}
    assert yarn.status() == "running"
    assert framework_of(yarn.conf_dir) == "yarn"

    # the NodeManager's JVM starts its per-file chmod processes with vfork
    def jvm_args(pid: int) -> set[bytes]:
        return {a for p in process_tree(pid) for a in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")}

    assert NODEMANAGER_LAUNCH.encode() in jvm_args(pids["nodemanager"])
    assert NODEMANAGER_LAUNCH.encode() not in jvm_args(pids["resourcemanager"])
    # and localises archives with infra/bin/gzip first on its PATH (igzip)
    assert daemon_path(pids["nodemanager"])[0] == str(GZIP_DIR)


def test_start_names_the_taken_port(yarn, hdfs, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = LocalYARN(
            dataclasses.replace(yarn.settings, rm_port=port, yarn_dir=tmp_path / "yarn2"),
            hdfs.settings,
            hadoop_home=hdfs.hadoop_home,
        )
        with pytest.raises(ClusterError) as err:
            other.start()
    assert f"ResourceManager client RPC port {port} on 127.0.0.1 is already in use" in str(err.value)
    assert "conf/cluster.toml key 'rm_port' or AIBATCH_CLUSTER_RM_PORT" in str(err.value)
    assert not other.running()["resourcemanager"]


def test_java_missing_is_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "infra", "yarn", "start"],
        cwd=ROOT,
        env={"PATH": "/nonexistent", "PYTHONPATH": str(ROOT), "AIBATCH_CLUSTER_YARN_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "error: Java not found (no java on PATH and JAVA_HOME unset)" in proc.stderr


def test_missing_archive_fails_clearly_on_yarn(yarn, hdfs, hdfs_raw, cluster_config):
    missing = f"{hdfs.hdfs_url}/user/{hdfs.user}/aibatch/env/no-such-env.tar.gz"
    env = {**yarn.env(), "AIBATCH_ENV_ARCHIVE": missing, "AIBATCH_CONFIG": str(cluster_config)}
    spark = submit("--master", "yarn", "score", "--input", f"{hdfs_raw}/raw", "--output", f"{hdfs_raw}/x", env=env)
    assert spark.returncode == 2
    assert f"the packed environment {missing} does not exist: run ./submit.sh pack --upload" in spark.stderr
    mr = submit("mr", "score", "-r", "hadoop", f"{hdfs_raw}/raw", "--output-dir", f"{hdfs_raw}/y", env=env)
    assert mr.returncode == 2
    assert f"the packed environment {missing} does not exist: run ./submit.sh pack --upload" in mr.stderr
