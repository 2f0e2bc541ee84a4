"""Claims: before calling for a prompt, a task claims its hash in the store
(a lease of `store.claim_ttl_s`, renewed every third of it while the call
runs); another task that finds the claim waits for the answer instead of
calling, and takes over when the lease lapses or its owner died."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .store import Store

log = logging.getLogger(__name__)
CLAIM_POLL_S = 0.1


def claim_owner() -> str:
    """host/pid/random: unique per runner, and says which process holds a claim."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(6)}"


def dead_local_owner(owner: str) -> bool:
    """Was this claim taken by a process of this machine that no longer exists?"""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class Claims:
    """The claims of one batch: `answer(h, call)` returns (record, whether we called)."""

    def __init__(self, store: Store, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.store, self.ttl, self.clock = store, ttl, clock
        self.owner = claim_owner()
        self.held: set[str] = set()

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            for h in list(self.held):
                await asyncio.to_thread(self.store.claim, h, self.owner, self.clock(), self.ttl)

    async def answer(
        self, h: str, call: Callable[[], Awaitable[dict[str, Any]]], cacheable: Callable[[dict[str, Any]], bool]
    ) -> tuple[dict[str, Any], bool]:
        """The cached answer for `h`, or another task's once it lands, or ours from `call()`
        under our claim (stored when `cacheable`)."""
        store = self.store
        while True:
            cached = await asyncio.to_thread(store.get_answer, h)
            if cached is not None:
                return cached, False
            if await asyncio.to_thread(store.claim, h, self.owner, self.clock(), self.ttl):
                break
            holder = await asyncio.to_thread(store.claim_holder, h)
            if holder is not None and dead_local_owner(holder):
                # A process of this machine that died mid-call (kill -9) left it: no need to wait out its lease.
                log.info("taking over a claim left by a dead process (%s)", holder)
                await asyncio.to_thread(store.release, h, holder)
                continue
            await asyncio.sleep(CLAIM_POLL_S)  # another task is calling for this prompt: wait for its answer
        self.held.add(h)
        try:
            cached = await asyncio.to_thread(store.get_answer, h)  # it may have landed just before our claim
            if cached is not None:
                return cached, False
            record = await call()
            if cacheable(record):
                await asyncio.to_thread(store.put_answer, h, record)
            return record, True
        finally:
            self.held.discard(h)
            await asyncio.to_thread(store.release, h, self.owner)
