"""Runs the commands of docs/clusters.md's "Pointing at an existing cluster"
section, read from that page, against the single-node YARN (with the
session's HDFS), and checks what they wrote against local mode joined on
id: the Spark chain on YARN and the mrjob chain on YARN (tasks in
containers); and that the executors and tasks ran the packed environment
inside their own containers, apart from the driver. The block's standalone
command runs in test_standalone.py."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from udfs.ingest_rows import split_rows

from .conftest import (
    ROOT,
    assert_packed_env,
    assert_packed_sdks,
    assert_same_chain,
    jsonl,
    read_hdfs_dir,
    read_parquet_chain,
    readme_commands,
    run_readme_line,
    task_probes,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(3600),
]  # the chain runs in the first test's setup


@pytest.fixture(scope="module")
def readme_run(yarn, env_archive, hdfs, hdfs_raw, cluster_config) -> dict:
    """Every command of the block but the standalone one (test_standalone.py
    runs that, on its own cluster)."""
    env = {**yarn.env(), "H": hdfs_raw, "AIBATCH_CONFIG": str(cluster_config)}
    env.pop("AIBATCH_ENV_ARCHIVE", None)
    results = {}
    for line in readme_commands():
        if "$SPARK_MASTER" in line:
            continue
        proc = run_readme_line(line, env)
        assert proc.returncode == 0, f"{line}\nstdout: {proc.stdout[-4000:]}\nstderr: {proc.stderr[-4000:]}"
        results[line] = proc
    return results


def test_readme_block_is_what_runs():
    commands = readme_commands()
    assert commands[0].startswith("./submit.sh pack --upload")
    assert sum("--master yarn" in c for c in commands) == 2
    assert sum("--master yarn pipeline " in c for c in commands) == 1
    assert sum(" mr " in c and "-r hadoop" in c for c in commands) == 3
    assert sum("--master $SPARK_MASTER" in c for c in commands) == 1


def test_pack_reports_the_archive(readme_run, env_archive):
    out = next(p.stdout for line, p in readme_run.items() if line.startswith("./submit.sh pack"))
    assert f"environment archive: {env_archive['path']}" in out
    assert re.search(r"\(\d+\.\d\d GB, tar.gz by (igzip -1|zlib level 1), \d+\.\d\d GB unpacked, cached\)", out), out
    assert f"uploaded: {env_archive['url']}" in out


def test_spark_chain_on_yarn_equals_local_mode(readme_run, spark, webhdfs, hdfs_raw, local_chain):
    assert_same_chain(read_parquet_chain(spark, webhdfs, hdfs_raw), local_chain)


def test_yarn_executors_ran_the_packed_env(readme_run, yarn):
    out = next(p.stdout for line, p in readme_run.items() if "env-check" in line)
    workers = [json.loads(x.split(": ", 1)[1]) for x in out.splitlines() if x.startswith("env-check worker: ")]
    driver = next(json.loads(x.split(": ", 1)[1]) for x in out.splitlines() if x.startswith("env-check driver: "))
    assert "env-check: ok:" in out
    # YARN containers: <local dir>/usercache/<user>/appcache/<app>/<container>/
    assert_packed_env(workers, driver["prefix"], 2, "/appcache/application_")
    for w in workers:
        assert w["cwd"].startswith(str(yarn.base / "local")), w
        # the archive itself sits once in the NodeManager's public cache
        assert w["prefix_realpath"].startswith(str(yarn.base / "local" / "filecache")), w


def test_nodemanager_set_the_public_cache_permissions_through_nio(readme_run, yarn):
    """The NodeManager's own conf names NioLocalFs (the clients' does not):
    the localised environment has the public cache's modes, r-xr-xr-x for
    files and rwxr-xr-x for directories, set without a process per file
    (tests/test_nio_local_fs.py)."""
    from infra.yarn import NIO_LOCAL_FS

    assert NIO_LOCAL_FS in (yarn.nm_conf_dir / "yarn-site.xml").read_text()
    assert NIO_LOCAL_FS not in (yarn.conf_dir / "yarn-site.xml").read_text()
    out = next(p.stdout for line, p in readme_run.items() if "env-check" in line)
    worker = next(json.loads(x.split(": ", 1)[1]) for x in out.splitlines() if x.startswith("env-check worker: "))
    cache = yarn.base / "local" / "filecache"
    rel = Path(worker["prefix_realpath"]).relative_to(cache)
    root = cache / rel.parts[0] / rel.parts[1]  # filecache/<n>/<archive name>/
    modes: dict[str, set[int]] = {"file": set(), "dir": set()}
    files = 0
    for base, _dirs, names in os.walk(root):
        modes["dir"].add(stat.S_IMODE(os.lstat(base).st_mode))
        for name in names:
            st = os.lstat(os.path.join(base, name))
            if stat.S_ISREG(st.st_mode):
                modes["file"].add(stat.S_IMODE(st.st_mode))
                files += 1
    assert files > 10_000, (root, files)
    assert modes == {"file": {0o555}, "dir": {0o755}}, (root, modes)


def test_mrjob_chain_on_yarn_equals_local_mode(readme_run, webhdfs, hdfs_raw, local_chain, yarn):
    records, rejects = split_rows(jsonl(read_hdfs_dir(webhdfs, f"{hdfs_raw}/mr/records")))
    stats: dict[str, list] = {}
    for line in read_hdfs_dir(webhdfs, f"{hdfs_raw}/mr/stats").splitlines():
        table, row = line.split(b"\t", 1)
        stats.setdefault(json.loads(table), []).append(json.loads(row))
    got = {
        "records": records,
        "rejects": rejects,
        "scored": jsonl(read_hdfs_dir(webhdfs, f"{hdfs_raw}/mr/scored")),
        "stats": stats,
    }
    assert_same_chain(got, local_chain)
    # map and reduce tasks ran in their own containers, on the packed env
    probes = task_probes(yarn)
    assert len({p["app"] for p in probes}) >= 3 and len(probes) >= 6, probes
    for p in probes:
        assert p["cwd"].endswith("/" + p["container"]), p
        assert p["prefix"] == p["cwd"] + "/environment", p
        assert p["torch"].startswith(p["cwd"] + "/environment/lib/python3.11/site-packages/torch/"), p
        assert_packed_sdks(p["sdks"], p["cwd"])
        assert not p["prefix"].startswith(str(ROOT)), p
