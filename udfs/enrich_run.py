"""What the enrich job's two drivers (the Spark job and the mrjob twin) share
around the core in udfs/enrich/: the API key read from the environment, the
job id a rerun finds its work under, the end-of-run totals with their cost
from the price table (conf/llm_prices.toml), and the driver's progress bar.

Plain Python, no pyspark and no mrjob, so both engines and plain pytest use it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr

from .enrich.result import (  # noqa: F401 (the drivers' names until they move)
    DEAD_LETTER,
    ENRICHED,
    RESULT_DTYPES,
    RESULT_FIELDS,
    RUN_VARYING_FIELDS,
    result_fields,
    results_frame,
)

log = logging.getLogger(__name__)


class ApiKeyMissing(RuntimeError):
    """The environment variable the config names holds no key."""


def read_api_key(env_name: str, environ: Mapping[str, str] | None = None) -> SecretStr:
    """The key from the variable the config names, wrapped so that repr(),
    str() and pickled closures' reprs show '**********', never the key."""
    value = (os.environ if environ is None else environ).get(env_name, "")
    if not value.strip():
        raise ApiKeyMissing(f"no API key: the environment variable {env_name} (enrich.api_key_env) is unset or empty")
    return SecretStr(value.strip())


def job_id_for(*parts: str) -> str:
    """A job id that the same command gives again (so a rerun after a crash
    finds its claims, cache and counters): a hash of the output location."""
    digest = hashlib.sha256("\0".join(p.rstrip("/") for p in parts).encode()).hexdigest()
    return f"enrich-{digest[:16]}"


@dataclass(frozen=True)
class ModelPrice:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


class PriceError(ValueError):
    """A bad price table; the message names the file and the entry."""


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, ModelPrice]

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise PriceError(f"{path}: no such price table") from None
        except tomllib.TOMLDecodeError as exc:
            raise PriceError(f"{path}: not valid TOML: {exc}") from None
        prices: dict[str, ModelPrice] = {}
        for model, entry in (data.get("models") or {}).items():
            try:
                price = ModelPrice(float(entry["input_per_mtok"]), float(entry["output_per_mtok"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise PriceError(
                    f"{path}: models.{model}: needs numbers input_per_mtok and output_per_mtok ({exc})"
                ) from None
            if price.input_per_mtok < 0 or price.output_per_mtok < 0:
                raise PriceError(f"{path}: models.{model}: prices must not be negative")
            for name in [model, *entry.get("aliases", [])]:
                prices[name] = price
        return cls(prices)

    def price(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)


@dataclass
class EnrichTotals:
    """The end-of-run line: rows in = enriched + dead-lettered + not selected,
    calls made, cache hits, tokens, cost. Calls and tokens count only rows
    answered by a call in this run (cached rows were paid for before)."""

    rows_in: int = 0
    enriched: int = 0
    dead_letter: int = 0
    not_selected: int = 0
    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    by_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [input, output] tokens paid

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one selected row's output (either status)."""
        self.add_group(
            row.get("status"),
            bool(row.get("cached")),
            row.get("model"),
            1,
            row.get("attempts"),
            row.get("input_tokens"),
            row.get("output_tokens"),
        )

    def add_group(
        self,
        status: Any,
        cached: bool,
        model: Any,
        rows: int,
        attempts: Any,
        input_tokens: Any,
        output_tokens: Any,
        count_cache_hit: bool = True,
    ) -> None:
        """Count `rows` outputs of one status that share cached and model,
        with their summed attempts and tokens (a Spark groupBy's row)."""
        if status == ENRICHED:
            self.enriched += rows
        elif status == DEAD_LETTER:
            self.dead_letter += rows
        else:
            raise ValueError(f"unknown enrich status {status!r}")
        if cached:
            self.cache_hits += rows if count_cache_hit else 0
            return
        tin, tout = int(input_tokens or 0), int(output_tokens or 0)
        self.calls += int(attempts or 0)
        self.input_tokens += tin
        self.output_tokens += tout
        paid = self.by_model.setdefault(str(model or ""), [0, 0])
        paid[0] += tin
        paid[1] += tout

    def add_all(self, rows: Iterable[Mapping[str, Any]]) -> EnrichTotals:
        for row in rows:
            self.add(row)
        return self

    def check(self) -> None:
        """Every input row is accounted for exactly once."""
        if self.rows_in != self.enriched + self.dead_letter + self.not_selected:
            raise RuntimeError(
                f"enrich: rows in {self.rows_in} != enriched {self.enriched} + dead-lettered "
                f"{self.dead_letter} + not selected {self.not_selected}"
            )

    def cost(self, prices: PriceTable) -> float | None:
        """US dollars for the tokens paid in this run; None when a model has no price."""
        total = 0.0
        for model, (tin, tout) in self.by_model.items():
            if tin == 0 and tout == 0:
                continue
            price = prices.price(model)
            if price is None:
                return None
            total += price.cost(tin, tout)
        return total

    def report(self, prices: PriceTable) -> list[str]:
        cost = self.cost(prices)
        return [
            f"enrich: rows in {self.rows_in} = enriched {self.enriched} + dead-lettered {self.dead_letter} "
            f"+ not selected {self.not_selected}",
            f"  calls made {self.calls}, cache hits {self.cache_hits}, "
            f"tokens {self.input_tokens} in + {self.output_tokens} out, estimated cost {format_cost(cost)}",
        ]


def format_cost(cost: float | None) -> str:
    return "unknown (model not in the price table)" if cost is None else f"${cost:.4f}"


def dry_run_report(
    rows_in: int,
    selected: int,
    calls: int,
    est_input_tokens: int,
    est_output_tokens: int,
    model: str,
    prices: PriceTable,
) -> list[str]:
    """What a run would send: calls (cached prompts excluded), estimated tokens
    (prompt tokens counted, output at max_tokens: an upper bound) and cost."""
    price = prices.price(model)
    cost = None if price is None else price.cost(est_input_tokens, est_output_tokens)
    return [
        f"enrich --dry-run: rows in {rows_in}, selected {selected} (not selected {rows_in - selected})",
        f"  would make {calls} calls to {model}, estimated tokens {est_input_tokens} in + at most "
        f"{est_output_tokens} out, estimated cost at most {format_cost(cost)}",
    ]


def estimate_counts(rows: list[dict[str, Any]], ecfg: Any, assets: Any, store: Any) -> tuple[int, int, int]:
    """(calls, input tokens, output tokens at most) that `rows` would cost,
    from udfs.enrich.runner.estimate (prompt tokens + max_tokens per call;
    prompts already answered in the store cost nothing)."""
    from .enrich.tokens import estimate

    calls, est_tokens = estimate(rows, ecfg, assets, store)
    output = int(calls) * int(ecfg.provider.max_tokens)
    return int(calls), max(0, int(est_tokens) - output), output


@dataclass(frozen=True)
class Progress:
    """A snapshot of the job's progress, from the shared store's counters."""

    done: int
    in_flight: int
    rate_limited: int


class ProgressCounters:
    """The job's progress counters where the driver can read them while the
    tasks write them: a table next to the SQLite store, or a hash in the
    Redis store's server. The tasks feed it the runner's events (on_event);
    increments are batched and written at most every `flush_s` seconds."""

    NAMES = ("done", "calls", "in_flight", "rate_limited")

    def __init__(self, backend: str, location: str, job_id: str, flush_s: float = 0.5) -> None:
        self.backend, self.location, self.job_id, self.flush_s = backend, location, job_id, flush_s
        self.pending: dict[str, int] = {}
        self.flushed_at = 0.0
        self._lock = threading.Lock()
        self._redis: Any = None

    @classmethod
    def for_store(cls, store_cfg: Any, job_id: str) -> ProgressCounters:
        if store_cfg.backend == "redis":
            return cls("redis", store_cfg.url, job_id)
        return cls("sqlite", str(store_cfg.path) + ".progress", job_id)

    # ----- backend --------------------------------------------------------
    def _sqlite(self) -> Any:
        import sqlite3

        Path(self.location).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.location, timeout=30)
        db.execute("CREATE TABLE IF NOT EXISTS progress (job TEXT, name TEXT, value INTEGER, PRIMARY KEY (job, name))")
        return db

    def _client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.location)
        return self._redis

    def _key(self) -> str:
        return f"aibatch:progress:{self.job_id}"

    def reset(self) -> None:
        if self.backend == "redis":
            self._client().delete(self._key())
            return
        db = self._sqlite()
        with db:
            db.execute("DELETE FROM progress WHERE job = ?", (self.job_id,))
        db.close()

    def read(self) -> dict[str, int]:
        if self.backend == "redis":
            raw = self._client().hgetall(self._key())
            values = {k.decode(): int(v) for k, v in raw.items()}
        else:
            db = self._sqlite()
            values = dict(db.execute("SELECT name, value FROM progress WHERE job = ?", (self.job_id,)).fetchall())
            db.close()
        return {name: int(values.get(name, 0)) for name in self.NAMES}

    def flush(self) -> None:
        with self._lock:
            pending, self.pending = self.pending, {}
        if not pending:
            return
        if self.backend == "redis":
            pipe = self._client().pipeline()
            for name, delta in pending.items():
                pipe.hincrby(self._key(), name, delta)
            pipe.execute()
        else:
            db = self._sqlite()
            with db:
                db.executemany(
                    "INSERT INTO progress (job, name, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (job, name) DO UPDATE SET value = value + excluded.value",
                    [(self.job_id, n, d) for n, d in pending.items()],
                )
            db.close()
        self.flushed_at = time.monotonic()

    # ----- the runner's events ---------------------------------------------
    def on_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        deltas: dict[str, int] = {}
        if kind == "row":
            deltas["done"] = 1
        elif kind == "call":
            deltas = {"calls": 1, "in_flight": 1}
        elif kind == "call_done":
            deltas["in_flight"] = -1
            if event.get("status") == 429:
                deltas["rate_limited"] = 1
        if not deltas:
            return
        with self._lock:
            for name, delta in deltas.items():
                self.pending[name] = self.pending.get(name, 0) + delta
        if time.monotonic() - self.flushed_at >= self.flush_s:
            try:
                self.flush()
            except Exception as exc:  # progress is a display: a failed write must not fail the batch
                log.debug("progress flush failed: %s", type(exc).__name__)

    def snapshot(self) -> Progress:
        values = self.read()
        return Progress(values["done"], max(0, values["in_flight"]), values["rate_limited"])


def progress_wanted(stream: IO[str] | None = None) -> bool:
    """A bar only for a person watching: never in a test run
    (PYTEST_CURRENT_TEST); else AIBATCH_PROGRESS=1/0 when set (submit.sh sets
    it from whether its stderr is a terminal: spark-submit pipes the Python
    driver's output, so the driver cannot see that itself); else whether the
    stream is a terminal. TQDM_DISABLE, which the jobs set to silence model
    loading bars, does not apply to this one."""
    if os.environ.get("PYTEST_CURRENT_TEST"):
        return False
    chosen = os.environ.get("AIBATCH_PROGRESS", "").strip()
    if chosen in ("0", "1"):
        return chosen == "1"
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """tqdm bar on the driver, fed by polling `poll` (the shared store's
    counters, written by the tasks) every `every` seconds in a thread:
    rows done, rate, ETA, calls in flight, 429s so far."""

    def __init__(
        self,
        total: int | None,
        poll: Callable[[], Progress],
        every: float = 0.5,
        stream: IO[str] | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.total, self.poll, self.every = total, poll, every
        self.stream = stream or sys.stderr
        self.enabled = progress_wanted(self.stream) if enabled is None else enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressBar:
        if self.enabled and self.total != 0:
            self._thread = threading.Thread(target=self._run, name="enrich-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]

        with tqdm(
            total=self.total, unit="row", file=self.stream, dynamic_ncols=True, desc="enrich", disable=False
        ) as bar:
            while True:
                stopping = self._stop.wait(self.every)
                try:
                    snap = self.poll()
                except Exception as exc:  # a store hiccup must not end the job; the bar just pauses
                    log.debug("progress poll failed: %s", type(exc).__name__)
                    if stopping:
                        return
                    continue
                bar.n = snap.done if self.total is None else min(snap.done, self.total)
                bar.set_postfix(in_flight=snap.in_flight, http_429=snap.rate_limited, refresh=False)
                bar.refresh()
                if stopping:
                    return
