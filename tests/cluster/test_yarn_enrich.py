"""The enrich job on the local YARN with the packed environment, against the
real gateway on loopback: the Spark job (executors in containers, OpenAI
format) and the twin (`mr enrich -r hadoop`, map tasks in containers,
Anthropic format, streaming). Each enriches exactly the selected rows, and
the key is in no output, log or job file left behind: YARN containers do not
inherit the client's environment, so the twin ships the key as an owner-only
file (docs/enrichment.md). Once the packed environment lacked the providers'
SDKs, and the twin's tasks had no key."""

from __future__ import annotations

import json

import pytest

from tests.enrich.support import enrich_settings, scored_rows, start_gateway, submit_env, write_config, write_parquet

from .conftest import ROOT, read_parquet_dir, submit

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1800)]

ROWS = scored_rows(30)
SELECTED = sorted(r["id"] for r in ROWS if r["predicted"] == "negative")


@pytest.fixture(scope="module")
def gateway():
    with start_gateway({"plain": {}}) as gw:
        yield gw


def assert_key_nowhere(secret: str, proc, yarn, webhdfs, user: str, log_glob: str) -> None:
    """Not in what the command printed, its log, the YARN daemons' and
    containers' logs and dirs (the localised key file itself and the links
    to it excepted), nor left in mrjob's HDFS scratch."""
    assert secret not in proc.stdout + proc.stderr
    logs = [*sorted((ROOT / "var" / "log").glob(log_glob))[-1:], *yarn.base.rglob("*")]
    leaked = [
        str(f)
        for f in logs
        if f.is_file() and not f.is_symlink() and "filecache" not in f.parts and secret.encode() in f.read_bytes()
    ]
    assert not leaked, leaked
    scratch = f"/user/{user}/tmp/mrjob"
    if webhdfs.status(scratch, strict=False):
        left = [f"{d}/{f}" for d, _, files in webhdfs.walk(scratch) for f in files if "api_key" in f]
        assert not left, left


def test_spark_enrich_on_yarn(yarn, env_archive, hdfs, webhdfs, spark, gateway, tmp_path):
    base = f"/user/{hdfs.user}/tests/yarn-enrich-spark"
    webhdfs.upload(f"{base}/scored", write_parquet(ROWS, tmp_path / "scored"))
    cfg = write_config(tmp_path / "c.toml", enrich_settings(gateway, "plain", tmp_path / "store", "openai"))
    env = {**submit_env(gateway, "plain"), **yarn.env(), "AIBATCH_ENV_ARCHIVE": env_archive["url"]}
    proc = submit(
        "--master", "yarn", "--config", str(cfg), "enrich",
        "--input", f"{hdfs.hdfs_url}{base}/scored", "--output", f"{hdfs.hdfs_url}{base}/enriched", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert f"enrich: rows in 30 = enriched {len(SELECTED)} + dead-lettered 0 + not selected" in proc.stdout
    out = read_parquet_dir(spark, f"{hdfs.hdfs_url}{base}/enriched")
    assert sorted(r["id"] for r in out) == SELECTED
    assert all(r["status"] == "enriched" and r["provider"] == "openai" for r in out), out[:2]
    assert_key_nowhere(gateway.keys["plain"], proc, yarn, webhdfs, hdfs.user, "enrich-*.log")


def test_mr_enrich_on_yarn(yarn, env_archive, hdfs, webhdfs, gateway, tmp_path):
    base = f"/user/{hdfs.user}/tests/yarn-enrich-mr"
    local = tmp_path / "scored.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    webhdfs.upload(f"{base}/scored/part-00000", str(local))
    settings = enrich_settings(gateway, "plain", tmp_path / "store", "anthropic", stream=True)
    cfg = write_config(tmp_path / "c.toml", settings)
    env = {**submit_env(gateway, "plain"), **yarn.env(), "AIBATCH_ENV_ARCHIVE": env_archive["url"]}
    proc = submit(
        "mr", "enrich", "-r", "hadoop", "--config", str(cfg),
        f"{hdfs.hdfs_url}{base}/scored", "--output-dir", f"{hdfs.hdfs_url}{base}/enriched", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rows = []
    for name in sorted(n for n in webhdfs.list(f"{base}/enriched") if n.startswith("part-")):
        with webhdfs.read(f"{base}/enriched/{name}") as fh:
            rows += [json.loads(line) for line in fh.read().splitlines() if line.strip()]
    assert sorted(r["id"] for r in rows) == SELECTED
    assert all(r["status"] == "enriched" and r["provider"] == "anthropic" for r in rows), rows[:2]
    assert_key_nowhere(gateway.keys["plain"], proc, yarn, webhdfs, hdfs.user, "mr-enrich-*.log")
