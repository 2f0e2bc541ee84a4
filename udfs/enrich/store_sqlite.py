"""The SQLite backend of the enrich store: one file shared by the processes of
one machine (WAL mode, `BEGIN IMMEDIATE` transactions, no server)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .budget import BudgetLimits, Entry, plan_acquire, settled, usage
from .store import PROGRESS, Store, entry_from, entry_json


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
            db.execute("CREATE TABLE IF NOT EXISTS announced (ns TEXT, dim TEXT, value INTEGER, PRIMARY KEY (ns, dim))")
            db.execute("CREATE TABLE IF NOT EXISTS batches (job TEXT, name TEXT, doc TEXT, PRIMARY KEY (job, name))")
            db.execute(
                "CREATE TABLE IF NOT EXISTS progress (job TEXT, name TEXT, value INTEGER, PRIMARY KEY (job, name))"
            )

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
        return [entry_from(i, t) for i, t in db.execute("SELECT id, entry FROM budget WHERE ns = ?", (ns,))]

    def budget_acquire(
        self, ns: str, entry_id: str, now: float, amounts: dict[str, int], limits: BudgetLimits, lease_until: float
    ) -> float:
        with self._tx() as db:
            announced = dict(db.execute("SELECT dim, value FROM announced WHERE ns = ?", (ns,)).fetchall())
            plan = plan_acquire(self._entries(db, ns), entry_id, now, amounts, limits.effective(announced), lease_until)
            db.executemany("DELETE FROM budget WHERE ns = ? AND id = ?", [(ns, i) for i in plan.delete])
            db.executemany(
                "INSERT OR REPLACE INTO budget VALUES (?, ?, ?)", [(ns, e.id, entry_json(e)) for e in plan.write]
            )
            return plan.wait

    def budget_settle(self, ns: str, entry_id: str, amounts: dict[str, int] | None, stamp: float) -> None:
        with self._tx() as db:
            row = db.execute("SELECT entry FROM budget WHERE ns = ? AND id = ?", (ns, entry_id)).fetchone()
            if row is None:
                return  # already out of the window
            new = settled(entry_from(entry_id, row[0]), amounts, stamp)
            db.execute("UPDATE budget SET entry = ? WHERE ns = ? AND id = ?", (entry_json(new), ns, entry_id))

    def budget_learn(self, ns: str, announced: Mapping[str, int]) -> dict[str, int]:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO announced VALUES (?, ?, ?) ON CONFLICT (ns, dim) DO UPDATE SET value = MIN(value, excluded.value)",
                [(ns, dim, int(v)) for dim, v in announced.items()],
            )
            return dict(db.execute("SELECT dim, value FROM announced WHERE ns = ?", (ns,)).fetchall())

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

    def progress_add(self, job: str, deltas: Mapping[str, int]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO progress VALUES (?, ?, ?) ON CONFLICT (job, name) DO UPDATE SET value = value + excluded.value",
                [(job, n, d) for n, d in deltas.items()],
            )

    def progress_read(self, job: str) -> dict[str, int]:
        with self._lock:
            values = dict(self._db.execute("SELECT name, value FROM progress WHERE job = ?", (job,)).fetchall())
        return {name: int(values.get(name, 0)) for name in PROGRESS}

    def progress_reset(self, job: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM progress WHERE job = ?", (job,))

    def ledger_put(self, job: str, name: str, doc: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?)", (job, name, json.dumps(doc)))

    def ledger_read(self, job: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT name, doc FROM batches WHERE job = ?", (job,)).fetchall()
        return {str(name): json.loads(doc) for name, doc in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
