"""Enrichment under provider limits: the enrich job (Spark, 2 tasks, one shared
budget) beside a naive client and the OpenAI cookbook's throttled client, on
the same workload against the same gateway limits, in one run.

Run with: .venv/bin/python bench/bench_enrich.py [--rows 2000 --window 20 --latency-ms 200]
          .venv/bin/python bench/bench_enrich.py --mode batch [--rows N --batch-span 60]

The gateway (python -m gateway, a free 127.0.0.1 port, generated config and
keys) limits each client's key to 600 requests and 60,000 tokens per window,
sliding window, with lognormal answer latency (median 200 ms). The window is
scaled down from 60 s (--window) so a run takes 1-2 minutes; every figure is
per window, so it reads as per minute at full scale. Each client has its own
key (same limits), so one's traffic never counts against another's.

Printed per client, from the gateway's own counters (GET /v1/admin/usage,
polled every 0.2 s during the run): admitted requests and tokens divided by
the time from the first to the last admitted request, as fractions of the
limits; 429s as a share of all requests answered; rows lost (selected rows
that did not end with a schema-valid answer); wall time.

- enrich: ./submit.sh --master local[2] enrich --tasks 2 (the real job).
- naive: 2 processes (like 2 tasks), each sending its half of the rows at
  full speed (32 requests in flight per process, no limiter) through the
  openai SDK with its default retries (2, honouring retry-after).
- cookbook: the OpenAI cookbook's api_request_parallel_processor.py logic
  (budgets at 75 % of the limits, capacity starting at a full minute's
  worth, refilled continuously, a 1 ms polling loop, 5 attempts a row, a
  15 s pause after a rate-limit error detected by error.code == '429'); its
  minute and its 15 s are scaled by window/60 like the limits.

--mode batch: the enrich job twice on the same rows, each on its own key with
the same limits: online (enrich.mode = "online"), then through the Batch API
(enrich.mode = "batch"; the gateway answers a batch's lines evenly over
--batch-span seconds, the scaled stand-in for the providers' "within 24 h").
Printed for both and as batch/online ratios: wall time, the span (online: first
to last admitted request; batch: the configured processing span), cost (the
job's own summary: estimated cost of online calls plus batch lines at batch
prices), online calls, batch lines and batches, 429s (must be 0), lines
submitted twice (must be 0) and lost rows (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.running import GatewayDidNotStart, GatewayProcess  # noqa: E402
from scripts.datasets import MOVIE_TSV, package_file  # noqa: E402
from scripts.toml_text import toml_text  # noqa: E402

CLIENTS = ("enrich", "naive", "cookbook")
BATCH_CLIENT = "batch"  # --mode batch: the enrich job in batch mode, on a key of its own
MODEL = "gpt-4o-mini"
TEMPLATE = "review_enrich@1"


def gateway_config(args: argparse.Namespace) -> str:
    doc = {
        "server": {"host": "127.0.0.1"},
        "limits": {
            "algorithm": "sliding_window",
            "window_seconds": args.window,
            "requests": args.requests_limit,
            "tokens": args.tokens_limit,
            "input_tokens": 10**9,
            "output_tokens": 10**9,
            "concurrent": args.concurrent_limit,
        },
        "latency": {"distribution": "lognormal", "median_ms": args.latency_ms, "sigma": 0.5, "seed": 5},
    }
    text = toml_text(doc)
    text += '\n[[keys]]\nname = "admin"\nenv = "BENCH_KEY_ADMIN"\nadmin = true\n'
    text += "[keys.limits]\nrequests = 100000000\ntokens = 1000000000\nconcurrent = 1024\n"
    for name in CLIENTS:
        text += f'\n[[keys]]\nname = "{name}"\nenv = "BENCH_KEY_{name.upper()}"\n'
    # The batch key: the same limits (the file's [limits]); its batches answer their lines over the span.
    text += f'\n[[keys]]\nname = "{BATCH_CLIENT}"\nenv = "BENCH_KEY_{BATCH_CLIENT.upper()}"\n'
    text += (
        f"[keys.batches]\nvalidating_seconds = 1.0\nprocessing_seconds = {args.batch_span}\nfinalizing_seconds = 1.0\n"
    )
    text += (
        '\n[[models]]\nid = "gpt-4o-mini-2024-07-18"\naliases = ["gpt-4o-mini"]\ndisplay_name = "GPT-4o mini"\n'
        'owned_by = "openai"\ncreated = 2024-07-18\ncontext_window = 128000\nmax_output_tokens = 16384\n'
    )
    return text


def workload(n: int) -> list[dict]:
    """n scored-like rows of real text (VADER's movie-review snippets)."""
    rows: list[dict] = []
    with open(package_file(MOVIE_TSV), encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            if len(rows) == n:
                break
            rid, rating, text = line.rstrip("\r\n").split("\t", 2)
            rows.append(
                {"id": f"movie-{rid}", "text": text, "predicted": "negative" if float(rating) < 0 else "positive"}
            )
    return rows


# ----- the server's view -----------------------------------------------------


class UsageWatcher:
    """Polls the admin endpoint; notes when a key's admitted count first
    rose above zero and when it last changed (0.2 s resolution)."""

    def __init__(self, base: str, admin_key: str, name: str, every: float = 0.2) -> None:
        self.base, self.admin_key, self.name, self.every = base, admin_key, name, every
        self.first: float | None = None
        self.last: float | None = None
        self.accepted = 0
        self.usage: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self, attempts: int = 6) -> dict:
        # A gateway busy answering thousands of calls on a loaded machine can
        # miss one admin poll's timeout: ask again rather than end the run.
        for attempt in range(attempts):
            try:
                reply = httpx.get(f"{self.base}/v1/admin/usage", headers={"x-api-key": self.admin_key}, timeout=10)
                return reply.json()["keys"][self.name]
            except httpx.TimeoutException:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            usage = self.read()
            accepted = sum(w["requests"] for w in usage["windows"])
            if accepted and self.first is None:
                self.first = now - self.every / 2
            if accepted != self.accepted:
                self.accepted, self.last = accepted, now - self.every / 2
            self._stop.wait(self.every)

    def __enter__(self) -> UsageWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.usage = self.read()


@dataclass
class Outcome:
    client: str
    wall_s: float
    rows: int
    answered: int
    usage: dict
    first: float | None
    last: float | None

    def figures(self, args: argparse.Namespace) -> dict:
        windows = self.usage["windows"]
        accepted = sum(w["requests"] for w in windows)
        tokens = sum(w["input_tokens"] + w["output_tokens"] for w in windows)
        refused = sum(w["rate_limited"] for w in windows)
        span = (self.last - self.first) if self.first is not None and self.last is not None else float("nan")
        per_window = args.window / span if span and span > 0 else float("nan")
        return {
            "req_frac": accepted * per_window / args.requests_limit,
            "tok_frac": tokens * per_window / args.tokens_limit,
            "share_429": refused / (accepted + refused) if accepted + refused else 0.0,
            "refused": refused,
            "accepted": accepted,
            "lost": self.rows - self.answered,
            "span": span,
        }


# ----- the same request for every client -------------------------------------


def request_body(row: dict, max_tokens: int) -> dict:
    from udfs.enrich.prompts import render

    template = _template()
    schema = json.loads((REPO / "conf" / "enrich_schema.json").read_text())
    messages = []
    if template.system:
        messages.append({"role": "system", "content": template.system})
    messages.append({"role": "user", "content": render(template, row)})
    return {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "enrichment", "schema": schema, "strict": True},
        },
    }


_TEMPLATE = None


def _template():
    global _TEMPLATE
    if _TEMPLATE is None:
        from udfs.enrich.prompts import load_template

        _TEMPLATE = load_template(REPO / "conf" / "prompts", TEMPLATE)
    return _TEMPLATE


def valid_answer(text: str | None) -> bool:
    from udfs.enrich.answers import AnswerError, load_schema, parse_answer

    if text is None:
        return False
    try:
        parse_answer(text, load_schema(REPO / "conf" / "enrich_schema.json"), 4000)
    except AnswerError:
        return False
    return True


# ----- naive: every task at full speed, SDK default retries ------------------


async def _naive_task(rows: list[dict], base: str, key: str, in_flight: int, max_tokens: int) -> int:
    import openai

    client = openai.AsyncOpenAI(api_key=key, base_url=base + "/v1")  # default max_retries=2
    gate = asyncio.Semaphore(in_flight)

    async def one(row: dict) -> bool:
        async with gate:
            try:
                reply = await client.chat.completions.create(**request_body(row, max_tokens))
            except openai.OpenAIError:
                return False
            return valid_answer(reply.choices[0].message.content)

    try:
        return sum(await asyncio.gather(*[one(r) for r in rows]))
    finally:
        await client.close()


def _naive_process(rows: list[dict], base: str, key: str, in_flight: int, max_tokens: int) -> int:
    return asyncio.run(_naive_task(rows, base, key, in_flight, max_tokens))


def run_naive(rows: list[dict], base: str, key: str, args: argparse.Namespace) -> int:
    halves = [rows[0::2], rows[1::2]]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        answered = pool.starmap(_naive_process, [(h, base, key, 32, args.max_tokens) for h in halves])
    return sum(answered)


# ----- the cookbook's throttled client ---------------------------------------


async def run_cookbook(rows: list[dict], base: str, key: str, args: argparse.Namespace) -> int:
    """api_request_parallel_processor.py's loop, with httpx for aiohttp."""
    from gateway.tokens import default_counter

    scale = args.window / 60.0  # the cookbook's minute and pause, in the bench's time
    minute = 60.0 * scale
    max_rpm = 0.75 * args.requests_limit  # per (scaled) minute
    max_tpm = 0.75 * args.tokens_limit
    pause_after_429 = 15.0 * scale
    max_attempts = 5
    counter = default_counter()

    def tokens_of(body: dict) -> int:
        prompt = counter.messages(
            [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"],
            system=next((m["content"] for m in body["messages"] if m["role"] == "system"), ""),
        )
        return prompt + body["max_tokens"]

    queue = [(row, max_attempts) for row in rows]
    retry: asyncio.Queue = asyncio.Queue()
    available_requests, available_tokens = max_rpm, max_tpm  # a full minute of capacity at the start
    last_update = time.time()
    last_rate_limit = 0.0
    in_progress = 0
    answered = 0
    pending: dict | None = None
    tasks = set()

    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
    ) as http:

        async def call(row: dict, attempts_left: int, body: dict) -> None:
            nonlocal in_progress, answered, last_rate_limit
            error = None
            try:
                reply = await http.post("/v1/chat/completions", json=body)
                data = reply.json()
                if "error" in data:
                    error = data
                    if str(data["error"].get("code")) == "429":  # providers send 'rate_limit_exceeded'
                        last_rate_limit = time.time()
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                error = exc
            if error is not None:
                if attempts_left - 1 > 0:
                    retry.put_nowait((row, attempts_left - 1))
            elif valid_answer(data["choices"][0]["message"]["content"]):
                answered += 1
            in_progress -= 1

        while True:
            if pending is None:
                if not retry.empty():
                    pending = dict(zip(("row", "attempts"), retry.get_nowait(), strict=True))
                elif queue:
                    row, attempts = queue.pop(0)
                    pending = {"row": row, "attempts": attempts}
                if pending is not None:
                    pending["body"] = request_body(pending["row"], args.max_tokens)
                    pending["tokens"] = tokens_of(pending["body"])
            now = time.time()
            elapsed = now - last_update
            available_requests = min(available_requests + max_rpm * elapsed / minute, max_rpm)
            available_tokens = min(available_tokens + max_tpm * elapsed / minute, max_tpm)
            last_update = now
            if pending is not None and available_requests >= 1 and available_tokens >= pending["tokens"]:
                available_requests -= 1
                available_tokens -= pending["tokens"]
                in_progress += 1
                task = asyncio.create_task(call(pending["row"], pending["attempts"], pending["body"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                pending = None
            if pending is None and not queue and retry.empty() and in_progress == 0:
                break
            await asyncio.sleep(0.001)
            since = time.time() - last_rate_limit
            if since < pause_after_429:
                await asyncio.sleep(pause_after_429 - since)
    return answered


# ----- the enrich job ---------------------------------------------------------


def run_enrich(
    rows: list[dict], base: str, key: str, args: argparse.Namespace, tmp: Path, mode: str = "online"
) -> tuple[int, list[str]]:
    """The real job through ./submit.sh; (rows with a schema-valid answer, the job's summary lines)."""
    data = tmp / "scored"
    data.mkdir()
    pd.DataFrame(rows).to_parquet(data / "part-00000.parquet", index=False)
    enrich = {
        "provider": {
            "kind": "openai",
            "base_url": base + "/v1",
            "model": MODEL,
            "api_key_env": "BENCH_KEY_ENRICH",
            "max_tokens": args.max_tokens,
            "timeout_s": 30.0,
        },
        "template": TEMPLATE,
        "prompts_dir": str(REPO / "conf" / "prompts"),
        "answer_schema": str(REPO / "conf" / "enrich_schema.json"),
        "prices": str(REPO / "conf" / "llm_prices.toml"),
        "select": {"op": "all"},
        "limits": {
            "requests_per_minute": args.requests_limit,
            "tokens_per_minute": args.tokens_limit,
            "max_concurrency": args.concurrent_limit,
            "window_seconds": float(args.window),
        },
        "store": {"backend": "sqlite", "path": str(tmp / "store.sqlite")},
        "mode": mode,
        # Polls every 1-5 s: at the scaled span, the providers' own advice (every minute or so) scaled down.
        "batch": {"poll_interval_s": 1.0, "poll_backoff": 1.5, "poll_max_s": 5.0},
    }
    config = tmp / "pipeline.toml"
    config.write_text(toml_text({"registry_dir": str(tmp / "models"), "enrich": enrich}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["BENCH_KEY_ENRICH"] = key  # the config names this variable in either mode
    done = subprocess.run(
        [
            str(REPO / "submit.sh"),
            "--master",
            "local[2]",
            "--config",
            str(config),
            "enrich",
            "--input",
            str(data),
            "--output",
            str(tmp / "enriched"),
            "--tasks",
            "2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"enrich job failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    print("   " + "\n   ".join(lines))
    out = pd.concat([pd.read_parquet(p) for p in sorted((tmp / "enriched").glob("*.parquet"))], ignore_index=True)
    return int(sum(valid_answer(t) for t in out["raw_answer"])), lines


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def mode_figures(o: Outcome, lines: list[str], args: argparse.Namespace) -> dict:
    """One mode's row of the batch comparison, from the gateway's counters and the job's summary."""
    text = "\n".join(lines)
    windows = o.usage["windows"]
    batch_lines = o.usage["batch_lines"]
    online_span = (o.last - o.first) if o.first is not None and o.last is not None else 0.0
    return {
        "wall": o.wall_s,
        "span": args.batch_span if o.client == BATCH_CLIENT else online_span,
        # the online calls' estimated cost plus the batch lines' cost at batch prices
        "cost": _number(r"estimated cost \$([\d.]+)", text) + _number(r"cost \$([\d.]+) at batch prices", text),
        "calls": sum(w["requests"] for w in windows),
        "lines": batch_lines["admitted"],
        "batches": int(_number(r"(\d+) batch\(es\) created", text)),
        "429s": sum(w["rate_limited"] for w in windows),
        "twice": batch_lines["repeated"],
        "lost": o.rows - o.answered,
    }


def print_batch_comparison(results: list[tuple[Outcome, list[str]]], args: argparse.Namespace) -> None:
    rows = {o.client: mode_figures(o, lines, args) for o, lines in results}
    names = {"enrich": "online", BATCH_CLIENT: "batch"}
    print(
        f"\n{'mode':<8} {'wall s':>7} {'span s':>7} {'cost $':>8} {'calls':>6} {'lines':>6} {'batches':>7} "
        f"{'429s':>5} {'twice':>5} {'lost':>5}"
    )
    for client, f in rows.items():
        print(
            f"{names[client]:<8} {f['wall']:>7.1f} {f['span']:>7.1f} {f['cost']:>8.4f} {f['calls']:>6} "
            f"{f['lines']:>6} {f['batches']:>7} {f['429s']:>5} {f['twice']:>5} {f['lost']:>5}"
        )
    if len(rows) == 2:
        on, ba = rows["enrich"], rows[BATCH_CLIENT]

        def ratio(key: str) -> str:
            return f"{ba[key] / on[key]:.3f}" if on[key] else "-"

        print(f"batch/online: wall {ratio('wall')}, span {ratio('span')}, cost {ratio('cost')}, calls {ratio('calls')}")
    print(
        "\nspan: online, first to last admitted request (gateway counters); batch, the gateway's processing span "
        "per batch (--batch-span). cost: the job's summary (online calls at list prices, batch lines at batch "
        "prices). calls: online chat calls admitted; lines: batch lines admitted; twice: lines submitted more "
        "than once; lost: rows without a schema-valid answer. wall: the whole job, Spark's start included."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="selected rows (all rows are selected)")
    parser.add_argument("--window", type=float, default=20.0, help="the limits' window in seconds (60 = per minute)")
    parser.add_argument("--requests-limit", type=int, default=600)
    parser.add_argument("--tokens-limit", type=int, default=60_000)
    parser.add_argument("--concurrent-limit", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="median of the lognormal answer latency")
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--clients", default=",".join(CLIENTS), help="which clients to run, in order")
    parser.add_argument(
        "--mode",
        choices=("online", "batch"),
        default="online",
        help="online: the clients above; batch: the enrich job online, then in batch mode (--clients ignored)",
    )
    parser.add_argument(
        "--batch-span", type=float, default=60.0, help="--mode batch: seconds the gateway takes to answer a batch"
    )
    args = parser.parse_args()
    if args.mode == "batch":
        args.clients = f"enrich,{BATCH_CLIENT}"

    rows = workload(args.rows)
    keys = {name: f"sk-bench-{secrets.token_hex(12)}" for name in ("admin", *CLIENTS, BATCH_CLIENT)}
    env = {**os.environ, **{f"BENCH_KEY_{name.upper()}": value for name, value in keys.items()}}
    outcomes: list[Outcome] = []
    summaries: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        conf = tmp / "gateway.toml"
        conf.write_text(gateway_config(args))
        server = GatewayProcess(conf, env=env)
        try:
            base = server.start().base_url
        except GatewayDidNotStart as e:
            print(e, file=sys.stderr)
            return 1
        try:
            print(
                f"enrich benchmark: {len(rows)} selected rows; gateway limits {args.requests_limit} requests and "
                f"{args.tokens_limit} tokens per {args.window:g} s sliding window (= per minute at full scale), "
                f"concurrency {args.concurrent_limit}; lognormal latency, median {args.latency_ms:g} ms; "
                f"{os.cpu_count()} CPUs" + (f"; batch span {args.batch_span:g} s" if args.mode == "batch" else "")
            )
            for name in args.clients.split(","):
                print(f"\n-- {name}")
                started = time.time()
                lines: list[str] = []
                with UsageWatcher(base, keys["admin"], name) as watch:
                    if name in ("enrich", BATCH_CLIENT):
                        (tmp / name).mkdir()
                        mode = "batch" if name == BATCH_CLIENT else "online"
                        answered, lines = run_enrich(rows, base, keys[name], args, tmp / name, mode)
                    elif name == "naive":
                        answered = run_naive(rows, base, keys[name], args)
                    elif name == "cookbook":
                        answered = asyncio.run(run_cookbook(rows, base, keys[name], args))
                    else:
                        raise SystemExit(f"unknown client {name!r}; clients: {', '.join(CLIENTS)}")
                outcomes.append(
                    Outcome(name, time.time() - started, len(rows), answered, watch.usage, watch.first, watch.last)
                )
                summaries.append(lines)
        finally:
            server.stop()

    if args.mode == "batch":
        print_batch_comparison(list(zip(outcomes, summaries, strict=True)), args)
        return 0

    print(
        f"\n{'client':<10} {'req/limit':>9} {'tok/limit':>9} {'429 share':>9} {'429s':>6} {'admitted':>8} "
        f"{'lost':>6} {'span s':>7} {'wall s':>7}"
    )
    for o in outcomes:
        f = o.figures(args)
        print(
            f"{o.client:<10} {f['req_frac']:>9.3f} {f['tok_frac']:>9.3f} {f['share_429']:>9.3%} {f['refused']:>6} "
            f"{f['accepted']:>8} {f['lost']:>6} {f['span']:>7.1f} {o.wall_s:>7.1f}"
        )
    print(
        "\nreq/limit, tok/limit: admitted requests (tokens) per window over the span from the first to the last "
        "admitted request, divided by the limit; the binding limit is the larger. 429 share: 429s / all answered "
        "requests. lost: rows without a schema-valid answer. wall: the client's whole run (the enrich job's "
        "includes Spark's start)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
