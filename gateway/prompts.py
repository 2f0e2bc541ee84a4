"""The canonical form of an admitted prompt, its hash, and the per-key ledger of
hashes the admin endpoint exposes (so a client test can prove no prompt was
paid for twice).

The canonical prompt is what a dialect parsed out of the request: the model
name as the client sent it, the system text, the (role, text) messages, the
effective max_tokens and the temperature. Its hash is the SHA-256 hex digest of
that JSON document written with sorted keys, no spaces, UTF-8 as is:

    {"max_tokens":64,"messages":[["user","hi"]],"model":"gpt-4o-mini","system":"","temperature":0.0}

OpenAI system/developer messages are joined with "\\n" into `system` (as the
Anthropic dialect's top-level `system`); content parts are concatenated; a
missing temperature is null; an integer temperature is written as a float.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence


def canonical_prompt(
    model: str, system: str, messages: Sequence[tuple[str, str]], max_tokens: int, temperature: float | None
) -> bytes:
    document = {
        "model": model,
        "system": system,
        "messages": [[role, text] for role, text in messages],
        "max_tokens": max_tokens,
        "temperature": None if temperature is None else float(temperature),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def prompt_hash(
    model: str, system: str, messages: Sequence[tuple[str, str]], max_tokens: int, temperature: float | None
) -> str:
    return hashlib.sha256(canonical_prompt(model, system, messages, max_tokens, temperature)).hexdigest()


class PromptLedger:
    """How many times each prompt hash was admitted for one key."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def record(self, digest: str) -> None:
        self.counts[digest] += 1

    def summary(self) -> dict[str, int]:
        return {
            "admitted": sum(self.counts.values()),
            "distinct": len(self.counts),
            "repeated": sum(1 for n in self.counts.values() if n > 1),
        }

    def snapshot(self) -> dict[str, object]:
        return {**self.summary(), "prompts": dict(self.counts)}


class BatchLineLedger:
    """Batch lines of one key by custom_id: how often each was admitted into a
    batch (it passed validation and the queue limit) and how often answered
    successfully, so a client test can prove no line was submitted or paid twice."""

    def __init__(self) -> None:
        self.admitted: Counter[str] = Counter()
        self.succeeded: Counter[str] = Counter()

    def admit(self, custom_ids: Sequence[str]) -> None:
        self.admitted.update(custom_ids)

    def succeed(self, custom_id: str) -> None:
        self.succeeded[custom_id] += 1

    def summary(self) -> dict[str, int]:
        return {
            "admitted": sum(self.admitted.values()),
            "distinct": len(self.admitted),
            "repeated": sum(1 for n in self.admitted.values() if n > 1),
            "succeeded": sum(self.succeeded.values()),
            "succeeded_repeated": sum(1 for n in self.succeeded.values() if n > 1),
        }

    def snapshot(self) -> dict[str, object]:
        return {**self.summary(), "custom_ids": dict(self.admitted), "succeeded_ids": dict(self.succeeded)}
