"""Kill and resume: `kill -9` of the Spark driver mid-run, and separately of
one Python worker, then the same ./submit.sh command again. The rerun
finishes; its output equals an uninterrupted run's (ignoring latency, request
ids, attempts and `cached` by name); no output was committed by the killed
run; and the gateway's per-key prompt hashes show no second call for any row
whose answer was in the job's cache when it was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gateway.prompts import prompt_hash as gateway_hash
from jobs.spark import common, enrich
from udfs.config import load_config
from udfs.enrich.assets import load_assets, prepared_text, prompt_hash, request_params
from udfs.enrich.prompts import render
from udfs.enrich.result import RESULT_FIELDS, RUN_VARYING_FIELDS
from udfs.enrich.store_sqlite import SqliteStore

from .support import (
    CANARY,
    ROOT,
    comparable,
    enrich_settings,
    read_parquet_dir,
    scored_rows,
    start_gateway,
    submit_env,
    write_config,
    write_parquet,
)

pytestmark = pytest.mark.slow

ROWS = scored_rows(200)
SELECTED = sorted(r["id"] for r in ROWS if r["predicted"] == "negative")
COMPARED = tuple(f for f in RESULT_FIELDS if f not in RUN_VARYING_FIELDS)
# 10 requests a second for ~100 selected rows: a run of about 10 s to kill in.
LIMITS = {"algorithm": "sliding_window", "window_seconds": 1, "requests": 10, "concurrent": 8}
CLIENT_LIMITS = {"requests_per_minute": 10, "window_seconds": 1, "max_concurrency": 4}
KILL_AFTER = 30  # admitted prompts


@pytest.fixture(scope="module")
def gateway():
    keys = {name: {"limits": LIMITS} for name in ("baseline", "driver", "worker")}
    with start_gateway(keys) as gw:
        yield gw


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> str:
    return write_parquet(ROWS, tmp_path_factory.mktemp("resume") / "scored")


@pytest.fixture(scope="module")
def baseline(spark, gateway, scored, tmp_path_factory) -> dict:
    """The uninterrupted run (same settings, its own key and store)."""
    tmp = tmp_path_factory.mktemp("baseline")
    cfg = write_config(tmp / "c.toml", enrich_settings(gateway, "baseline", tmp / "store", limits=CLIENT_LIMITS))
    os.environ[gateway.env_name("baseline")] = gateway.keys["baseline"]
    try:
        common.run_main(
            enrich.main,
            spark,
            enrich.parser().parse_args(["--config", str(cfg), "--input", scored, "--output", str(tmp / "out")]),
        )
    finally:
        del os.environ[gateway.env_name("baseline")]
    return comparable(read_parquet_dir(tmp / "out"), COMPARED)


def prompts(gw, key: str) -> dict[str, int]:
    reply = httpx.get(f"{gw.base_url}/v1/admin/keys/{key}/prompts", headers={"x-api-key": gw.keys["admin"]})
    reply.raise_for_status()
    return reply.json()["prompts"]


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def python_driver(jvm: int) -> int | None:
    return next((p for p in descendants(jvm) if "jobs/spark/enrich.py" in cmdline(p)), None)


def python_worker(jvm: int) -> int | None:
    """A forked worker of pyspark.daemon (not the daemon itself)."""
    for p in descendants(jvm):
        if "pyspark.daemon" in cmdline(p) and any("pyspark.daemon" in cmdline(c) for c in [p]):
            parent = int(Path(f"/proc/{p}/stat").read_text().split(") ")[1].split()[1])
            if "pyspark.daemon" in cmdline(parent):
                return p
    return None


def answered_in_store(cfg_path: Path, rows: list[dict]) -> set[str]:
    """Ids of the rows whose answer is in the job's cache (the core's key)."""
    ecfg = load_config(cfg_path).enrich
    assets = load_assets(ecfg)
    params = request_params(ecfg, assets)
    store = SqliteStore(ecfg.store.path)
    try:
        return {
            r["id"]
            for r in rows
            if store.get_answer(
                prompt_hash(
                    ecfg.provider.kind,
                    ecfg.provider.model,
                    assets.template.id,
                    params,
                    prepared_text(assets.template, r),
                )
            )
            is not None
        }
    finally:
        store.close()


def gateway_hashes(cfg_path: Path, rows: list[dict]) -> dict[str, str]:
    """Row id -> the hash the gateway records for its prompt."""
    ecfg = load_config(cfg_path).enrich
    assets = load_assets(ecfg)
    p = ecfg.provider
    return {
        r["id"]: gateway_hash(
            p.model, assets.template.system, [("user", render(assets.template, r))], p.max_tokens, p.temperature
        )
        for r in rows
    }


def kill_mid_run(gateway, key: str, cfg: Path, scored: str, out: Path, find) -> tuple:
    env = submit_env(gateway, key)
    cmd = [
        str(ROOT / "submit.sh"),
        "--master",
        "local[2]",
        "--config",
        str(cfg),
        "enrich",
        "--input",
        scored,
        "--output",
        str(out),
        "--tasks",
        "2",
    ]
    # Files, not pipes: a pipe nobody reads until the kill could fill and stall the job.
    stdout_file, stderr_file = out.parent / "killed.out", out.parent / "killed.err"
    with open(stdout_file, "w") as so, open(stderr_file, "w") as se:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=so, stderr=se, text=True)
    deadline = time.monotonic() + 400
    victim = None
    while victim is None:
        assert job.poll() is None, f"the job ended before it could be killed: {stderr_file.read_text()[-2000:]}"
        if time.monotonic() > deadline:
            job.kill()
            raise AssertionError(f"no {KILL_AFTER} calls in 400 s: {stderr_file.read_text()[-3000:]}")
        if sum(prompts(gateway, key).values()) >= KILL_AFTER:
            victim = find(job.pid)
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    job.wait(timeout=120)
    stdout, stderr = stdout_file.read_text(), stderr_file.read_text()
    assert job.returncode != 0  # the killed run failed
    # let calls that were in flight at the kill settle on the server
    deadline = time.monotonic() + 30
    while gateway.key_usage(key)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return subprocess.CompletedProcess(cmd, job.returncode, stdout, stderr), cmd, env


@pytest.mark.parametrize("victim", ["driver", "worker"])
def test_kill_and_rerun(spark, gateway, scored, baseline, tmp_path, victim):
    cfg = write_config(tmp_path / "c.toml", enrich_settings(gateway, victim, tmp_path / "store", limits=CLIENT_LIMITS))
    out = tmp_path / "out"
    find = python_driver if victim == "driver" else python_worker
    killed, cmd, env = kill_mid_run(gateway, victim, cfg, scored, out, find)
    assert not out.exists()  # nothing committed by the failed run

    answered = answered_in_store(cfg, ROWS)
    before = prompts(gateway, victim)
    assert 0 < len(answered) < len(SELECTED)  # the kill came mid-run

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert comparable(read_parquet_dir(out), COMPARED) == baseline
    assert read_parquet_dir(str(out) + "_dead_letters") == []

    after = prompts(gateway, victim)
    hashes = gateway_hashes(cfg, [r for r in ROWS if r["id"] in SELECTED])
    assert set(after) == set(hashes.values())  # the hashes we compute are the server's
    for rid in answered:
        assert after[hashes[rid]] == before[hashes[rid]] == 1, rid  # no second call
    hits = int(rerun.stdout.split("cache hits ")[1].split(",")[0])
    assert hits >= len(answered)
    for text in (killed.stdout, killed.stderr, rerun.stdout, rerun.stderr):
        assert CANARY not in text
