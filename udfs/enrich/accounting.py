"""Accounting for the enrich stage: the price table (conf/llm_prices.toml), the
end-of-run totals (rows in = enriched + dead-lettered + not selected; calls,
cache hits and tokens of this run only) with their cost, priced by the model
that answered each row, and the --dry-run report."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .result import DEAD_LETTER, ENRICHED


@dataclass(frozen=True)
class ModelPrice:
    input_per_mtok: float
    output_per_mtok: float
    # The Batch API's prices (enrich.mode = "batch"); None when the table gives none.
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000

    def batch_cost(self, input_tokens: int, output_tokens: int) -> float | None:
        if self.batch_input_per_mtok is None or self.batch_output_per_mtok is None:
            return None
        return (input_tokens * self.batch_input_per_mtok + output_tokens * self.batch_output_per_mtok) / 1_000_000


class PriceError(ValueError):
    """A bad price table; the message names the file and the entry."""


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, ModelPrice]

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise PriceError(f"{path}: no such price table") from None
        except tomllib.TOMLDecodeError as exc:
            raise PriceError(f"{path}: not valid TOML: {exc}") from None
        prices: dict[str, ModelPrice] = {}
        for model, entry in (data.get("models") or {}).items():
            try:
                batch = [entry.get(k) for k in ("batch_input_per_mtok", "batch_output_per_mtok")]
                price = ModelPrice(
                    float(entry["input_per_mtok"]),
                    float(entry["output_per_mtok"]),
                    *(None if b is None else float(b) for b in batch),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise PriceError(
                    f"{path}: models.{model}: needs numbers input_per_mtok and output_per_mtok ({exc})"
                ) from None
            if min(price.input_per_mtok, price.output_per_mtok, *(b for b in batch if b is not None)) < 0:
                raise PriceError(f"{path}: models.{model}: prices must not be negative")
            for name in [model, *entry.get("aliases", [])]:
                prices[name] = price
        return cls(prices)

    def price(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)


@dataclass
class EnrichTotals:
    """The end-of-run line: rows in = enriched + dead-lettered + not selected,
    calls made, cache hits, tokens, cost. Calls and tokens count only rows
    answered by a call in this run (cached rows were paid for before)."""

    rows_in: int = 0
    enriched: int = 0
    dead_letter: int = 0
    not_selected: int = 0
    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    by_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [input, output] tokens paid

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one selected row's output (either status)."""
        self.add_group(
            row.get("status"),
            bool(row.get("cached")),
            row.get("model"),
            1,
            row.get("attempts"),
            row.get("input_tokens"),
            row.get("output_tokens"),
        )

    def add_group(
        self,
        status: Any,
        cached: bool,
        model: Any,
        rows: int,
        attempts: Any,
        input_tokens: Any,
        output_tokens: Any,
        count_cache_hit: bool = True,
    ) -> None:
        """Count `rows` outputs of one status that share cached and model,
        with their summed attempts and tokens (a Spark groupBy's row)."""
        if status == ENRICHED:
            self.enriched += rows
        elif status == DEAD_LETTER:
            self.dead_letter += rows
        else:
            raise ValueError(f"unknown enrich status {status!r}")
        if cached:
            self.cache_hits += rows if count_cache_hit else 0
            return
        tin, tout = int(input_tokens or 0), int(output_tokens or 0)
        self.calls += int(attempts or 0)
        self.input_tokens += tin
        self.output_tokens += tout
        paid = self.by_model.setdefault(str(model or ""), [0, 0])
        paid[0] += tin
        paid[1] += tout

    def add_all(self, rows: Iterable[Mapping[str, Any]]) -> EnrichTotals:
        for row in rows:
            self.add(row)
        return self

    def merge(self, other: EnrichTotals) -> EnrichTotals:
        """Add another run's (or micro-batch's) counts to these."""
        for name in ("rows_in", "enriched", "dead_letter", "not_selected", "calls", "cache_hits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        for model, (tin, tout) in other.by_model.items():
            paid = self.by_model.setdefault(model, [0, 0])
            paid[0] += tin
            paid[1] += tout
        return self

    def check(self) -> None:
        """Every input row is accounted for exactly once."""
        if self.rows_in != self.enriched + self.dead_letter + self.not_selected:
            raise RuntimeError(
                f"enrich: rows in {self.rows_in} != enriched {self.enriched} + dead-lettered "
                f"{self.dead_letter} + not selected {self.not_selected}"
            )

    def cost(self, prices: PriceTable) -> float | None:
        """US dollars for the tokens paid in this run; None when a model has no price."""
        total = 0.0
        for model, (tin, tout) in self.by_model.items():
            if tin == 0 and tout == 0:
                continue
            price = prices.price(model)
            if price is None:
                return None
            total += price.cost(tin, tout)
        return total

    def report(self, prices: PriceTable) -> list[str]:
        cost = self.cost(prices)
        return [
            f"enrich: rows in {self.rows_in} = enriched {self.enriched} + dead-lettered {self.dead_letter} "
            f"+ not selected {self.not_selected}",
            f"  calls made {self.calls}, cache hits {self.cache_hits}, "
            f"tokens {self.input_tokens} in + {self.output_tokens} out, estimated cost {format_cost(cost)}",
        ]


def format_cost(cost: float | None) -> str:
    return "unknown (model not in the price table)" if cost is None else f"${cost:.4f}"


def dry_run_report(
    rows_in: int,
    selected: int,
    calls: int,
    est_input_tokens: int,
    est_output_tokens: int,
    model: str,
    prices: PriceTable,
    batches: int | None = None,
) -> list[str]:
    """What a run would send: calls (cached prompts excluded), estimated tokens
    (prompt tokens counted, output at max_tokens: an upper bound) and cost; in
    batch mode (`batches`: how many it would create) the batch cost beside the online one."""
    price = prices.price(model)
    cost = None if price is None else price.cost(est_input_tokens, est_output_tokens)
    lines = [
        f"enrich --dry-run: rows in {rows_in}, selected {selected} (not selected {rows_in - selected})",
        f"  would make {calls} calls to {model}, estimated tokens {est_input_tokens} in + at most "
        f"{est_output_tokens} out, estimated cost at most {format_cost(cost)}",
    ]
    if batches is not None:
        batch_cost = None if price is None else price.batch_cost(est_input_tokens, est_output_tokens)
        lines.append(
            f"  batch mode: {batches} batch(es) of {calls} lines; cost at most {format_cost(batch_cost)} "
            f"at batch prices vs {format_cost(cost)} online"
        )
    return lines


def batch_report(report: Any, prices: PriceTable) -> list[str]:
    """The batch phase's line: batches, lines, and the discount obtained on the answered lines."""
    batch_cost: float | None = 0.0
    online: float | None = 0.0
    for model, (tin, tout) in report.by_model.items():
        price = prices.price(model)
        b = None if price is None else price.batch_cost(tin, tout)
        o = None if price is None else price.cost(tin, tout)
        batch_cost = None if b is None or batch_cost is None else batch_cost + b
        online = None if o is None or online is None else online + o
    saved = "unknown" if batch_cost is None or online is None else f"${online - batch_cost:.4f}"
    refused = report.queue_refusals
    queue = f" ({refused} refused for the enqueued-token queue)" if refused else ""
    return [
        f"  batch mode: {report.batches_created} batch(es) created{queue}, {report.lines_submitted} lines submitted, "
        f"{report.answered} answered, {report.gave_up} past the attempts; cost {format_cost(batch_cost)} at batch "
        f"prices vs {format_cost(online)} online (saved {saved})"
    ]


def estimate_counts(rows: list[dict[str, Any]], ecfg: Any, assets: Any, store: Any) -> tuple[int, int, int]:
    """(calls, input tokens, output tokens at most) that `rows` would cost,
    from udfs.enrich.runner.estimate (prompt tokens + max_tokens per call;
    prompts already answered in the store cost nothing)."""
    from .tokens import estimate

    calls, est_tokens = estimate(rows, ecfg, assets, store)
    output = int(calls) * int(ecfg.provider.max_tokens)
    return int(calls), max(0, int(est_tokens) - output), output
