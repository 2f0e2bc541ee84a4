"""One run's entries in the batch ledger (Store.ledger_put / ledger_read), and what the
batch driver reads from them: which lines failed how often, which are in flight,
which batches wait for room in the provider's queue and how many tokens are
enqueued. The ledger is kept per API key and endpoint; each entry carries its
run's key, and a run reads and writes only its own entries.

An entry is one batch's worth of lines, in one of these states:

  prepared  -> its lines are chosen (custom_id = the prompt's cache key)
  uploaded  -> OpenAI: the input file is up (file_id)
  creating  -> the create request is about to go (with the wire's mark: Anthropic's newest batch)
  submitted -> the batch id is recorded; polled until it ends
  ended     -> its results were read into the cache; `failed` holds each failed line's reason
  retried   -> not a batch: --retry-dead-letters gave these lines their attempts again

An entry the provider refused for its queue goes back to prepared or uploaded (the
refused batch id, if the provider made one, in `refused`) and waits for room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .store import Store

PREPARED, UPLOADED, CREATING, SUBMITTED, ENDED = "prepared", "uploaded", "creating", "submitted", "ended"
RETRIED = "retried"
NOT_CREATED = (PREPARED, UPLOADED, CREATING)
Entry = dict[str, Any]


class RunLedger:
    def __init__(self, store: Store, ledger: str, run: str) -> None:
        self.store, self.ledger, self.run = store, ledger, run

    def entries(self) -> dict[str, Entry]:
        """This run's entries (other runs on the key and store are not this run's to wait for)."""
        return {n: e for n, e in self.store.ledger_read(self.ledger).items() if e.get("run") == self.run}

    def known_batches(self) -> set[str]:
        """Every batch id some run on this key has recorded (refused ones too): never one to
        adopt as this run's."""
        known: set[str] = set()
        for e in self.store.ledger_read(self.ledger).values():
            known.update(str(b) for b in e.get("refused", ()))
            if e.get("batch_id"):
                known.add(str(e["batch_id"]))
        return known

    def put(self, entry: Entry) -> None:
        self.store.ledger_put(self.ledger, entry["name"], entry)

    def add(self, state: str, lines: list[str], **fields: Any) -> Entry:
        seq = 1 + max((int(e["seq"]) for e in self.entries().values()), default=0)
        entry = {"name": f"{self.run}-{seq:05d}", "run": self.run, "seq": seq, "state": state, "lines": lines, **fields}
        self.put(entry)
        return entry


def by_seq(entries: dict[str, Entry]) -> list[Entry]:
    return sorted(entries.values(), key=lambda e: int(e["seq"]))


def failures(entries: dict[str, Entry]) -> dict[str, int]:
    """custom_id -> batches that failed it since its attempts were last given back."""
    count: dict[str, int] = {}
    for e in by_seq(entries):
        if e["state"] == RETRIED:
            for cid in e["lines"]:
                count.pop(cid, None)
        elif e["state"] == ENDED:
            for cid in e.get("failed", {}):
                count[cid] = count.get(cid, 0) + 1
    return count


def reasons(entries: dict[str, Entry]) -> dict[str, str]:
    """custom_id -> the latest reason a batch failed it."""
    return {cid: r for e in by_seq(entries) for cid, r in e.get("failed", {}).items()}


def in_flight(entries: dict[str, Entry]) -> set[str]:
    """Lines in a batch that has not ended (or waits to be created)."""
    return {cid for e in entries.values() if e["state"] not in (ENDED, RETRIED) for cid in e["lines"]}


def submitted(entries: dict[str, Entry]) -> list[Entry]:
    return [e for e in by_seq(entries) if e["state"] == SUBMITTED]


def waiting(entries: dict[str, Entry]) -> list[Entry]:
    """Entries not created yet (a killed run's, or held for the queue), oldest first."""
    return [e for e in by_seq(entries) if e["state"] in NOT_CREATED]


def enqueued_tokens(open_entries: Iterable[Entry], tokens_of: Callable[[Iterable[str]], int]) -> int:
    """Tokens at most of these open batches (the provider's queue holds them until they end)."""
    return sum(int(e.get("tokens", tokens_of(e["lines"]))) for e in open_entries)
