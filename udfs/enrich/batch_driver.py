"""Batch mode's driver: the prompts not in the answer cache go through the
provider's Batch API, and what comes back goes into the same answer cache; the
engines' usual path then writes the outputs from the cache (so batch mode's
outputs are online mode's, rows answered from the cache).

Every step is recorded first in the batch ledger (the store beside the answers;
one per API key and endpoint, each entry tagged with its run's key, and this
driver reads and touches only its run's entries), so the same command after a
kill -9 anywhere submits no line twice:

  prepared  -> the entry's lines are chosen (custom_id = the prompt's cache key)
  uploaded  -> OpenAI: the input file is up (a killed upload is found by its name and reused)
  creating  -> the create request is about to go (a killed create's batch is found and adopted)
  submitted -> the batch id is recorded; polled until it ends
  ended     -> its results were read into the cache; `failed` holds each failed line's reason

A line whose batch failed it (errored, expired, cancelled, an answer that breaks
the schema) goes into a new batch, at most enrich.retry.max_attempts batches in
all; then enrich.batch.fallback decides: "online" leaves it uncached for the
online path, "none" stores a dead letter with the reason (batch_lines.DEAD_PREFIX).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .assets import Assets
from .batch_lines import DEAD_PREFIX, Spool, answer_record, dead_record
from .dialects import dialect_for
from .settings import EnrichConfig
from .store import Store

log = logging.getLogger(__name__)
PREPARED, UPLOADED, CREATING, SUBMITTED, ENDED = "prepared", "uploaded", "creating", "submitted", "ended"
Stage = Callable[[str], None]  # called at "upload", "created", "polling", "download" (a test's kill point)


@dataclass
class BatchReport:
    """What batch mode did in this run."""

    selected_lines: int = 0  # distinct prompts not in the cache when the run started
    batches_created: int = 0
    lines_submitted: int = 0
    answered: int = 0
    gave_up: int = 0  # lines past retry.max_attempts batches: online fallback or dead letters
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
        self.ledger, self.run_id = ledger, run  # the key's ledger; this run's key, in each of its entries
        self.workdir, self.say, self.on_stage, self.clock, self.sleep = workdir, say, on_stage, clock, sleep
        self.wire = dialect_for(cfg.provider.kind).batches
        self.spool = Spool(workdir / "spool.jsonl")
        self.answered: set[str] = set()
        self.report = BatchReport()

    # ----- the ledger -----------------------------------------------------------
    def entries(self) -> dict[str, dict[str, Any]]:
        """This run's entries (other runs on the key and store are not this run's to wait for)."""
        return {n: e for n, e in self.store.ledger_read(self.ledger).items() if e.get("run") == self.run_id}

    def known_batches(self) -> set[str]:
        """Every batch id some run on this key has recorded: never one to adopt as this run's."""
        return {str(e["batch_id"]) for e in self.store.ledger_read(self.ledger).values() if e.get("batch_id")}

    def put(self, entry: dict[str, Any]) -> None:
        self.store.ledger_put(self.ledger, entry["name"], entry)

    @staticmethod
    def failures(entries: dict[str, dict[str, Any]]) -> dict[str, int]:
        """custom_id -> batches that failed it."""
        count: dict[str, int] = {}
        for e in entries.values():
            for cid in e.get("failed", {}) if e["state"] == ENDED else ():
                count[cid] = count.get(cid, 0) + 1
        return count

    def pending(self, entries: dict[str, dict[str, Any]]) -> set[str]:
        """Lines to put in a new batch: not answered, in no open batch, not past the attempts."""
        in_flight = {cid for e in entries.values() if e["state"] != ENDED for cid in e["lines"]}
        failed = self.failures(entries)
        limit = self.cfg.retry.max_attempts
        return {c for c in self.spool.ids - self.answered - in_flight if failed.get(c, 0) < limit}

    # ----- one run --------------------------------------------------------------
    def run(self, lines: Iterable[tuple[str, str]]) -> BatchReport:
        """Submit the uncached lines, follow every batch of the run to its end, read the results
        into the cache; returns what this run did."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.report.selected_lines = self.spool.fill(lines, lambda cid: self.store.get_answer(cid) is not None)
        batch = self.cfg.batch
        interval, started = batch.poll_interval_s, self.clock()
        with self.wire.client(self.cfg.provider, self.api_key) as http:
            for entry in self.entries().values():  # what a killed run left half done
                if entry["state"] in (PREPARED, UPLOADED, CREATING):
                    self.submit(http, entry, resumed=True)
            while True:
                wanted = self.pending(self.entries())
                for group in self.spool.cut(wanted, batch.max_lines, batch.max_bytes):
                    self.submit(http, self.new_entry(group), resumed=False)
                entries = self.entries()
                open_entries = [e for e in entries.values() if e["state"] == SUBMITTED]
                if not open_entries:
                    break
                ended_now = 0
                done = total = 0
                for entry in open_entries:
                    polled = self.wire.poll(http, entry["batch_id"])
                    self.on_stage("polling")
                    done, total = done + polled.done, total + max(polled.total, len(entry["lines"]))
                    if polled.ended:
                        self.download(http, entry, polled.failure, polled.status)
                        ended_now += 1
                self.progress(entries, open_entries, done, total, started)
                if ended_now == 0:
                    self.sleep(interval)
                    interval = min(interval * batch.poll_backoff, batch.poll_max_s)
                else:
                    interval = batch.poll_interval_s
        self.give_up(self.entries())
        return self.report

    def new_entry(self, group: list[str]) -> dict[str, Any]:
        entries = self.entries()
        seq = 1 + max((int(e["seq"]) for e in entries.values()), default=0)
        entry = {"name": f"{self.run_id}-{seq:05d}", "run": self.run_id, "seq": seq, "state": PREPARED, "lines": group}
        self.put(entry)
        return entry

    def batch_file(self, entry: dict[str, Any]) -> Path:
        path = self.workdir / f"{entry['name']}.jsonl"
        if not path.exists():
            entry["bytes"] = self.spool.write(entry["lines"], path)
        return path

    def submit(self, http: httpx.Client, entry: dict[str, Any], resumed: bool) -> None:
        """Take an entry from wherever it stands to `submitted`, recording each step first."""
        wire, name = self.wire, entry["name"]
        if resumed:  # a killed run's entry: keep only the lines still to do (the spool has them)
            entry["lines"] = [c for c in entry["lines"] if c in self.spool.ids]
            if not entry["lines"]:
                entry.update(state=ENDED, failed={}, status="empty")
                self.put(entry)
                return
        if entry["state"] == PREPARED and wire.uploads:
            file_id = wire.find_upload(http, name + ".jsonl") if resumed else None
            if file_id is None:
                file_id = wire.upload(http, name + ".jsonl", self.batch_file(entry))
                self.on_stage("upload")
            entry.update(state=UPLOADED, file_id=file_id)
            self.put(entry)
        batch_id = None
        if resumed and entry["state"] in (UPLOADED, CREATING):
            since, n = float(entry.get("since", 0.0)), len(entry["lines"])
            batch_id = wire.find_created(http, name, self.run_id, entry.get("file_id"), since, n, self.known_batches())
            if batch_id is not None:
                log.info("batch ledger: adopting %s, created by a run that was killed (%s)", batch_id, name)
        if batch_id is None:
            entry.update(state=CREATING, since=self.clock())
            self.put(entry)
            path = None if wire.uploads else self.batch_file(entry)
            window = self.cfg.batch.completion_window
            batch_id = wire.create(http, name, self.run_id, path or Path(), entry.get("file_id"), window)
            self.on_stage("created")
            self.report.batches_created += 1
            self.report.lines_submitted += len(entry["lines"])
        entry.update(state=SUBMITTED, batch_id=batch_id)
        self.put(entry)
        (self.workdir / f"{name}.jsonl").unlink(missing_ok=True)

    def download(self, http: httpx.Client, entry: dict[str, Any], failure: str | None, status: str) -> None:
        """Read an ended batch's results into the answer cache, answer by answer (a kill here
        loses nothing: the entry stays `submitted` and the next run reads them again)."""
        lines = set(entry["lines"])
        prior = self.failures(self.entries())
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
        entry.update(state=ENDED, failed=failed, status=status)
        self.put(entry)
        if entry.get("file_id"):
            try:
                self.wire.delete_upload(http, entry["file_id"])  # the input file has served
            except Exception as exc:  # housekeeping only
                log.info("could not delete input file %s: %s", entry["file_id"], exc)

    def give_up(self, entries: dict[str, dict[str, Any]]) -> None:
        """Lines past retry.max_attempts batches: left to the online path, or dead letters."""
        failed = self.failures(entries)
        reasons = {
            cid: r for e in sorted(entries.values(), key=lambda e: e["seq"]) for cid, r in e.get("failed", {}).items()
        }
        for cid in self.spool.ids - self.answered:
            if failed.get(cid, 0) < self.cfg.retry.max_attempts:
                continue
            self.report.gave_up += 1
            if self.cfg.batch.fallback == "none":
                self.store.put_answer(DEAD_PREFIX + cid, dead_record(self.cfg, self.assets, reasons[cid], failed[cid]))

    def progress(
        self,
        entries: dict[str, dict[str, Any]],
        open_entries: list[dict[str, Any]],
        done: int,
        total: int,
        started: float,
    ) -> None:
        ended = len(entries) - len(open_entries)
        elapsed = self.clock() - started
        eta = f"{(total - done) * elapsed / done:.0f} s" if 0 < done < total else "-"
        self.say(
            f"enrich batch: batches {ended}/{len(entries)} ended, lines done {done}/{total} in open batches, "
            f"answered {len(self.answered)}/{len(self.spool.ids)}, ETA {eta}"
        )

    def cancel(self) -> list[str]:
        """Cancel this run's batches that have not ended (and a killed run's half-created one);
        other runs' batches on the same key and store are left alone."""
        cancelled = []
        with self.wire.client(self.cfg.provider, self.api_key) as http:
            known = self.known_batches()
            for entry in self.entries().values():
                batch_id = entry.get("batch_id")
                if entry["state"] in (UPLOADED, CREATING):
                    since, n, file_id = float(entry.get("since", 0.0)), len(entry["lines"]), entry.get("file_id")
                    batch_id = self.wire.find_created(http, entry["name"], self.run_id, file_id, since, n, known)
                    if batch_id is not None:
                        entry.update(state=SUBMITTED, batch_id=batch_id)
                        self.put(entry)
                if batch_id is not None and entry["state"] == SUBMITTED:
                    self.wire.cancel(http, batch_id)
                    cancelled.append(batch_id)
        return cancelled
