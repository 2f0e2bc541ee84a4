"""What the enrich job's two drivers (the Spark job and the mrjob twin) do
around the calls, once: resolve the settings' paths and the cache, read the
key, name the job (so a rerun finds its claims, cache and counters), declare
the options both commands offer, decide the dead letters' location, count
what --retry-dead-letters keeps, and turn the totals into the summary both print.
Plain Python, no pyspark and no mrjob (the engines' adapters are
jobs/spark/enrich.py and jobs/mapreduce/mr_enrich_rows.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .accounting import EnrichTotals, PriceTable, dry_run_report
from .settings import EnrichConfig


class ApiKeyMissing(RuntimeError):
    """The environment variable the config names holds no key."""


def read_api_key(env_name: str, environ: Mapping[str, str] | None = None, key_file: str | None = None) -> SecretStr:
    """The key from the variable the config names, else (where given) from
    key_file, the private file the twin's driver ships to tasks in YARN
    containers, which do not inherit the client's environment; wrapped so
    that repr(), str() and pickled closures' reprs show '**********', never the key."""
    value = (os.environ if environ is None else environ).get(env_name, "")
    if not value.strip() and key_file:
        value = Path(key_file).read_text()
    if not value.strip():
        raise ApiKeyMissing(f"no API key: the environment variable {env_name} (enrich.api_key_env) is unset or empty")
    return SecretStr(value.strip())


def job_id_for(*parts: str) -> str:
    """A job id that the same command gives again (so a rerun after a crash
    finds its claims, cache and counters): a hash of the output location."""
    digest = hashlib.sha256("\0".join(p.rstrip("/") for p in parts).encode()).hexdigest()
    return f"enrich-{digest[:16]}"


def resolved_settings(ecfg: EnrichConfig, root: Path, cache: str | None) -> EnrichConfig:
    """The [enrich] settings with relative paths resolved against the project
    root (tasks may run elsewhere) and --cache DIR as the SQLite store's directory."""

    def absolute(p: str) -> str:
        return p if Path(p).is_absolute() or "://" in p else str(root / p)

    store_path = str(Path(cache) / "store.sqlite") if cache else ecfg.store.path
    return ecfg.model_copy(
        update={
            "prompts_dir": absolute(ecfg.prompts_dir),
            "answer_schema": absolute(ecfg.answer_schema),
            "prices": absolute(ecfg.prices),
            "store": ecfg.store.model_copy(update={"path": absolute(store_path)}),
        }
    )


def add_progress_arg(parser: Any) -> None:
    """--progress / --no-progress on an argparse parser (both enrich commands). The default is
    the documented AIBATCH_PROGRESS=1, which submit.sh sets when its stderr is a terminal
    (spark-submit pipes the Python driver's output, so the driver cannot see that itself)."""
    import argparse

    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("AIBATCH_PROGRESS", "").strip() == "1",
        help="a progress bar on stderr: rows done, ETA, calls in flight, 429s (default: when a terminal watches)",
    )


def add_enrich_args(add: Any) -> None:
    """The enrich options both commands offer, given the parser's add function (argparse's
    add_argument for Spark, mrjob's add_passthru_arg for the twin), so `--help` lists the
    same ones on both; each engine adds its own paths and tuning (--tasks, --batch-rows)."""
    add("--dead-letters", help="rows that failed, with their last error (default: OUTPUT_dead_letters)")
    add("--dry-run", action="store_true", help="print calls, estimated tokens and cost; call nothing")
    add(
        "--retry-dead-letters",
        action="store_true",
        help="re-run only the rows in the dead letters; write a complete new output and dead letters "
        "(replacing both: --overwrite implied)",
    )
    add(
        "--cancel",
        action="store_true",
        help="enrich.mode = batch: cancel the open batches of the run writing this output at the provider; "
        "write nothing",
    )
    add("--cache", help="directory of the answer cache and job budget (SQLite store; default: the config's)")
    add(
        "--sample-percent",
        type=float,
        default=100.0,
        help="enrich only the input rows whose id hashes below this per cent (rows in counts those; default 100)",
    )


def dead_letters_path(output: str, dead_letters: str | None) -> str:
    return dead_letters or output.rstrip("/") + "_dead_letters"


def count_kept(totals: EnrichTotals, status: Any, model: Any, rows: int) -> None:
    """--retry-dead-letters: `rows` of the previous output, kept as they were. They count
    among the enriched (rows in = enriched + dead-lettered + not selected) but neither as
    calls nor as cache hits of this run, which asked nothing for them."""
    totals.add_group(status, True, model, rows, 0, 0, 0, count_cache_hit=False)


def summary(totals: EnrichTotals, prices: PriceTable, output: str, dead_letters: str) -> dict[str, Any]:
    """The run's summary (both drivers print its lines and return it): checked totals."""
    totals.check()
    cost = totals.cost(prices)
    return {
        "dry_run": False,
        "lines": totals.report(prices),
        # US dollars for the tokens paid in this run (None: a model missing from the price table)
        "cost_usd": None if cost is None else round(cost, 6),
        "rows_in": totals.rows_in,
        "enriched": totals.enriched,
        "dead_letter": totals.dead_letter,
        "not_selected": totals.not_selected,
        "calls": totals.calls,
        "cache_hits": totals.cache_hits,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "output": output,
        "dead_letters": dead_letters,
    }


def dry_run_summary(
    rows_in: int,
    selected: int,
    calls: int,
    input_tokens: int,
    output_tokens: int,
    model: str,
    prices: PriceTable,
    batches: int | None = None,
) -> dict[str, Any]:
    """`batches`: in batch mode, how many batches the run would create (its cost printed beside online's)."""
    lines = dry_run_report(rows_in, selected, calls, input_tokens, output_tokens, model, prices, batches)
    price = prices.price(model)
    return {
        "dry_run": True,
        "lines": lines,
        # at most this many US dollars (output tokens at max_tokens); None: the model has no price
        "estimated_cost_usd": None if price is None else round(price.cost(input_tokens, output_tokens), 6),
        "rows_in": rows_in,
        "calls": calls,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
