"""enrich.mode = "batch" against the real gateway's Batch APIs (spans of a
fraction of a second): the same outputs as online mode on the same rows
(deterministic backend) on Spark and on the twin, no online call made, no
batch line submitted twice; errored lines retried and then dead-lettered with
their reason (fallback "none"); expired lines retried and then answered online
(fallback "online"); --retry-dead-letters gives batch mode's dead letters new
batches; batches cut and held under the enqueued-token queue, and a create the
queue still refuses waits instead of failing; --dry-run shows both costs and the
batches; --cancel cancels the run's batches and no other run's on the same key
and store."""

from __future__ import annotations

import httpx
import pytest

from jobs.mapreduce import mr_enrich_rows
from jobs.spark import common, enrich
from udfs.config import load_config
from udfs.enrich.assets import load_assets, prompt_of, request_params
from udfs.enrich.batch_mode import KILL_AT_ENV, run_key
from udfs.enrich.result import RESULT_FIELDS, RUN_VARYING_FIELDS
from udfs.enrich.settings import EnrichConfig

from .support import (
    comparable,
    enrich_settings,
    read_parquet_dir,
    read_twin_outputs,
    run_twin,
    scored_rows,
    start_gateway,
    submit_env,
    write_config,
    write_jsonl,
    write_parquet,
)

ROWS = scored_rows(30)
SELECTED = sorted(r["id"] for r in ROWS if r["predicted"] == "negative")
COMPARED = tuple(f for f in RESULT_FIELDS if f not in RUN_VARYING_FIELDS)
FAST = {"validating_seconds": 0.05, "processing_seconds": 0.3, "finalizing_seconds": 0.05}
POLL = {"poll_interval_s": 0.05, "poll_backoff": 1.5, "poll_max_s": 0.3}
QUEUE_KEYS = ("spark", "openai", "anthropic")


@pytest.fixture(scope="module")
def gateway():
    keys = {
        "online": {},
        "spark": {"batches": FAST},
        "twin": {"batches": FAST},
        "anthropic": {"batches": FAST},
        "anthropic-online": {},
        "flaky": {"batches": {**FAST, "line_error_rate": 0.4, "seed": 5}},
        "expiring": {"batches": {"validating_seconds": 0, "processing_seconds": 3.0, "completion_window_seconds": 0.4}},
        "dry": {"batches": FAST},
        "cancel": {"batches": {**FAST, "processing_seconds": 30.0}},
        "two-runs": {"batches": {**FAST, "processing_seconds": 60.0}},
        **{k: {"batches": {**FAST, "line_error_rate": 0.5, "seed": 3}} for k in ("flaky-retry", "flaky-retry-twin")},
        # A queue of 450 input tokens holds one batch of 2 lines (at most 358 real ones) and never
        # two (at least 608): a batch created while another runs is refused.
        **{f"queue-{name}": {"batches": {**FAST, "enqueued_tokens": 450}} for name in QUEUE_KEYS},
    }
    with start_gateway(keys) as gw:
        yield gw


def batch_settings(gw, key, store, provider="openai", **extra):
    batch = {**POLL, **extra.pop("batch", {})}
    return enrich_settings(gw, key, store, provider, mode="batch", batch=batch, **extra)


def admin(gw, key: str, ledger: str) -> dict:
    reply = httpx.get(f"{gw.base_url}/v1/admin/keys/{key}/{ledger}", headers={"x-api-key": gw.keys["admin"]})
    reply.raise_for_status()
    return reply.json()


def spark_run(spark, gw, tmp, key, settings, monkeypatch, extra=()):
    monkeypatch.setenv(gw.env_name(key), gw.keys[key])
    cfg = write_config(tmp / f"{key}.toml", settings)
    src = write_parquet(ROWS, tmp / "scored")
    out = tmp / f"{key}-out"
    args = ["--config", str(cfg), "--input", src, "--output", str(out), *extra]
    summary = common.run_main(enrich.main, spark, enrich.parser().parse_args(args))
    return summary, read_parquet_dir(out), read_parquet_dir(str(out) + "_dead_letters")


def twin_run(gw, tmp, key, settings, monkeypatch, capsys, extra=()):
    monkeypatch.setenv(gw.env_name(key), gw.keys[key])
    cfg = write_config(tmp / f"{key}-twin.toml", settings)
    src = write_jsonl(ROWS, tmp / "scored.jsonl")
    out = tmp / f"{key}-twin-out"
    args = ["-r", "inline", "--no-conf", "--config", str(cfg), src, *extra]
    if "--dry-run" not in extra and "--cancel" not in extra:
        args += ["--output-dir", str(out)]
    assert mr_enrich_rows.main(args) == 0
    printed = capsys.readouterr()
    rows, dead = read_twin_outputs(out) if out.exists() else ([], [])
    return printed, rows, dead


def custom_ids(settings: dict) -> dict[str, str]:
    """Selected row id -> the custom_id of its request line (its prompt's cache key)."""
    cfg = EnrichConfig.model_validate(settings)
    assets = load_assets(cfg)
    params = request_params(cfg, assets)
    return {r["id"]: prompt_of(cfg, assets, params, r)[0] for r in ROWS if r["id"] in SELECTED}


def list_batches(gw, key: str) -> list[dict]:
    reply = httpx.get(
        f"{gw.base_url}/v1/batches", params={"limit": 100}, headers={"Authorization": f"Bearer {gw.keys[key]}"}
    )
    reply.raise_for_status()
    return reply.json()["data"]


@pytest.fixture(scope="module")
def online(spark, gateway, tmp_path_factory) -> dict[str, dict]:
    """Online mode's answers on Spark, to compare batch mode's with."""
    tmp = tmp_path_factory.mktemp("online")
    with pytest.MonkeyPatch.context() as mp:
        _, rows, dead = spark_run(spark, gateway, tmp, "online", enrich_settings(gateway, "online", tmp / "s"), mp)
    assert dead == [] and sorted(r["id"] for r in rows) == SELECTED
    return comparable(rows, COMPARED)


def test_batch_mode_equals_online_on_spark_and_the_twin(spark, gateway, online, tmp_path, monkeypatch, capsys):
    summary, spark_rows, spark_dead = spark_run(
        spark, gateway, tmp_path, "spark", batch_settings(gateway, "spark", tmp_path / "s1"), monkeypatch
    )
    printed, twin_rows, twin_dead = twin_run(
        gateway, tmp_path, "twin", batch_settings(gateway, "twin", tmp_path / "s2"), monkeypatch, capsys
    )
    assert spark_dead == twin_dead == []
    assert sorted(r["id"] for r in spark_rows) == SELECTED == sorted(r["id"] for r in twin_rows)
    assert comparable(spark_rows, COMPARED) == online == comparable(twin_rows, COMPARED)
    for key in ("spark", "twin"):
        lines = admin(gateway, key, "batch_lines")
        assert lines["admitted"] == lines["succeeded"] == len(SELECTED) and lines["repeated"] == 0, key
        assert admin(gateway, key, "prompts")["admitted"] == 0, key  # no online call
    n = len(SELECTED)
    assert summary["enriched"] == n and summary["calls"] == 0 and summary["cache_hits"] == n
    assert any(f"1 batch(es) created, {n} lines submitted, {n} answered" in line for line in summary["lines"])
    assert f"{n} lines submitted, {n} answered" in printed.out and "saved $" in printed.out
    assert "enrich batch: batches" in printed.err  # the progress line


def test_anthropic_batch_mode_equals_online(gateway, tmp_path, monkeypatch, capsys):
    _, online, _ = twin_run(
        gateway,
        tmp_path,
        "anthropic-online",
        enrich_settings(gateway, "anthropic-online", tmp_path / "s0", "anthropic"),
        monkeypatch,
        capsys,
    )
    _, batch, dead = twin_run(
        gateway,
        tmp_path,
        "anthropic",
        batch_settings(gateway, "anthropic", tmp_path / "s1", "anthropic"),
        monkeypatch,
        capsys,
    )
    assert dead == [] and comparable(batch, COMPARED) == comparable(online, COMPARED)
    assert len(batch) == len(SELECTED)
    assert admin(gateway, "anthropic", "batch_lines")["repeated"] == 0
    assert admin(gateway, "anthropic", "prompts")["admitted"] == 0


def test_errored_lines_are_retried_then_dead_lettered_with_their_reason(gateway, tmp_path, monkeypatch, capsys):
    settings = batch_settings(
        gateway, "flaky", tmp_path / "s", batch={"fallback": "none"}, retry={"max_attempts": 2, "base_delay_s": 0}
    )
    printed, rows, dead = twin_run(gateway, tmp_path, "flaky", settings, monkeypatch, capsys)
    assert sorted(r["id"] for r in rows + dead) == SELECTED
    assert rows and dead  # 40 % of lines errored in each batch: after 2 batches about 16 % are left
    for r in dead:
        assert r["error"].startswith("batch: HTTP 500") and r["error"].endswith("(after 2 batch(es))"), r["error"]
    lines = admin(gateway, "flaky", "batch_lines")
    assert lines["succeeded"] == len(rows) and lines["succeeded_repeated"] == 0
    assert all(n <= 2 for n in lines["custom_ids"].values())  # at most max_attempts batches per line
    assert admin(gateway, "flaky", "prompts")["admitted"] == 0  # fallback none: no online call
    assert f"dead-lettered {len(dead)}" in printed.out


def test_expired_lines_are_retried_then_answered_online(gateway, tmp_path, monkeypatch, capsys):
    settings = batch_settings(gateway, "expiring", tmp_path / "s", retry={"max_attempts": 2, "base_delay_s": 0})
    printed, rows, dead = twin_run(gateway, tmp_path, "expiring", settings, monkeypatch, capsys)
    assert dead == [] and sorted(r["id"] for r in rows) == SELECTED
    lines = admin(gateway, "expiring", "batch_lines")
    assert all(n <= 2 for n in lines["custom_ids"].values())
    online = admin(gateway, "expiring", "prompts")["admitted"]
    assert online == len(SELECTED) - lines["succeeded"] > 0  # the lines that expired twice went online


@pytest.mark.parametrize("engine", ["spark", "twin"])
def test_retry_dead_letters_gives_batch_dead_letters_new_batches(
    engine, gateway, online, tmp_path, monkeypatch, capsys, request
):
    """Half the lines error in each batch; with one batch attempt and no fallback they are dead
    letters. --retry-dead-letters (same output, same key and store) puts exactly those lines in a
    new batch: the gateway admits each of them once more and no answered line again. On Spark
    and on the twin (inline), each with its own key."""
    key = "flaky-retry" if engine == "spark" else "flaky-retry-twin"
    settings = batch_settings(gateway, key, tmp_path / "s", batch={"fallback": "none"}, retry={"max_attempts": 1})

    def run(extra=()):
        if engine == "spark":
            summary, rows, dead = spark_run(
                request.getfixturevalue("spark"), gateway, tmp_path, key, settings, monkeypatch, extra
            )
            return summary["lines"], rows, dead
        printed, rows, dead = twin_run(gateway, tmp_path, key, settings, monkeypatch, capsys, extra)
        return printed.out.splitlines(), rows, dead

    _, rows, dead = run()
    assert rows and dead and sorted(r["id"] for r in rows + dead) == SELECTED
    assert all(r["error"].startswith("batch: HTTP 500") for r in dead), dead[0]["error"]
    lines2, rows2, dead2 = run(["--retry-dead-letters"])
    assert sorted(r["id"] for r in rows2 + dead2) == SELECTED
    assert {r["id"] for r in dead2} < {r["id"] for r in dead}  # some recovered, none lost
    assert comparable(rows2, COMPARED) == {i: online[i] for i in online if i not in {r["id"] for r in dead2}}
    admitted, line_of = admin(gateway, key, "batch_lines")["custom_ids"], custom_ids(settings)
    assert {r["id"]: admitted[line_of[r["id"]]] for r in dead} == {r["id"]: 2 for r in dead}
    assert {admitted[line_of[r["id"]]] for r in rows} == {1}  # answered in the first run: never again
    assert any(f"{len(dead)} lines submitted" in line for line in lines2), lines2


def test_batches_are_cut_and_held_under_the_enqueued_token_queue(spark, gateway, online, tmp_path, monkeypatch):
    """max_enqueued_tokens 700: each line counts about 323 tokens (prompt estimate + max_tokens),
    so batches of 2, the next created only when the open one has ended; the gateway's queue
    would refuse one created beside another. Same answers as online, nothing twice."""
    key = "queue-spark"
    settings = batch_settings(gateway, key, tmp_path / "s", batch={"max_enqueued_tokens": 700})
    summary, rows, dead = spark_run(spark, gateway, tmp_path, key, settings, monkeypatch)
    assert dead == [] and comparable(rows, COMPARED) == online
    batches = list_batches(gateway, key)
    assert len(batches) == len(SELECTED) // 2 and {b["status"] for b in batches} == {"completed"}, batches
    lines = admin(gateway, key, "batch_lines")
    assert lines["repeated"] == 0 and lines["admitted"] == lines["succeeded"] == len(SELECTED)
    assert admin(gateway, key, "prompts")["admitted"] == 0
    assert not any("refused" in line for line in summary["lines"])


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_create_the_queue_refuses_waits_for_room(provider, gateway, online, tmp_path, monkeypatch, capsys):
    """Settings that promise a larger queue than the key has (the default 2,000,000 against the
    gateway's 450): the batches are created at once, the provider refuses all but one (OpenAI
    fails them with token_limit_exceeded, Anthropic answers 429); the driver waits for the open
    batch and creates them again. One batch attempt and no fallback: a refusal is no attempt."""
    key = f"queue-{provider}"
    settings = batch_settings(
        gateway, key, tmp_path / "s", provider, batch={"max_lines": 2, "fallback": "none"}, retry={"max_attempts": 1}
    )
    printed, rows, dead = twin_run(gateway, tmp_path, key, settings, monkeypatch, capsys)
    assert dead == [] and sorted(r["id"] for r in rows) == SELECTED
    if provider == "openai":
        assert comparable(rows, COMPARED) == online
        failed = [b for b in list_batches(gateway, key) if b["status"] == "failed"]
        assert failed and all(b["errors"]["data"][0]["code"] == "token_limit_exceeded" for b in failed)
    assert "refused for the enqueued-token queue" in printed.out
    lines = admin(gateway, key, "batch_lines")
    assert lines["repeated"] == 0 and lines["admitted"] == lines["succeeded"] == len(SELECTED)
    assert admin(gateway, key, "prompts")["admitted"] == 0


def test_dry_run_shows_both_costs_and_the_batches(gateway, tmp_path, monkeypatch, capsys):
    settings = batch_settings(gateway, "dry", tmp_path / "s", batch={"max_lines": 5})
    printed, _, _ = twin_run(gateway, tmp_path, "dry", settings, monkeypatch, capsys, ("--dry-run",))
    n = len(SELECTED)
    assert f"batch mode: {-(-n // 5)} batch(es) of {n} lines; cost at most $" in printed.out
    assert "at batch prices vs $" in printed.out
    assert admin(gateway, "dry", "batch_lines")["admitted"] == 0


def test_cancel_cancels_the_open_batches(gateway, tmp_path, monkeypatch, capsys):
    """A run killed while polling leaves its batch open; --cancel cancels it at the provider."""
    import threading

    settings = batch_settings(gateway, "cancel", tmp_path / "s", batch={"fallback": "none"}, retry={"max_attempts": 1})
    result: dict = {}

    def run() -> None:
        result["printed"] = twin_run(gateway, tmp_path, "cancel", settings, monkeypatch, capsys)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = __import__("time").monotonic() + 60
    while admin(gateway, "cancel", "batch_lines")["admitted"] == 0:
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.05)
    cancel_cfg = write_config(tmp_path / "cancel-cmd.toml", settings)
    args = [
        "-r",
        "inline",
        "--no-conf",
        "--config",
        str(cancel_cfg),
        write_jsonl(ROWS, tmp_path / "c.jsonl"),
        "--output-dir",
        str(tmp_path / "cancel-twin-out"),  # the run's output names the run whose batches are cancelled
        "--cancel",
    ]
    assert mr_enrich_rows.main(args) == 0
    worker.join(timeout=60)
    _, rows, dead = result["printed"]
    # the cancelled lines end as dead letters (fallback none, one attempt), named as such
    assert rows == [] and sorted(r["id"] for r in dead) == SELECTED
    assert all("canceled" in r["error"] or "cancelled" in r["error"] for r in dead), dead[0]["error"]


def test_cancel_leaves_another_runs_batches_alone(gateway, tmp_path):
    """Two runs (different outputs) on one key and store, each killed while polling so its batch
    stays open; --cancel of the first cancels its batch only: the second's runs on at the gateway."""
    key = "two-runs"
    cfg = write_config(tmp_path / "c.toml", batch_settings(gateway, key, tmp_path / "store"))
    src = write_jsonl(ROWS, tmp_path / "scored.jsonl")
    outs = {name: tmp_path / name for name in ("a", "b")}
    for out in outs.values():
        killed = run_twin(
            "inline",
            ["--config", str(cfg), src, "--output-dir", str(out)],
            submit_env(gateway, key, **{KILL_AT_ENV: "polling"}),
        )
        assert "exited with status -9" in killed.stderr, killed.stderr[-3000:]
    ecfg = load_config(cfg).enrich
    runs = {name: run_key(ecfg, str(out)) for name, out in outs.items()}

    def statuses() -> dict[str, list[str]]:
        reply = httpx.get(
            f"{gateway.base_url}/v1/batches",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {gateway.keys[key]}"},
        )
        reply.raise_for_status()
        got: dict[str, list[str]] = {name: [] for name in runs}
        for b in reply.json()["data"]:
            name = next(n for n, r in runs.items() if b["metadata"]["aibatch_run"] == r)  # our run key in metadata
            got[name].append(b["status"])
        return got

    before = statuses()
    assert len(before["a"]) == len(before["b"]) == 1 and "cancel" not in str(before), before
    done = run_twin(
        "inline", ["--config", str(cfg), src, "--output-dir", str(outs["a"]), "--cancel"], submit_env(gateway, key)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cancelled 1 batch(es)" in done.stdout and not outs["a"].exists()  # no output written or committed
    after = statuses()
    assert after["a"][0] in ("cancelling", "cancelled"), after
    assert after["b"][0] in ("validating", "in_progress"), after  # the other run's batch goes on


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_batch_ledger_on_both_stores(backend, tmp_path, request):
    from udfs.enrich.settings import StoreConfig
    from udfs.enrich.store import open_store

    if backend == "redis":
        cfg = StoreConfig(backend="redis", url=request.getfixturevalue("redis_url"))
    else:
        cfg = StoreConfig(path=str(tmp_path / "store.sqlite"))
    store = open_store(cfg)
    try:
        job = f"batches-{tmp_path.name}"
        assert store.ledger_read(job) == {}
        store.ledger_put(job, "b1", {"name": "b1", "state": "prepared", "lines": ["a", "b"]})
        store.ledger_put(job, "b1", {"name": "b1", "state": "submitted", "lines": ["a", "b"], "batch_id": "x"})
        store.ledger_put(job, "b2", {"name": "b2", "state": "prepared", "lines": ["c"]})
        got = store.ledger_read(job)
        assert got["b1"]["state"] == "submitted" and got["b1"]["batch_id"] == "x" and set(got) == {"b1", "b2"}
        assert store.ledger_read("another-job") == {}
    finally:
        store.close()
