"""Batch mode after a kill -9 of the driver: during the upload, after the batch
was created, while polling, and while downloading results (the driver kills
itself with SIGKILL at that point, through the documented hook
AIBATCH_ENRICH_BATCH_KILL_AT, placed where a crash hurts most: after the
provider acted, before the ledger recorded it). The same command again then
finishes; the gateway's batch ledger shows no line submitted twice and no
online call; the output equals an uninterrupted run's. The twin's launcher is
the driver (./submit.sh mr enrich), run as a subprocess. On Spark the whole
./submit.sh process group (spark-submit's JVM, the Python driver, its workers)
is killed from outside while the driver polls, and the Python driver kills
itself right after its first create."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from udfs.enrich.assets import load_assets
from udfs.enrich.batch_driver import BatchDriver
from udfs.enrich.batch_lines import request_lines
from udfs.enrich.batch_mode import KILL_AT_ENV, ledger_name, run_key
from udfs.enrich.result import RESULT_FIELDS, RUN_VARYING_FIELDS
from udfs.enrich.settings import EnrichConfig
from udfs.enrich.store import open_store

from .support import (
    CANARY,
    ROOT,
    comparable,
    enrich_settings,
    read_jsonl_dir,
    read_parquet_dir,
    run_twin,
    scored_rows,
    start_gateway,
    submit_env,
    write_config,
    write_jsonl,
    write_parquet,
)

pytestmark = pytest.mark.slow

ROWS = scored_rows(24)
SELECTED = sorted(r["id"] for r in ROWS if r["predicted"] == "negative")
COMPARED = tuple(f for f in RESULT_FIELDS if f not in RUN_VARYING_FIELDS)
FAST = {"validating_seconds": 0.05, "processing_seconds": 0.5, "finalizing_seconds": 0.05}
SLOW = {**FAST, "processing_seconds": 10.0}  # the Spark case: long enough to be killed while polling
POLL = {"poll_interval_s": 0.05, "poll_backoff": 1.5, "poll_max_s": 0.3}
CASES = [
    ("openai", "upload"),
    ("openai", "created"),
    ("openai", "polling"),
    ("openai", "download"),
    ("anthropic", "created"),  # Anthropic has no upload (the lines go in the create's body); its
    ("anthropic", "download"),  # polling is the driver's, as OpenAI's
]


def key_of(provider: str, stage: str) -> str:
    return f"{provider}-{stage}"


@pytest.fixture(scope="module")
def gateway():
    keys = {key_of(p, s): {"batches": FAST} for p, s in CASES}
    keys.update({f"{p}-baseline": {"batches": FAST} for p in ("openai", "anthropic")})
    keys["spark-polling"] = {"batches": SLOW}
    keys["spark-created"] = {"batches": FAST}
    keys.update({f"anthropic-adopt-{way}": {"batches": FAST} for way in ("behind", "ahead")})
    with start_gateway(keys) as gw:
        yield gw


def admin(gw, key: str, ledger: str) -> dict:
    reply = httpx.get(f"{gw.base_url}/v1/admin/keys/{key}/{ledger}", headers={"x-api-key": gw.keys["admin"]})
    reply.raise_for_status()
    return reply.json()


CAPTURE = {"capture_output": True, "text": True, "timeout": 600}


def batches_of(gw, key: str) -> list[dict]:
    """The key's OpenAI batches at the gateway."""
    headers = {"Authorization": f"Bearer {gw.keys[key]}"}
    reply = httpx.get(f"{gw.base_url}/v1/batches", params={"limit": 100}, headers=headers)
    reply.raise_for_status()
    return reply.json()["data"]


def command(gw, tmp, key: str, provider: str) -> list[str]:
    # max_lines 5: several batches, so a kill leaves some created and some not
    settings = enrich_settings(gw, key, tmp / "store", provider, mode="batch", batch={**POLL, "max_lines": 5})
    cfg = write_config(tmp / "c.toml", settings)
    return ["--config", str(cfg), write_jsonl(ROWS, tmp / "scored.jsonl"), "--output-dir", str(tmp / "out")]


@pytest.fixture(scope="module")
def baselines(gateway, tmp_path_factory) -> dict[str, dict]:
    out = {}
    for provider in ("openai", "anthropic"):
        tmp = tmp_path_factory.mktemp(f"baseline-{provider}")
        key = f"{provider}-baseline"
        done = run_twin("inline", command(gateway, tmp, key, provider), submit_env(gateway, key))
        assert done.returncode == 0, done.stderr[-3000:]
        out[provider] = comparable(read_jsonl_dir(tmp / "out"), COMPARED)
    return out


@pytest.mark.parametrize(("provider", "stage"), CASES, ids=[key_of(p, s) for p, s in CASES])
def test_kill_and_rerun_submits_no_line_twice(gateway, baselines, tmp_path, provider, stage):
    key = key_of(provider, stage)
    args = command(gateway, tmp_path, key, provider)
    killed = run_twin("inline", args, submit_env(gateway, key, **{KILL_AT_ENV: stage}))
    assert killed.returncode != 0 and not (tmp_path / "out").exists()  # nothing committed
    assert "exited with status -9" in killed.stderr  # SIGKILL, not some other failure
    before = admin(gateway, key, "batch_lines")
    if stage in ("upload", "created"):  # killed at the first batch: the others were never made
        assert before["admitted"] < len(SELECTED), before

    rerun = run_twin("inline", args, submit_env(gateway, key))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = read_jsonl_dir(tmp_path / "out")
    assert comparable(rows, COMPARED) == baselines[provider]
    assert all(r["status"] == "enriched" for r in rows)
    lines = admin(gateway, key, "batch_lines")
    assert lines["repeated"] == 0 and lines["admitted"] == len(SELECTED) == lines["succeeded"]
    assert admin(gateway, key, "prompts")["admitted"] == 0  # nothing went online
    for text in (killed.stdout, killed.stderr, rerun.stdout, rerun.stderr):
        assert CANARY not in text


def test_spark_driver_killed_while_polling_then_rerun(gateway, baselines, tmp_path):
    """kill -9 of ./submit.sh's process group once the driver polls its batches (every line
    submitted, a progress line printed), then the same command: no line twice, no online call,
    the output the uninterrupted run's (the twin's: batch mode gives both engines the same rows)."""
    key = "spark-polling"
    settings = enrich_settings(gateway, key, tmp_path / "store", mode="batch", batch={**POLL, "max_lines": 5})
    cfg = write_config(tmp_path / "c.toml", settings)
    out = tmp_path / "out"
    scored = write_parquet(ROWS, tmp_path / "scored")
    cmd = [str(ROOT / "submit.sh"), "--master", "local[2]", "--config", str(cfg), "enrich"]
    cmd += ["--input", scored, "--output", str(out), "--tasks", "2"]
    env = submit_env(gateway, key)
    # Files, not pipes: a pipe nobody reads until the kill could fill and stall the job.
    out_file, err_file = tmp_path / "killed.out", tmp_path / "killed.err"
    with open(out_file, "w") as so, open(err_file, "w") as se:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=so, stderr=se, start_new_session=True)

    def printed() -> str:  # spark-submit passes the Python driver's stderr (the progress line) to its stdout
        return out_file.read_text() + err_file.read_text()

    try:
        deadline = time.monotonic() + 300
        while admin(gateway, key, "batch_lines")["admitted"] < len(SELECTED) or "enrich batch:" not in printed():
            assert job.poll() is None, f"the job ended before it could be killed: {printed()[-3000:]}"
            assert time.monotonic() < deadline, f"not polling after 300 s: {printed()[-3000:]}"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group: bash, the JVM, Python driver and workers
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    assert job.returncode != 0 and not out.exists()  # nothing committed
    before = admin(gateway, key, "batch_lines")
    assert before["admitted"] == len(SELECTED) and before["succeeded"] < len(SELECTED), before  # still processing

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = read_parquet_dir(out)
    assert comparable(rows, COMPARED) == baselines["openai"]
    assert all(r["status"] == "enriched" for r in rows) and read_parquet_dir(str(out) + "_dead_letters") == []
    lines = admin(gateway, key, "batch_lines")
    assert lines["repeated"] == 0 and lines["admitted"] == len(SELECTED) == lines["succeeded"], lines
    assert admin(gateway, key, "prompts")["admitted"] == 0  # nothing went online
    assert "0 batch(es) created" in rerun.stdout  # the rerun adopted the killed run's batches
    for text in (printed(), rerun.stdout, rerun.stderr):
        assert CANARY not in text


def test_spark_driver_killed_after_a_create_then_rerun(gateway, baselines, tmp_path):
    """The Spark job's Python driver kills itself (the hook) right after its first batch is
    created, before the ledger has its id; the same command then adopts that batch (by the
    run's key and entry name in its metadata) and creates only the others: no line twice, no
    online call, the uninterrupted run's output. (The upload and download points are the
    shared driver's, killed on the twin above; a Spark launch costs about a minute here.)"""
    key = "spark-created"
    settings = enrich_settings(gateway, key, tmp_path / "store", mode="batch", batch={**POLL, "max_lines": 5})
    cfg = write_config(tmp_path / "c.toml", settings)
    out = tmp_path / "out"
    cmd = [str(ROOT / "submit.sh"), "--master", "local[2]", "--config", str(cfg), "enrich"]
    cmd += ["--input", write_parquet(ROWS, tmp_path / "scored"), "--output", str(out), "--tasks", "2"]

    killed = subprocess.run(cmd, cwd=ROOT, env=submit_env(gateway, key, **{KILL_AT_ENV: "created"}), **CAPTURE)
    assert killed.returncode != 0 and not out.exists(), killed.stderr[-3000:]  # killed, nothing committed
    first = batches_of(gateway, key)
    assert len(first) == 1 and admin(gateway, key, "batch_lines")["admitted"] == 5

    rerun = subprocess.run(cmd, cwd=ROOT, env=submit_env(gateway, key), **CAPTURE)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    batches = -(-len(SELECTED) // 5)
    assert f"{batches - 1} batch(es) created" in rerun.stdout  # the killed run's batch adopted
    assert first[0]["id"] in {b["id"] for b in batches_of(gateway, key)}
    rows = read_parquet_dir(out)
    assert comparable(rows, COMPARED) == baselines["openai"] and read_parquet_dir(str(out) + "_dead_letters") == []
    lines = admin(gateway, key, "batch_lines")
    assert lines["repeated"] == 0 and lines["admitted"] == len(SELECTED) == lines["succeeded"], lines
    assert admin(gateway, key, "prompts")["admitted"] == 0  # nothing went online
    for text in (killed.stdout, killed.stderr, rerun.stdout, rerun.stderr):
        assert CANARY not in text


class Crash(Exception):
    """Stands for the kill -9 of an in-process driver: raised by its stage hook, so nothing after runs."""


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0], ids=["clock-behind", "clock-ahead"])
def test_anthropic_batch_is_adopted_by_the_ledgers_mark_not_by_clocks(gateway, tmp_path, skew_s):
    """Anthropic batches carry no metadata. With the driver's clock an hour off the provider's
    (either way) and another client's batch of the same size made just before, a driver that
    dies right after its create is followed by one that adopts that batch, not the other
    client's, and submits no line twice."""
    key = "anthropic-adopt-" + ("behind" if skew_s < 0 else "ahead")
    settings = enrich_settings(gateway, key, tmp_path / "store", "anthropic", mode="batch", batch=POLL)
    cfg = EnrichConfig.model_validate(settings)
    assets = load_assets(cfg)
    lines = list(request_lines([r for r in ROWS if r["id"] in SELECTED], cfg, assets))
    api_key = gateway.keys[key]
    others = [{"custom_id": f"other-{n}", "params": json.loads(line)["params"]} for n, (_, line, _) in enumerate(lines)]
    headers = {"x-api-key": api_key, "anthropic-version": cfg.provider.anthropic_version}
    httpx.post(f"{gateway.base_url}/v1/messages/batches", json={"requests": others}, headers=headers).raise_for_status()
    store = open_store(cfg.store)
    ledger, run = ledger_name(cfg, api_key), run_key(cfg, str(tmp_path / "out"))

    def driver(work: str, stage: str | None) -> BatchDriver:
        def hook(at: str) -> None:
            if at == stage:
                raise Crash

        clock = lambda: time.time() + skew_s  # noqa: E731
        return BatchDriver(cfg, assets, api_key, store, ledger, run, tmp_path / work, lambda _: None, hook, clock)

    try:
        with pytest.raises(Crash):
            driver("first", "created").run(lines)
        report = driver("rerun", None).run(lines)
    finally:
        store.close()
    assert report.batches_created == 0 and report.answered == len(lines)  # adopted, not created again
    got = admin(gateway, key, "batch_lines")
    assert got["repeated"] == 0 and got["admitted"] == got["succeeded"] == 2 * len(lines), got
