"""The request lines of batch mode and what comes back for them (pure, except the
spool's file): a selected row becomes one line whose custom_id is its prompt's
cache key (assets.prompt_of), built by the same request builder as an online
call, with its tokens at most (prompt estimate + max_tokens, as --dry-run counts
them); the driver keeps the job's distinct lines in a spool file on disk and
cuts batches out of it under the line, byte and enqueued-token limits; a result line's completion
body is checked against the schema exactly as an online answer is
(answers.parse_answer) and becomes the record the answer cache holds."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, KeysView
from pathlib import Path
from typing import Any

from .answers import AnswerError, parse_answer
from .assets import Assets, Row, prompt_of, request_params
from .calls import Constraint
from .dialects import dialect_for
from .result import DEAD_LETTER, ENRICHED
from .settings import EnrichConfig
from .tokens import TokenEstimator, call_tokens

DEAD_PREFIX = "batch-dead:"  # the store key of a line that batch mode gave up on (fallback "none")


RequestLine = tuple[str, str, int]  # custom_id, the line as JSON, its tokens at most


def request_lines(rows: Iterable[Row], cfg: EnrichConfig, assets: Assets) -> Iterator[RequestLine]:
    """(custom_id, the line as JSON, tokens at most) for each row with text; a row without text
    gets no line (the runner dead-letters it without a call, as online)."""
    dialect = dialect_for(cfg.provider.kind)
    params = request_params(cfg, assets)
    method = Constraint(cfg.provider.structured_output).method  # what online's first call would use
    system = assets.template.system
    estimator = TokenEstimator()  # the dry run's: no usage seen yet
    for row in rows:
        text = row.get(cfg.text_column)
        if not isinstance(text, str) or not text.strip():
            continue
        custom_id, user = prompt_of(cfg, assets, params, row)
        body = dialect.request(cfg.provider, system, [{"role": "user", "content": user}], assets.schema.schema, method)
        line = json.dumps(dialect.batches.line(custom_id, body), ensure_ascii=False)
        yield custom_id, line, call_tokens(cfg, system, user, estimator)


class Spool:
    """The job's distinct request lines in a JSONL file (one line each), so a batch is cut
    from disk and never held whole in memory; each line's tokens at most stay in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokens: dict[str, int] = {}

    @property
    def ids(self) -> KeysView[str]:
        return self.tokens.keys()

    def fill(self, lines: Iterable[RequestLine], skip: Any) -> int:
        """Write each custom_id once, leaving out those `skip(custom_id)` says are answered."""
        with self.path.open("w", encoding="utf-8") as fh:
            for custom_id, text, tokens in lines:
                if custom_id in self.tokens or skip(custom_id):
                    continue
                self.tokens[custom_id] = int(tokens)
                fh.write(text + "\n")
        return len(self.tokens)

    def tokens_of(self, ids: Iterable[str]) -> int:
        return sum(self.tokens.get(c, 0) for c in ids)

    def cut(self, wanted: set[str], max_lines: int, max_bytes: int, max_tokens: int) -> Iterator[list[str]]:
        """The wanted custom_ids in spool order, in groups under the limits (a line over a
        limit on its own makes a group of one)."""
        group: list[str] = []
        size = tokens = 0
        with self.path.open("rb") as fh:
            for text in fh:
                custom_id = json.loads(text)["custom_id"]
                if custom_id not in wanted:
                    continue
                more = self.tokens[custom_id]
                full = len(group) >= max_lines or size + len(text) > max_bytes or tokens + more > max_tokens
                if group and full:
                    yield group
                    group, size, tokens = [], 0, 0
                group.append(custom_id)
                size, tokens = size + len(text), tokens + more
        if group:
            yield group

    def write(self, ids: Iterable[str], path: Path) -> int:
        """The lines of `ids` as a batch file; returns its size in bytes."""
        wanted, size = set(ids), 0
        with self.path.open("rb") as src, path.open("wb") as out:
            for text in src:
                if json.loads(text)["custom_id"] in wanted:
                    out.write(text)
                    size += len(text)
        return size


def answer_record(
    cfg: EnrichConfig, assets: Assets, body: dict[str, Any], attempts: int
) -> tuple[dict[str, Any] | None, str | None]:
    """(the record to cache, None) for a schema-valid answer, else (None, why not)."""
    dialect = dialect_for(cfg.provider.kind)
    try:
        answer = dialect.batch_reply(body)
    except ValueError as exc:
        return None, f"malformed result body: {str(exc)[:200]}"
    try:
        fields = parse_answer(answer.text, assets.schema, cfg.max_answer_chars)
    except AnswerError as exc:
        return None, str(exc)
    record: dict[str, Any] = {"status": ENRICHED, **{name: fields.get(name) for name in assets.schema.fields}}
    record.update(
        raw_answer=answer.text[: cfg.max_answer_chars],
        input_tokens=answer.input_tokens or 0,
        output_tokens=answer.output_tokens or 0,
        latency_ms=None,
        ttft_ms=None,
        attempts=attempts,
        provider=cfg.provider.kind,
        model=answer.model or cfg.provider.model,
        template=assets.template.id,
        request_id=answer.request_id,
        error=None,
        via="batch",
    )
    return record, None


def dead_record(cfg: EnrichConfig, assets: Assets, reason: str, attempts: int) -> dict[str, Any]:
    """A line batch mode gave up on (fallback "none"): a dead letter with the batches' reason."""
    record: dict[str, Any] = {"status": DEAD_LETTER, **{name: None for name in assets.schema.fields}}
    record.update(
        raw_answer=None,
        input_tokens=0,
        output_tokens=0,
        latency_ms=None,
        ttft_ms=None,
        attempts=attempts,
        provider=cfg.provider.kind,
        model=cfg.provider.model,
        template=assets.template.id,
        request_id=None,
        error=f"batch: {reason} (after {attempts} batch(es))",
    )
    return record
