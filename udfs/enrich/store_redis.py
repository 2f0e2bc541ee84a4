"""The Redis backend of the enrich store: one redis-server shared by every task
of a job on a cluster (redis-py, optimistic `WATCH`/`MULTI` transactions)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .budget import BudgetLimits, plan_acquire, settled, usage
from .store import PROGRESS, Store, entry_from, entry_json


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
                    entries = [entry_from(str(i), str(t)) for i, t in pipe.hgetall(key).items()]
                    announced = {str(d): int(v) for d, v in self._r.hgetall(self._k("announced", ns)).items()}
                    plan = plan_acquire(entries, entry_id, now, amounts, limits.effective(announced), lease_until)
                    pipe.multi()
                    if plan.delete:
                        pipe.hdel(key, *plan.delete)
                    for e in plan.write:
                        pipe.hset(key, e.id, entry_json(e))
                    pipe.execute()
                    return plan.wait
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
                    new = settled(entry_from(entry_id, str(text)), amounts, stamp)
                    pipe.multi()
                    pipe.hset(key, entry_id, entry_json(new))
                    pipe.execute()
                    return
                except self._redis_mod.WatchError:
                    continue

    def budget_learn(self, ns: str, announced: Mapping[str, int]) -> dict[str, int]:
        key = self._k("announced", ns)
        while True:
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    known = {str(d): int(v) for d, v in pipe.hgetall(key).items()}
                    lower: dict[str, int] = {
                        d: int(v) for d, v in announced.items() if int(v) < known.get(d, int(v) + 1)
                    }
                    if lower:
                        pipe.multi()
                        pipe.hset(key, mapping=dict(lower.items()))
                        pipe.execute()
                    return {**known, **lower}
                except self._redis_mod.WatchError:
                    continue

    def budget_usage(self, ns: str, now: float, window: float) -> dict[str, int]:
        entries = [entry_from(str(i), str(t)) for i, t in self._r.hgetall(self._k("budget", ns)).items()]
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

    def progress_add(self, job: str, deltas: Mapping[str, int]) -> None:
        pipe = self._r.pipeline()
        for name, delta in deltas.items():
            pipe.hincrby(self._k("progress", job), name, delta)
        pipe.execute()

    def progress_read(self, job: str) -> dict[str, int]:
        values = self._r.hgetall(self._k("progress", job))
        return {name: int(values.get(name, 0)) for name in PROGRESS}

    def progress_reset(self, job: str) -> None:
        self._r.delete(self._k("progress", job))

    def ledger_put(self, job: str, name: str, doc: dict[str, Any]) -> None:
        self._r.hset(self._k("batches", job), name, json.dumps(doc))

    def ledger_read(self, job: str) -> dict[str, dict[str, Any]]:
        return {str(n): json.loads(d) for n, d in self._r.hgetall(self._k("batches", job)).items()}

    def close(self) -> None:
        self._r.close()
