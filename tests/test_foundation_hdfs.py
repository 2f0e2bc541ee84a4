"""The foundation: the Hadoop home's `hadoop` command, the single-node HDFS
and its lifecycle, WebHDFS and Spark reading and writing `hdfs://`."""

from __future__ import annotations

import io
import socket
import subprocess
import uuid

import pyarrow.parquet as pq
import pytest

from infra.hdfs import HdfsError, LocalHDFS, check_java
from infra.settings import SettingsError, load_settings
from jobs.spark import hdfs_roundtrip

from .conftest import assert_mrjob_fs_round_trip, make_hdfs


def hadoop(node: LocalHDFS, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(node.hadoop_bin), *args], env=node.env(), input=input, capture_output=True, timeout=120)


def test_hadoop_version_is_3_5_0(hdfs):
    proc = hadoop(hdfs, "version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[0] == "Hadoop 3.5.0"


def test_hadoop_classpath_lists_the_home_jars(hdfs):
    out = hadoop(hdfs, "classpath").stdout.decode()
    assert str(hdfs.hadoop_home / "share/hadoop/common/lib/*") in out


def test_hadoop_fs_put_ls_cat(hdfs, tmp_path):
    local = tmp_path / "hello.txt"
    local.write_text("hello from hadoop fs\n")
    target = f"/user/{hdfs.user}/fs-{uuid.uuid4().hex}"
    assert hadoop(hdfs, "fs", "-mkdir", "-p", target).returncode == 0
    put = hadoop(hdfs, "fs", "-put", str(local), f"{target}/hello.txt")
    assert put.returncode == 0, put.stderr
    ls = hadoop(hdfs, "fs", "-ls", target)
    assert ls.returncode == 0, ls.stderr
    assert f"{target}/hello.txt" in ls.stdout.decode()
    cat = hadoop(hdfs, "fs", "-cat", f"{hdfs.hdfs_url}{target}/hello.txt")
    assert cat.stdout.decode() == "hello from hadoop fs\n"
    missing = hadoop(hdfs, "fs", "-cat", f"{target}/nope.txt")
    assert missing.returncode != 0
    assert b"No such file" in missing.stderr


def test_hadoop_unknown_command_fails_clearly(hdfs):
    proc = hadoop(hdfs, "frobnicate")
    assert proc.returncode == 1
    assert b"unknown command 'frobnicate'" in proc.stderr


def test_mrjob_hadoop_filesystem(hdfs, tmp_path, monkeypatch):
    from mrjob.fs.hadoop import HadoopFilesystem

    for key, value in hdfs.env().items():
        monkeypatch.setenv(key, value)
    fs = HadoopFilesystem(hadoop_bin=[str(hdfs.hadoop_bin)])
    assert fs.get_hadoop_version() == "3.5.0"
    assert_mrjob_fs_round_trip(fs, f"{hdfs.hdfs_url}/user/{hdfs.user}/mrjob-{uuid.uuid4().hex}", tmp_path)


def test_webhdfs_spark_parquet_round_trip(hdfs, webhdfs, spark):
    base = f"/user/{hdfs.user}/roundtrip-{uuid.uuid4().hex}"
    webhdfs.write(f"{base}/in.txt", data="the cat sat\nThe dog sat on the cat\n", encoding="utf-8")

    n = hdfs_roundtrip.roundtrip(spark, f"{hdfs.hdfs_url}{base}/in.txt", f"{hdfs.hdfs_url}{base}/out")
    assert n == 5

    parts = [p for p in webhdfs.list(f"{base}/out") if p.endswith(".parquet")]
    assert webhdfs.status(f"{base}/out/_SUCCESS")["type"] == "FILE"
    rows = []
    for part in parts:
        with webhdfs.read(f"{base}/out/{part}") as reader:
            rows += pq.read_table(io.BytesIO(reader.read())).to_pylist()
    assert sorted(rows, key=lambda r: (-r["count"], r["word"])) == [
        {"word": "the", "count": 3},
        {"word": "cat", "count": 2},
        {"word": "sat", "count": 2},
        {"word": "dog", "count": 1},
        {"word": "on", "count": 1},
    ]


def test_word_counts_transform_on_literal_frames(spark):
    from pyspark.testing import assertDataFrameEqual

    lines = spark.createDataFrame([("A b a",), ("",), ("b, c!",)], "value string")
    expected = spark.createDataFrame([("a", 2), ("b", 2), ("c", 1)], "word string, count long")
    assertDataFrameEqual(hdfs_roundtrip.word_counts(lines), expected, checkRowOrder=True)
    empty = spark.createDataFrame([], "value string")
    assert hdfs_roundtrip.word_counts(empty).count() == 0


def test_start_stop_start_keeps_files_and_second_start_is_a_noop(tmp_path):
    node = make_hdfs(tmp_path / "hdfs")
    try:
        assert node.start() is True
        from hdfs import InsecureClient

        client = InsecureClient(node.webhdfs_url, user=node.user)
        client.write(f"/user/{node.user}/kept.txt", data=b"survives a restart")
        assert node.start() is False  # already running: nothing done
        assert node.status() == "running"
        assert node.stop() is True
        assert node.status() == "stopped"
        assert node.start() is True
        with client.read(f"/user/{node.user}/kept.txt") as reader:
            assert reader.read() == b"survives a restart"
    finally:
        node.stop()
    assert node.stop() is False


def test_start_with_namenode_port_taken_names_the_port(tmp_path):
    node = make_hdfs(tmp_path / "hdfs")
    port = node.settings.namenode_port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(HdfsError, match=rf"NameNode RPC port {port} on 127.0.0.1 is already in use"):
            node.start()
    assert node.running() == {"namenode": None, "datanode": None}


def test_corrupt_name_dir_is_refused_with_a_clear_error(tmp_path):
    node = make_hdfs(tmp_path / "hdfs")
    name_dir = tmp_path / "hdfs" / "name"
    (name_dir / "current").mkdir(parents=True)
    (name_dir / "current" / "fsimage_0000").write_bytes(b"\x00garbage")
    with pytest.raises(HdfsError, match=r"NameNode directory .*name is corrupt"):
        node.start()
    (name_dir / "current" / "VERSION").write_text("#garbled\nlayoutVersion=-1\n")
    with pytest.raises(HdfsError, match=r"lacks namespaceID/clusterID"):
        node.start()


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(HdfsError, match="Java not found.*OpenJDK 17"):
        check_java()


def test_settings_errors_name_the_key(tmp_path):
    bad = tmp_path / "hdfs.toml"
    bad.write_text('namenode_port = "many"\n')
    with pytest.raises(SettingsError, match="'namenode_port' must be an integer"):
        load_settings(bad, env={})
    bad.write_text("namenode_prot = 1\n")
    with pytest.raises(SettingsError, match="unknown key 'namenode_prot'"):
        load_settings(bad, env={})
    with pytest.raises(SettingsError, match="AIBATCH_HDFS_DATANODE_PORT.*port in 1..65535"):
        load_settings(env={"AIBATCH_HDFS_DATANODE_PORT": "70000"})
    settings = load_settings(env={"AIBATCH_HDFS_NAMENODE_PORT": "29820"})
    assert settings.hdfs_url == "hdfs://127.0.0.1:29820"


def test_free_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice():
    """A port from the kernel's ephemeral range, chosen for a daemon that
    starts minutes later, can meanwhile become some outgoing connection's
    local port (CI's standalone cluster found its web UI port taken so)."""
    from infra.hdfs import free_ports

    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        low = int(fh.read().split()[0])
    first, second = free_ports(6), free_ports(6)
    assert len(set(first + second)) == 12
    assert all(10000 <= p < low for p in first + second), (first, second, low)
    # One that something listens on is skipped.
    with socket.socket() as s:
        s.bind(("127.0.0.1", second[-1] + 1))
        s.listen()
        assert second[-1] + 1 not in free_ports(1)
