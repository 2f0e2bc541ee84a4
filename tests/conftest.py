"""Shared fixtures: one single-node HDFS and one local[2] SparkSession for the
whole test run, both stopped at the end even when tests fail."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from infra.hdfs import LocalHDFS, free_ports
from infra.settings import DEFAULT_HADOOP_HOME, HdfsSettings

REPO_ROOT = Path(__file__).resolve().parent.parent

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
def hdfs(tmp_path_factory) -> LocalHDFS:
    node = make_hdfs(tmp_path_factory.mktemp("hdfs"))
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def webhdfs(hdfs):
    from hdfs import InsecureClient

    return InsecureClient(hdfs.webhdfs_url, user=hdfs.user)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("aibatch-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    try:
        yield session
    finally:
        session.stop()
