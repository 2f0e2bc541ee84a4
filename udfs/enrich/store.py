"""The shared store of one enrich job: budget log, announced limits, answer
cache, claims, progress counters and the batch ledger.

Two backends with one interface: `SqliteStore` (store_sqlite.py, the default:
a file, shared by every process on one machine through SQLite's own locking,
no server) and `RedisStore` (store_redis.py, a cluster: every task reaches one
redis-server); `open_store` is the one switch between them. Each budget
decision reads the log and appends to it in one transaction (SQLite
`BEGIN IMMEDIATE`; Redis `WATCH`/`MULTI`), so processes never both take the
last slot. Times are passed in (`now`), never read here.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from .budget import DIMS, BudgetLimits, Entry
from .settings import StoreConfig

log = logging.getLogger(__name__)
PROGRESS = ("done", "calls", "in_flight", "rate_limited")  # the job's progress counters


class Store(ABC):
    """Budget, cache, claims and progress; safe to use from several threads and processes."""

    # --- budget ---
    @abstractmethod
    def budget_acquire(
        self, ns: str, entry_id: str, now: float, amounts: dict[str, int], limits: BudgetLimits, lease_until: float
    ) -> float:
        """Append an entry if `amounts` fit `limits` lowered to the announced ones (returns 0.0),
        else seconds to wait (nothing taken)."""

    @abstractmethod
    def budget_settle(self, ns: str, entry_id: str, amounts: dict[str, int] | None, stamp: float) -> None:
        """The call is over: free its slot, correct its amounts to what was used (None: keep the
        reservation), and move its stamp to `stamp` (when the answer came) if that is later."""

    @abstractmethod
    def budget_usage(self, ns: str, now: float, window: float) -> dict[str, int]: ...

    @abstractmethod
    def budget_learn(self, ns: str, announced: Mapping[str, int]) -> dict[str, int]:
        """Keep the lower of the stored and these announced limits; returns all stored ones."""

    # --- answers ---
    @abstractmethod
    def get_answer(self, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def put_answer(self, key: str, value: dict[str, Any]) -> None: ...

    # --- claims: who is calling the API for a prompt hash right now ---
    @abstractmethod
    def claim(self, key: str, owner: str, now: float, ttl: float) -> bool:
        """Take (or renew) the claim on `key` unless another owner holds a live one."""

    @abstractmethod
    def release(self, key: str, owner: str) -> None: ...

    @abstractmethod
    def claim_holder(self, key: str) -> str | None:
        """The owner of the claim on `key`, live or lapsed; None if there is none."""

    # --- progress: counters the tasks add to and the driver reads while they run ---
    @abstractmethod
    def progress_add(self, job: str, deltas: Mapping[str, int]) -> None: ...

    @abstractmethod
    def progress_read(self, job: str) -> dict[str, int]:
        """Every name of PROGRESS, 0 when never added to."""

    @abstractmethod
    def progress_reset(self, job: str) -> None: ...

    # --- batch ledger: the Batch API batches of a job (batch_driver.py), beside the answers ---
    @abstractmethod
    def ledger_put(self, job: str, name: str, doc: dict[str, Any]) -> None:
        """Write (or replace) the entry `name` of the job's batch ledger."""

    @abstractmethod
    def ledger_read(self, job: str) -> dict[str, dict[str, Any]]:
        """Every entry of the job's batch ledger, by name."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass


def open_store(cfg: StoreConfig) -> Store:
    """The job's shared store. A relative sqlite path is from the working directory."""
    if cfg.backend == "redis":
        from .store_redis import RedisStore

        return RedisStore(cfg.url)
    from .store_sqlite import SqliteStore

    return SqliteStore(cfg.path)


def entry_json(e: Entry) -> str:
    return json.dumps([e.stamp, [e.amounts.get(d, 0) for d in DIMS], e.lease_until])


def entry_from(entry_id: str, text: str) -> Entry:
    stamp, amounts, lease = json.loads(text)
    return Entry(entry_id, stamp, dict(zip(DIMS, amounts, strict=True)), lease)
