"""Micro-batching of concurrent scoring requests, as TorchServe
(batch_size, max_batch_delay) and Triton (dynamic batching,
max_queue_delay_microseconds) do: requests for one model wait in a queue;
one worker per model takes up to max_items texts, or what has arrived by
max_wait after the oldest waiting request, and runs them as one call in a
single thread. While that call runs, new requests queue up and form the
next batch, so a busy model gets full batches and an idle one answers
after at most max_wait.

A mechanism only: what a batch runs is the function it is given."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


@dataclasses.dataclass
class _Waiting:
    items: Sequence[Any]
    future: asyncio.Future[list[Any]]
    arrived: float


@dataclasses.dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0

    def add(self, n: int) -> None:
        self.batches += 1
        self.items += n
        self.largest = max(self.largest, n)


class MicroBatcher:
    """submit(key, items) -> results (one per item, in order), run together
    with other requests for the same key by run_batch(key, items)."""

    def __init__(
        self, run_batch: Callable[[Hashable, list[Any]], Sequence[Any]], max_items: int, max_wait_s: float
    ) -> None:
        self.run_batch, self.max_items, self.max_wait_s = run_batch, max_items, max_wait_s
        self.stats = BatchStats()
        self._queues: dict[Hashable, deque[_Waiting]] = {}
        self._wake: dict[Hashable, asyncio.Event] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        # One model call at a time: torch already spreads one call over the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-batch")

    async def submit(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(items, loop.create_future(), loop.time())
        self._queues.setdefault(key, deque()).append(waiting)
        self._wake.setdefault(key, asyncio.Event()).set()
        if key not in self._workers or self._workers[key].done():
            self._workers[key] = asyncio.create_task(self._work(key), name=f"batcher-{key}")
        return await waiting.future

    def _queued(self, key: Hashable) -> int:
        return sum(len(w.items) for w in self._queues[key])

    async def _work(self, key: Hashable) -> None:
        loop = asyncio.get_running_loop()
        queue, wake = self._queues[key], self._wake[key]
        while True:
            while not queue:
                wake.clear()
                await wake.wait()
            deadline = queue[0].arrived + self.max_wait_s
            while self._queued(key) < self.max_items and (left := deadline - loop.time()) > 0:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except TimeoutError:
                    break
            batch = [queue.popleft()]  # at least one request, even one larger than max_items
            size = len(batch[0].items)
            while queue and size + len(queue[0].items) <= self.max_items:
                size += len(queue[0].items)
                batch.append(queue.popleft())
            live = [w for w in batch if not w.future.done()]  # a client that left is not scored
            if not live:
                continue
            items = [item for w in live for item in w.items]
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, key, items)
            except Exception as exc:
                for w in live:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            self.stats.add(len(items))
            start = 0
            for w in live:
                end = start + len(w.items)
                if not w.future.done():
                    w.future.set_result(list(results[start:end]))
                start = end

    async def close(self) -> None:
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
