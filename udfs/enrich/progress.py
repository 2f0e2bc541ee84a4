"""The job's progress while it runs: the tasks feed the runner's events into
counters in the job's store (`ProgressFeed`, batched writes), and the driver's
`ProgressBar` (tqdm) polls them. The bar is switched on by the driver's
explicit argument, never by looking at the environment here."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A snapshot of the job's progress, from the shared store's counters."""

    done: int
    in_flight: int
    rate_limited: int


def snapshot(store: Store, job_id: str) -> Progress:
    values = store.progress_read(job_id)
    return Progress(values["done"], max(0, values["in_flight"]), values["rate_limited"])


class ProgressFeed:
    """The runner's events (on_event) as increments of the job's counters in the store,
    written at most every `flush_s` seconds (and by flush())."""

    def __init__(self, store: Store, job_id: str, flush_s: float = 0.5) -> None:
        self.store, self.job_id, self.flush_s = store, job_id, flush_s
        self.pending: dict[str, int] = {}
        self.flushed_at = 0.0
        self._lock = threading.Lock()

    def on_event(self, event: Mapping[str, Any]) -> None:
        event_type = event.get("type")
        deltas: dict[str, int] = {}
        if event_type == "row":
            deltas["done"] = 1
        elif event_type == "call":
            deltas = {"calls": 1, "in_flight": 1}
        elif event_type == "call_done":
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

    def flush(self) -> None:
        with self._lock:
            pending, self.pending = self.pending, {}
        if pending:
            self.store.progress_add(self.job_id, pending)
        self.flushed_at = time.monotonic()


class ProgressBar:
    """tqdm bar on the driver, fed by polling `poll` (the shared store's counters, written by
    the tasks) every `every` seconds in a thread: rows done, rate, ETA, calls in flight, 429s."""

    def __init__(
        self,
        total: int | None,
        poll: Callable[[], Progress],
        enabled: bool,
        every: float = 0.5,
        stream: IO[str] | None = None,
    ) -> None:
        self.total, self.poll, self.every, self.enabled = total, poll, every, enabled
        self.stream = stream or sys.stderr
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
