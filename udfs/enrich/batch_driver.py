"""Batch mode's driver: the prompts not in the answer cache go through the
provider's Batch API into the same answer cache; the engines' usual path then
writes the outputs from it (so batch mode's outputs are online mode's, rows
answered from the cache). Every step is recorded first in the run's batch
ledger (batch_ledger.py), so the same command after a kill -9 anywhere submits
no line twice: an upload without a batch is found by its name and reused, a
batch created but not recorded is adopted, open batches are polled again.

Batches are cut under enrich.batch.max_lines, max_bytes and max_enqueued_tokens
(a line counts its prompt estimate + max_tokens), and the next one is created
only while the run's open batches leave room in that queue. A create the
provider still refuses for its queue is no attempt: the run's queue is lowered
to what its other open batches hold, so the entry waits for one of them to end
and is created again (OpenAI: from the same upload); refused with none of them
open, it counts as a failed attempt.

A line whose batch failed it (errored, expired, cancelled, an answer that breaks
the schema) goes into a new batch, at most enrich.retry.max_attempts batches in
all; then enrich.batch.fallback decides: "online" leaves it uncached for the
online path, "none" stores a dead letter with the reason (batch_lines.DEAD_PREFIX).
--retry-dead-letters (`retry=True`) gives the lines it re-runs their attempts again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import batch_ledger as bl
from .assets import Assets
from .batch_ledger import CREATING, ENDED, PREPARED, RETRIED, SUBMITTED, UPLOADED, Entry, RunLedger
from .batch_lines import DEAD_PREFIX, RequestLine, Spool, answer_record, dead_record
from .batch_wire import QueueFull
from .dialects import dialect_for
from .settings import EnrichConfig
from .store import Store

log = logging.getLogger(__name__)
Stage = Callable[[str], None]  # called at "upload", "created", "polling", "download" (a test's kill point)


@dataclass
class BatchReport:
    """What batch mode did in this run."""

    selected_lines: int = 0  # distinct prompts not in the cache when the run started
    batches_created: int = 0
    lines_submitted: int = 0
    answered: int = 0
    gave_up: int = 0  # lines past retry.max_attempts batches: online fallback or dead letters
    queue_refusals: int = 0  # creates the provider refused for its queue (waited for, then created again)
    by_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [input, output] tokens answered

    def add_tokens(self, model: str, input_tokens: int, output_tokens: int) -> None:
        paid = self.by_model.setdefault(model, [0, 0])
        paid[0] += input_tokens
        paid[1] += output_tokens


class BatchDriver:
    def __init__(
        self,
        cfg: EnrichConfig,
        assets: Assets,
        api_key: str,
        store: Store,
        ledger: str,
        run: str,
        workdir: Path,
        say: Callable[[str], None],
        on_stage: Stage = lambda _stage: None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg, self.assets, self.api_key, self.store = cfg, assets, api_key, store
        self.ledger, self.run_id = RunLedger(store, ledger, run), run  # the key's ledger; this run's key
        self.workdir, self.say, self.on_stage, self.clock, self.sleep = workdir, say, on_stage, clock, sleep
        self.wire = dialect_for(cfg.provider.kind).batches
        self.spool = Spool(workdir / "spool.jsonl")
        self.answered: set[str] = set()
        self.report = BatchReport()
        self.queue_cap = cfg.batch.max_enqueued_tokens  # lowered by the provider's queue refusals

    def pending(self, entries: dict[str, Entry]) -> set[str]:
        """Lines to put in a new batch: not answered, in no batch that has not ended, not past the attempts."""
        failed, limit = bl.failures(entries), self.cfg.retry.max_attempts
        return {c for c in self.spool.ids - self.answered - bl.in_flight(entries) if failed.get(c, 0) < limit}

    # ----- one run --------------------------------------------------------------
    def run(self, lines: Iterable[RequestLine], retry: bool = False) -> BatchReport:
        """Submit the uncached lines, follow every batch of the run to its end, read the results
        into the cache; returns what this run did. `retry`: the lines past their attempts get
        them again (--retry-dead-letters)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.report.selected_lines = self.spool.fill(lines, lambda cid: self.store.get_answer(cid) is not None)
        if retry:
            self.give_attempts_back()
        batch = self.cfg.batch
        interval, started = batch.poll_interval_s, self.clock()
        with self.wire.client(self.cfg.provider, self.api_key) as http:
            for entry in bl.waiting(self.ledger.entries()):  # what a killed run left half done
                self.resume(http, entry)
            while True:
                self.submit_within_queue(http)
                entries = self.ledger.entries()
                open_entries = bl.submitted(entries)
                if not open_entries:
                    if bl.waiting(entries) or self.pending(entries):
                        continue  # a create refused with nothing open counted as an attempt: go again
                    break
                ended_now = done = total = 0
                for entry in open_entries:
                    polled = self.wire.poll(http, entry["batch_id"])
                    self.on_stage("polling")
                    done, total = done + polled.done, total + max(polled.total, len(entry["lines"]))
                    if polled.ended and polled.queue_full:
                        self.refused(http, entry, polled.failure or "queue full", entry["batch_id"])
                    elif polled.ended:
                        self.download(http, entry, polled.failure, polled.status)
                    ended_now += polled.ended
                self.progress(self.ledger.entries(), done, total, started)
                if ended_now == 0:
                    self.sleep(interval)
                    interval = min(interval * batch.poll_backoff, batch.poll_max_s)
                else:
                    interval = batch.poll_interval_s
        self.give_up(self.ledger.entries())
        return self.report

    def give_attempts_back(self) -> None:
        """--retry-dead-letters: the lines it re-runs that used up their batches get them again
        (recorded as a `retried` entry, so a rerun of a killed retry counts from there too)."""
        entries = self.ledger.entries()
        failed, busy = bl.failures(entries), bl.in_flight(entries)
        spent = sorted(c for c in self.spool.ids if failed.get(c, 0) >= self.cfg.retry.max_attempts and c not in busy)
        if spent:
            self.ledger.add(RETRIED, spent)

    def resume(self, http: httpx.Client, entry: Entry) -> None:
        """A killed run's entry that was not recorded as created: keep the lines still to do,
        find its upload and adopt its batch if the provider has them; else it waits to be created."""
        wire, name = self.wire, entry["name"]
        entry["lines"] = [c for c in entry["lines"] if c in self.spool.ids]
        entry["tokens"] = self.spool.tokens_of(entry["lines"])
        if not entry["lines"]:
            entry.update(state=ENDED, failed={}, status="empty")
            self.ledger.put(entry)
            return
        if entry["state"] == PREPARED and wire.uploads:
            file_id = wire.find_upload(http, name + ".jsonl")
            if file_id is not None:
                entry.update(state=UPLOADED, file_id=file_id)
                self.ledger.put(entry)
        if entry["state"] in (UPLOADED, CREATING):
            batch_id = wire.find_created(http, self.run_id, entry, self.ledger.known_batches())
            if batch_id is not None:
                log.info("batch ledger: adopting %s, created by a run that was killed (%s)", batch_id, name)
                entry.update(state=SUBMITTED, batch_id=batch_id)
                self.ledger.put(entry)
                (self.workdir / f"{name}.jsonl").unlink(missing_ok=True)
                return
        if entry["state"] == CREATING:
            entry["state"] = UPLOADED if entry.get("file_id") else PREPARED
            self.ledger.put(entry)

    def submit_within_queue(self, http: httpx.Client) -> None:
        """Create the waiting entries, then new batches of the pending lines, oldest first, while
        the run's open batches leave room in the enqueued-token queue (a batch is always created
        when none is open, so one over the queue alone still goes, and fails as the provider says)."""
        batch, entries = self.cfg.batch, self.ledger.entries()
        running = bl.submitted(entries)
        room = self.queue_cap - bl.enqueued_tokens(running, self.spool.tokens_of)
        for entry in bl.waiting(entries):
            tokens = int(entry.get("tokens", self.spool.tokens_of(entry["lines"])))
            if (running and tokens > room) or not self.create(http, entry, beside=bool(running)):
                return  # oldest first: nothing jumps the queue
            room, running = room - tokens, [entry]
        cuts = self.spool.cut(self.pending(entries), batch.max_lines, batch.max_bytes, batch.max_enqueued_tokens)
        for group in cuts:
            tokens = self.spool.tokens_of(group)
            if running and tokens > room:
                return
            if not self.create(http, entry := self.ledger.add(PREPARED, group, tokens=tokens), bool(running)):
                return
            room, running = room - tokens, [entry]

    def batch_file(self, entry: Entry) -> Path:
        if not (path := self.workdir / f"{entry['name']}.jsonl").exists():
            entry["bytes"] = self.spool.write(entry["lines"], path)
        return path

    def create(self, http: httpx.Client, entry: Entry, beside: bool) -> bool:
        """Take a waiting entry to `submitted`, recording each step first (`beside`: other batches
        of the run are open); False if the provider refused it for its queue."""
        wire, name = self.wire, entry["name"]
        if entry["state"] == PREPARED and wire.uploads:
            file_id = wire.upload(http, name + ".jsonl", self.batch_file(entry))
            self.on_stage("upload")
            entry.update(state=UPLOADED, file_id=file_id)
            self.ledger.put(entry)
        entry.update(state=CREATING, beside=beside, **wire.mark(http))
        self.ledger.put(entry)
        path = None if wire.uploads else self.batch_file(entry)
        try:
            window = self.cfg.batch.completion_window
            batch_id = wire.create(http, name, self.run_id, path or Path(), entry.get("file_id"), window)
        except QueueFull as full:
            return self.refused(http, entry, str(full), None)
        self.on_stage("created")
        self.report.batches_created += 1
        self.report.lines_submitted += len(entry["lines"])
        entry.update(state=SUBMITTED, batch_id=batch_id)
        self.ledger.put(entry)
        (self.workdir / f"{name}.jsonl").unlink(missing_ok=True)
        return True

    def refused(self, http: httpx.Client, entry: Entry, reason: str, batch_id: str | None) -> bool:
        """The provider refused the entry's batch for its queue: with other batches of the run
        open, the run's queue becomes what they hold and the entry waits (no attempt counted);
        created beside batches that have ended since, it goes again; created alone, it counts as
        a failed attempt."""
        self.report.queue_refusals += 1
        if batch_id is not None:
            entry["refused"] = [*entry.get("refused", []), batch_id]  # never to be adopted
        entry.pop("batch_id", None)
        others = [e for e in bl.submitted(self.ledger.entries()) if e["name"] != entry["name"]]
        if others or entry.get("beside"):
            self.queue_cap = min(self.queue_cap, bl.enqueued_tokens(others, self.spool.tokens_of) or self.queue_cap)
            log.info("batch %s refused for the queue; %d open batch(es) of the run", entry["name"], len(others))
            entry["state"] = UPLOADED if entry.get("file_id") else PREPARED
            self.ledger.put(entry)
            return False
        failed = {cid: f"refused for the queue: {reason}" for cid in entry["lines"]}
        self.end(http, entry, failed, "refused")
        return False

    def download(self, http: httpx.Client, entry: Entry, failure: str | None, status: str) -> None:
        """Read an ended batch's results into the answer cache, answer by answer (a kill here
        loses nothing: the entry stays `submitted` and the next run reads them again)."""
        lines = set(entry["lines"])
        prior = bl.failures(self.ledger.entries())
        failed: dict[str, str] = {}
        seen: set[str] = set()
        for result in self.wire.results(http, entry["batch_id"]):
            cid = result.custom_id
            if cid not in lines or cid in seen:
                continue
            seen.add(cid)
            if result.body is None:
                failed[cid] = result.error or "no answer"
                continue
            record, why = answer_record(self.cfg, self.assets, result.body, prior.get(cid, 0) + 1)
            if record is None:
                failed[cid] = why or "no answer"
                continue
            self.store.put_answer(cid, record)
            self.answered.add(cid)
            self.report.answered += 1
            self.report.add_tokens(str(record["model"]), record["input_tokens"], record["output_tokens"])
            if len(seen) == 1:
                self.on_stage("download")
        for cid in lines - seen:
            failed[cid] = failure or f"no result for this line (batch {status})"
        self.end(http, entry, failed, status)

    def end(self, http: httpx.Client, entry: Entry, failed: dict[str, str], status: str) -> None:
        entry.update(state=ENDED, failed=failed, status=status)
        self.ledger.put(entry)
        if entry.get("file_id"):
            try:
                self.wire.delete_upload(http, entry["file_id"])  # the input file has served
            except Exception as exc:  # housekeeping only
                log.info("could not delete input file %s: %s", entry["file_id"], exc)

    def give_up(self, entries: dict[str, Entry]) -> None:
        """Lines past retry.max_attempts batches: left to the online path, or dead letters."""
        failed, why = bl.failures(entries), bl.reasons(entries)
        for cid in self.spool.ids - self.answered:
            if failed.get(cid, 0) < self.cfg.retry.max_attempts:
                continue
            self.report.gave_up += 1
            if self.cfg.batch.fallback == "none":
                self.store.put_answer(DEAD_PREFIX + cid, dead_record(self.cfg, self.assets, why[cid], failed[cid]))

    def progress(self, entries: dict[str, Entry], done: int, total: int, started: float) -> None:
        batches = [e for e in entries.values() if e["state"] != RETRIED]
        ended, held = sum(e["state"] == ENDED for e in batches), len(bl.waiting(entries))
        elapsed = self.clock() - started
        eta = f"{(total - done) * elapsed / done:.0f} s" if 0 < done < total else "-"
        self.say(
            f"enrich batch: batches {ended}/{len(batches)} ended ({held} waiting for the queue), lines done "
            f"{done}/{total} in open batches, answered {len(self.answered)}/{len(self.spool.ids)}, ETA {eta}"
        )
