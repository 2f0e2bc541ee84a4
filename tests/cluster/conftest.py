"""Fixtures of the cluster tests: the packed environment uploaded to the test
run's HDFS, a Spark standalone cluster and a single-node YARN on free
loopback ports, real input rows in several files, and the chain's
local-mode output that every cluster's output is compared with."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from infra.hdfs import free_ports
from infra.settings import ClusterSettings
from tests.conftest import private_config
from tests.mapreduce.conftest import MOVIE_TSV, movie_lines, tiny_registry  # noqa: F401 (fixtures)
from udfs.worker_env import PROVIDER_SDKS

ROOT = Path(__file__).resolve().parent.parent.parent
ROWS = 400
BAD_ROWS = [b'{"text": "unterminated', b'{"sentiment": 2.0}', b'{"text": " \\t "}']


def cluster_settings(base: Path) -> ClusterSettings:
    """Settings of a private YARN on free ports and a standalone cluster
    under base (the standalone fixture chooses its ports when it starts)."""
    values = dict(zip(ClusterSettings.YARN_PORT_KEYS, free_ports(len(ClusterSettings.YARN_PORT_KEYS)), strict=True))
    # MapReduce's task and application master JVMs compile with C1 only, as
    # the suite's other short-lived JVMs do (tests/conftest.py).
    return ClusterSettings().with_overrides(
        **values, yarn_dir=base / "yarn", spark_dir=base / "spark", task_java_opts="-XX:TieredStopAtLevel=1"
    )


def with_spark_ports(settings: ClusterSettings) -> ClusterSettings:
    """settings with the standalone cluster's ports chosen now: the master's
    two, and the workers' web UIs at spark_worker_http_port + i, a run of
    consecutive free ports."""
    master, master_http = free_ports(2)
    workers = free_ports(settings.spark_workers)
    while workers != list(range(workers[0], workers[0] + len(workers))):
        workers = free_ports(settings.spark_workers)
    return settings.with_overrides(
        spark_master_port=master, spark_master_http_port=master_http, spark_worker_http_port=workers[0]
    )


@pytest.fixture(scope="session")
def cluster_conf(tmp_path_factory) -> ClusterSettings:
    return cluster_settings(tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="session")
def env_archive(hdfs) -> dict:
    """The packed environment (cached under var/pack by the lock files' hash;
    packed here when missing) and Spark's jars, uploaded to the test HDFS."""
    from infra.pack import Packer, unpacked_bytes

    packer = Packer()
    started = time.monotonic()
    path, packed = packer.pack()
    pack_s = time.monotonic() - started
    # Copies of the environment the chains make, besides the packed archive:
    # HDFS (1 archive); the NodeManager's public cache (1 unpacked copy, kept
    # while the session's YARN runs); at most the standalone application,
    # whose driver and two executors each fetch the archive and unpack it (3
    # archives and 3 unpacked copies, until the application ends: 26.2 GB
    # measured with a 3.2 GB archive). A full disk fails executors in a
    # loop, so say so first. 2 GB for everything else.
    size, unpacked = path.stat().st_size, unpacked_bytes(path)
    need, free = 4 * size + 4 * unpacked + 2_000_000_000, shutil.disk_usage(ROOT).free
    assert free > need, (
        f"the cluster tests need about {need / 1e9:.0f} GB free for copies of the packed environment "
        f"({size / 1e9:.1f} GB, {unpacked / 1e9:.1f} GB unpacked); {free / 1e9:.0f} GB are free"
    )
    os.environ["HADOOP_CONF_DIR"] = str(hdfs.conf_dir)
    try:
        dir_url = f"{hdfs.hdfs_url}/user/{hdfs.user}/aibatch/env"
        started = time.monotonic()
        url = packer.upload(path, dir_url)
        jars = packer.upload(packer.spark_jars_zip(), dir_url)
    finally:
        del os.environ["HADOOP_CONF_DIR"]
    print(
        f"env archive {path.name}: {path.stat().st_size / 1e9:.2f} GB, "
        f"{'packed' if packed else 'cached'} ({pack_s:.0f} s), uploaded in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return {"url": url, "jars": jars, "path": path}


def delete_in_background(dirs: list[Path]) -> None:
    """Move dirs aside at once (a rename each) and delete them in an `rm -rf`
    of their own, which goes on while the tests do (the unpacked environment
    is tens of thousands of files)."""
    dirs = [d for d in dirs if d.exists()]
    if not dirs:
        return
    trash = dirs[0].parent / f"deleting-{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    for i, d in enumerate(dirs):
        os.replace(d, trash / f"{i}-{d.name}")
    subprocess.Popen(
        ["rm", "-rf", str(trash)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def standalone(cluster_conf):
    """Spark's Master and two Workers, for one test module: stopped after it,
    with the workers' dirs (each executor unpacks the 5 GB environment into
    its own) deleted, so the disk is free for the next cluster: moved aside
    at once and deleted by an `rm -rf` of their own while the tests go on
    (about 80,000 files)."""
    from infra.standalone import SparkStandalone

    # Its ports are chosen when it starts, not with the session's settings.
    cluster = SparkStandalone(with_spark_ports(cluster_conf))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        delete_in_background([cluster.work_dir(w) for w in cluster.worker_names()])


@pytest.fixture(scope="session")
def raw_rows(movie_lines) -> list[bytes]:  # noqa: F811 (the imported fixture)
    """ROWS real rows (VADER movie-review snippets and their human ratings,
    as JSON Lines) and three bad rows."""
    from scripts.datasets import package_file

    lines = []
    with open(package_file(MOVIE_TSV), "rb") as fh:
        next(fh)
        for _, raw in zip(range(ROWS), fh, strict=False):
            _, rating, text = raw.rstrip(b"\r\n").decode("utf-8").split("\t", 2)
            lines.append(json.dumps({"text": text, "sentiment": float(rating)}).encode())
    lines[50:50] = BAD_ROWS
    return lines


@pytest.fixture(scope="session")
def hdfs_raw(hdfs, webhdfs, raw_rows) -> str:
    """The rows in 4 files on the test HDFS: its hdfs:// dir URL."""
    base = f"/user/{hdfs.user}/cluster-{uuid.uuid4().hex[:8]}"
    quarter = len(raw_rows) // 4 + 1
    for i in range(4):
        part = raw_rows[i * quarter : (i + 1) * quarter]
        webhdfs.write(f"{base}/raw/part-{i}.jsonl", data=b"\n".join(part) + b"\n")
    return f"{hdfs.hdfs_url}{base}"


@pytest.fixture(scope="session")
def cluster_config(tmp_path_factory, tiny_registry) -> Path:  # noqa: F811 (the imported fixture)
    return private_config(tmp_path_factory.mktemp("cluster-conf"), registry=tiny_registry.root)


def read_hdfs_dir(webhdfs, url: str) -> bytes:
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    data = b""
    for part in sorted(p for p in webhdfs.list(path) if p.startswith("part-")):
        with webhdfs.read(f"{path}/{part}") as reader:
            data += reader.read()
    return data


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def read_chain(webhdfs, out: str) -> dict:
    read = lambda p: jsonl(read_hdfs_dir(webhdfs, f"{out}/{p}"))  # noqa: E731
    return {
        "records": read("records"),
        "rejects": read("rejects"),
        "scored": read("scored"),
        "stats": {t: read(f"stats/{t}") for t in ("counts", "term_freq", "top_terms")},
    }


@pytest.fixture(scope="session")
def local_chain(spark, hdfs, webhdfs, hdfs_raw, cluster_config) -> dict:
    """The chain in local mode (the session's local[2] SparkSession)."""
    from jobs.spark import common, ingest, score, stats

    out = f"{hdfs_raw}/local"
    cfg = ["--config", str(cluster_config)]
    common.run_main(
        ingest.main,
        spark,
        ingest.parser().parse_args(
            [*cfg, "--input", f"{hdfs_raw}/raw", "--format", "jsonl", "--source", "mine"]
            + ["--rating-field", "sentiment", "--output", f"{out}/records", "--rejects", f"{out}/rejects"]
            + ["--output-format", "jsonl"]
        ),
    )
    common.run_main(
        score.main,
        spark,
        score.parser().parse_args(
            [*cfg, "--input", f"{out}/records", "--input-format", "jsonl", "--model", "sentiment@1"]
            + ["--output", f"{out}/scored", "--output-format", "jsonl"]
        ),
    )
    common.run_main(
        stats.main,
        spark,
        stats.parser().parse_args(
            [*cfg, "--input", f"{out}/scored", "--input-format", "jsonl", "--output", f"{out}/stats"]
        ),
    )
    return read_chain(webhdfs, out)


DIFFER_BY_NATURE = ("run_id", "scored_at")


def assert_same_chain(got: dict, want: dict) -> None:
    """Cluster output equals local-mode output joined on id: records and
    rejects exactly, labels exactly, probabilities to 1e-5, stats exactly."""
    from udfs import records as R
    from udfs.lineage import LINEAGE_COLUMNS

    assert len(want["records"]) == ROWS and len(want["rejects"]) == len(BAD_ROWS)

    def by_id(rows, fields):
        return {r["id"]: {f: r.get(f) for f in fields} for r in rows}

    assert by_id(got["records"], R.RECORD_FIELDS) == by_id(want["records"], R.RECORD_FIELDS)
    assert by_id(got["rejects"], R.REJECT_FIELDS) == by_id(want["rejects"], R.REJECT_FIELDS)
    g, w = {r["id"]: r for r in got["scored"]}, {r["id"]: r for r in want["scored"]}
    assert set(g) == set(w) and len(w) == ROWS
    compared = list(R.RECORD_FIELDS) + [c for c in LINEAGE_COLUMNS if c not in DIFFER_BY_NATURE] + ["predicted"]
    for rid, row in w.items():
        assert {c: g[rid].get(c) for c in compared} == {c: row.get(c) for c in compared}, rid
        assert abs(g[rid]["probability"] - row["probability"]) <= 1e-5, rid
    assert got["stats"] == want["stats"]


def assert_packed_sdks(sdks: dict, cwd: str) -> None:
    """The providers' SDKs the enrich tasks open their clients with come
    from the packed environment in the task's own dir."""
    assert set(sdks) == set(PROVIDER_SDKS), sdks
    for name, where in sdks.items():
        assert where and where.startswith(f"{cwd.rstrip('/')}/environment/lib/python3.11/site-packages/{name}/"), sdks


def assert_packed_env(reports: list[dict], driver_prefix: str, expect_executors: int, container_word: str) -> None:
    """Every Python worker ran the packed environment inside its own work or
    container dir, in a process apart from the driver, under
    expect_executors executor JVMs."""
    assert reports
    for r in reports:
        cwd = r["cwd"].rstrip("/") + "/"
        assert container_word in cwd, r
        assert r["prefix"] == cwd + "environment", r
        assert r["torch"].startswith(cwd + "environment/lib/python3.11/site-packages/torch/"), r
        assert r["encoder_dir"].startswith(cwd + "environment/"), r
        assert_packed_sdks(r["sdks"], cwd)
        assert os.path.realpath(r["prefix"]) != os.path.realpath(driver_prefix), r
        assert not r["prefix"].startswith(str(ROOT)), r
        assert r["executor_jvm_pid"] and "Executor" in r["executor_jvm_main"], r
        assert r["pid"] != os.getpid()
    assert len({r["executor_jvm_pid"] for r in reports}) == expect_executors, reports


def submit(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """./submit.sh from outside the repository; prints its duration."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "submit.sh"), *args], cwd="/tmp", env=env, capture_output=True, text=True, timeout=timeout
    )
    print(
        f"submit.sh {' '.join(a for a in args if not a.startswith('hdfs://'))[:160]}: rc {proc.returncode} "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return proc


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, read from
    /proc (IPv4, and IPv6 including IPv4-mapped addresses)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    hex_ip, hex_port = fields[1].split(":")
                    found.append((_address(hex_ip), int(hex_port, 16)))
    return found


def _address(hex_ip: str) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_ip)
    # /proc stores each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def daemon_path(pid: int) -> list[str]:
    """The PATH a running process was started with, split."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    path = next(v for v in environ if v.startswith(b"PATH="))
    return path[5:].decode().split(os.pathsep)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


@pytest.fixture(scope="session")
def yarn(hdfs, cluster_conf):
    """A single-node YARN (ResourceManager, NodeManager with the shuffle) on
    free loopback ports, on top of the session's HDFS, shared by the test
    modules (one start instead of one per module): stopped at the end of the
    session, with the NodeManager's local dirs (the localised 5 GB
    environment) deleted in the background."""
    from infra.yarn import LocalYARN

    node = LocalYARN(cluster_conf, hdfs.settings, hadoop_home=hdfs.hadoop_home)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        delete_in_background([node.base / "local"])


def read_parquet_dir(spark, url: str) -> list[dict]:
    return [r.asDict() for r in spark.read.parquet(url).collect()]


def read_parquet_chain(spark, webhdfs, base: str) -> dict:
    """What the Spark jobs wrote under base: records, rejects and scored as
    Parquet, the stats tables as JSON Lines (read_chain's shape)."""
    return {
        "records": read_parquet_dir(spark, f"{base}/records"),
        "rejects": read_parquet_dir(spark, f"{base}/rejects"),
        "scored": read_parquet_dir(spark, f"{base}/scored"),
        "stats": {t: jsonl(read_hdfs_dir(webhdfs, f"{base}/stats/{t}")) for t in ("counts", "term_freq", "top_terms")},
    }


def readme_commands() -> list[str]:
    """The commands of docs/clusters.md's "Pointing at an existing cluster" block."""
    text = (ROOT / "docs" / "clusters.md").read_text()
    section = text.split("## Pointing at an existing cluster", 1)[1]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found, "docs/clusters.md's cluster section has no bash block"
    block = found.group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def run_readme_line(line: str, env: dict) -> subprocess.CompletedProcess:
    """One documented command line in bash from the checkout; prints its duration."""
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    print(f"README: {line[:100]}: rc {proc.returncode} in {time.monotonic() - started:.0f} s", flush=True)
    return proc


def task_probes(yarn, app_ids: set[str] | None = None) -> list[dict]:
    """The 'aibatch task python' lines that MapReduce tasks on YARN wrote to
    their containers' stderr (infra/task_probe.py)."""
    found = []
    logs = Path(yarn.base) / "container-logs"
    for stderr in sorted(logs.glob("application_*/container_*/stderr")):
        app = stderr.parent.parent.name
        if app_ids is not None and app not in app_ids:
            continue
        for line in stderr.read_text(errors="replace").splitlines():
            if line.startswith("aibatch task python: "):
                found.append({**json.loads(line.split(": ", 1)[1]), "app": app, "container": stderr.parent.name})
    return found
