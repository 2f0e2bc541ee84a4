"""The shared store of one enrich job: budget log, answer cache and claims.

Two backends with one interface: `SqliteStore` (the default: a file, shared by
every process on one machine through SQLite's own locking, no server) and
`RedisStore` (a cluster: every task reaches one redis-server). Each budget
decision reads the log and appends to it in one transaction (SQLite
`BEGIN IMMEDIATE`; Redis `WATCH`/`MULTI`), so processes never both take the
last slot. Times are passed in (`now`), never read here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .budget import DIMS, BudgetLimits, Entry, compact, decide, live, usage


class Store(ABC):
    """Budget, cache and claims; safe to use from several threads and processes."""

    # --- budget ---
    @abstractmethod
    def budget_acquire(
        self, ns: str, entry_id: str, now: float, amounts: dict[str, int], limits: BudgetLimits, lease_until: float
    ) -> float:
        """Append an entry if `amounts` fit (returns 0.0), else seconds to wait (nothing taken)."""

    @abstractmethod
    def budget_settle(self, ns: str, entry_id: str, amounts: dict[str, int] | None, stamp: float) -> None:
        """The call is over: free its slot, correct its amounts to what was used (None: keep the
        reservation), and move its stamp to `stamp` (when the answer came) if that is later."""

    @abstractmethod
    def budget_usage(self, ns: str, now: float, window: float) -> dict[str, int]: ...

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

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass


def _entry_json(e: Entry) -> str:
    return json.dumps([e.stamp, [e.amounts.get(d, 0) for d in DIMS], e.lease_until])


def _entry_from(entry_id: str, text: str) -> Entry:
    stamp, amounts, lease = json.loads(text)
    return Entry(entry_id, stamp, dict(zip(DIMS, amounts, strict=True)), lease)


class SqliteStore(Store):
    """A SQLite file shared by the processes of one machine (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._wal_mode(deadline=time.monotonic() + 60)
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS budget (ns TEXT, id TEXT, entry TEXT, PRIMARY KEY (ns, id))")
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL)")

    def _wal_mode(self, deadline: float) -> None:
        """Switch the file to WAL. Connections switching a new file at the
        same moment can get SQLITE_BUSY without SQLite calling the busy
        handler (waiting could deadlock), so retry until the deadline."""
        delay = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _entries(self, db: sqlite3.Connection, ns: str) -> list[Entry]:
        return [_entry_from(i, t) for i, t in db.execute("SELECT id, entry FROM budget WHERE ns = ?", (ns,))]

    def budget_acquire(
        self, ns: str, entry_id: str, now: float, amounts: dict[str, int], limits: BudgetLimits, lease_until: float
    ) -> float:
        with self._tx() as db:
            entries = self._entries(db, ns)
            kept = live(entries, now, limits.window)
            kept_ids = {e.id for e in kept}
            stale = [e.id for e in entries if e.id not in kept_ids]
            kept, merged_away, merged = compact(kept, now, limits.window)
            db.executemany("DELETE FROM budget WHERE ns = ? AND id = ?", [(ns, i) for i in stale + merged_away])
            db.executemany(
                "INSERT OR REPLACE INTO budget VALUES (?, ?, ?)", [(ns, e.id, _entry_json(e)) for e in merged]
            )
            wait = decide(kept, now, amounts, limits)
            if wait == 0.0:
                db.execute(
                    "INSERT OR REPLACE INTO budget VALUES (?, ?, ?)",
                    (ns, entry_id, _entry_json(Entry(entry_id, now, amounts, lease_until))),
                )
            return wait

    def budget_settle(self, ns: str, entry_id: str, amounts: dict[str, int] | None, stamp: float) -> None:
        with self._tx() as db:
            row = db.execute("SELECT entry FROM budget WHERE ns = ? AND id = ?", (ns, entry_id)).fetchone()
            if row is None:
                return  # already out of the window
            e = _entry_from(entry_id, row[0])
            new = Entry(entry_id, max(e.stamp, stamp), e.amounts if amounts is None else amounts, 0.0)
            db.execute("UPDATE budget SET entry = ? WHERE ns = ? AND id = ?", (_entry_json(new), ns, entry_id))

    def budget_usage(self, ns: str, now: float, window: float) -> dict[str, int]:
        with self._tx() as db:
            return usage(self._entries(db, ns), now, window)

    def get_answer(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_answer(self, key: str, value: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(value)))

    def claim(self, key: str, owner: str, now: float, ttl: float) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT owner, until FROM claims WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (key, owner, now + ttl))
            return True

    def release(self, key: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, owner))

    def claim_holder(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT owner FROM claims WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore(Store):
    """One redis-server shared by every task of the job (redis-py, optimistic transactions)."""

    PREFIX = "aibatch:enrich:"

    def __init__(self, url: str) -> None:
        import redis  # only the Redis backend needs it

        self._redis_mod = redis
        self._r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10)
        self._r.ping()

    def _k(self, *parts: str) -> str:
        return self.PREFIX + ":".join(parts)

    def budget_acquire(
        self, ns: str, entry_id: str, now: float, amounts: dict[str, int], limits: BudgetLimits, lease_until: float
    ) -> float:
        key = self._k("budget", ns)
        while True:
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    entries = [_entry_from(str(i), str(t)) for i, t in pipe.hgetall(key).items()]
                    kept = live(entries, now, limits.window)
                    kept_ids = {e.id for e in kept}
                    stale = [e.id for e in entries if e.id not in kept_ids]
                    kept, merged_away, merged = compact(kept, now, limits.window)
                    wait = decide(kept, now, amounts, limits)
                    pipe.multi()
                    if stale or merged_away:
                        pipe.hdel(key, *stale, *merged_away)
                    for e in merged:
                        pipe.hset(key, e.id, _entry_json(e))
                    if wait == 0.0:
                        pipe.hset(key, entry_id, _entry_json(Entry(entry_id, now, amounts, lease_until)))
                    pipe.execute()
                    return wait
                except self._redis_mod.WatchError:
                    continue  # another process changed the log between our read and write: decide again

    def budget_settle(self, ns: str, entry_id: str, amounts: dict[str, int] | None, stamp: float) -> None:
        key = self._k("budget", ns)
        while True:
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    text = pipe.hget(key, entry_id)
                    if text is None:
                        return
                    e = _entry_from(entry_id, str(text))
                    new = Entry(entry_id, max(e.stamp, stamp), e.amounts if amounts is None else amounts, 0.0)
                    pipe.multi()
                    pipe.hset(key, entry_id, _entry_json(new))
                    pipe.execute()
                    return
                except self._redis_mod.WatchError:
                    continue

    def budget_usage(self, ns: str, now: float, window: float) -> dict[str, int]:
        entries = [_entry_from(str(i), str(t)) for i, t in self._r.hgetall(self._k("budget", ns)).items()]
        return usage(entries, now, window)

    def get_answer(self, key: str) -> dict[str, Any] | None:
        text = self._r.get(self._k("answer", key))
        return None if text is None else json.loads(text)

    def put_answer(self, key: str, value: dict[str, Any]) -> None:
        self._r.set(self._k("answer", key), json.dumps(value))

    def claim(self, key: str, owner: str, now: float, ttl: float) -> bool:
        k = self._k("claim", key)
        while True:
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(k)
                    text = pipe.get(k)
                    if text is not None:
                        holder, until = json.loads(text)
                        if holder != owner and until > now:
                            return False
                    pipe.multi()
                    # The expiry is only housekeeping; `until` (our clock) decides.
                    pipe.set(k, json.dumps([owner, now + ttl]), ex=max(1, int(ttl * 4)))
                    pipe.execute()
                    return True
                except self._redis_mod.WatchError:
                    continue

    def release(self, key: str, owner: str) -> None:
        k = self._k("claim", key)
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(k)
                text = pipe.get(k)
                if text is not None and json.loads(text)[0] == owner:
                    pipe.multi()
                    pipe.delete(k)
                    pipe.execute()
            except self._redis_mod.WatchError:
                pass  # someone else took it over: nothing of ours to release

    def claim_holder(self, key: str) -> str | None:
        text = self._r.get(self._k("claim", key))
        return None if text is None else str(json.loads(str(text))[0])

    def close(self) -> None:
        self._r.close()
