"""What both enrich drivers (the Spark job and the mrjob twin's launcher) call for
`enrich.mode = "batch"`: run the batch driver over the request lines the tasks
made, cancel the open batches (`--cancel`), count the batches a dry run would
create, and the documented kill hook the crash tests use.

The ledger is kept per API key and endpoint (the budget's namespace), and each
entry carries its run's key (run_key: the final output as the user named it,
plus the provider's endpoint and model), so a rerun of the same command on
either engine picks up its own batches, while --cancel and the waiting touch
only this run's: another job on the same key and store is left alone. The
whole key's ledger still says which batch ids some run has recorded, so
adopting a batch a killed run created never takes another run's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .accounting import PriceTable, batch_report
from .assets import Assets
from .batch_driver import BatchDriver, Stage
from .batch_ledger import CREATING, SUBMITTED, UPLOADED, RunLedger
from .batch_lines import RequestLine
from .dialects import dialect_for
from .runner import budget_namespace
from .settings import EnrichConfig
from .store import Store

# Test hook (documented in docs/enrichment.md): the driver kills itself with SIGKILL at this
# batch stage (upload, created, polling, download), exactly where a crash hurts most.
KILL_AT_ENV = "AIBATCH_ENRICH_BATCH_KILL_AT"
LINE_OVERHEAD_BYTES = 300  # a request line's JSON besides the prompt and the schema


def ledger_name(cfg: EnrichConfig, api_key: str) -> str:
    return "batches-" + budget_namespace(cfg, api_key)


def run_key(cfg: EnrichConfig, output: str) -> str:
    """What identifies a batch-mode run across reruns: its final output as the user named it
    (a local path made absolute, so the same command from the same directory gives it again;
    never a staging dir) and the provider's endpoint and model."""
    where = output.rstrip("/") if "://" in output else os.path.abspath(output)
    p = cfg.provider
    digest = hashlib.sha256("\0".join((where, p.base_url.rstrip("/"), p.kind, p.model)).encode()).hexdigest()
    return f"run-{digest[:16]}"


def kill_hook(environ: Mapping[str, str] | None = None) -> Stage:
    stage = (os.environ if environ is None else environ).get(KILL_AT_ENV, "").strip()

    def hook(at: str) -> None:
        if stage and at == stage:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def say(line: str) -> None:
    """The batch driver's progress lines go to the driver's stderr (its stdout is the summary)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def obtain_batch_answers(
    cfg: EnrichConfig,
    assets: Assets,
    api_key: str,
    store: Store,
    lines: Iterable[RequestLine],
    prices: PriceTable,
    output: str,
    retry: bool = False,
) -> list[str]:
    """Run batch mode over the request lines (custom_id, line JSON, tokens at most) for the run
    whose final output is `output`; the answers land in the store's cache. Returns the summary
    line. `retry` (--retry-dead-letters): lines that used up their batches get them again."""
    with tempfile.TemporaryDirectory(prefix="enrich-batch-") as work:
        ledger, run = ledger_name(cfg, api_key), run_key(cfg, output)
        driver = BatchDriver(cfg, assets, api_key, store, ledger, run, Path(work), say, on_stage=kill_hook())
        report = driver.run(lines, retry=retry)
    return batch_report(report, prices)


def cancel_batches(cfg: EnrichConfig, api_key: str, store: Store, output: str) -> list[str]:
    """--cancel: cancel the open batches of the run whose final output is `output` at the
    provider (other runs' on the same key and store are left alone); no output is touched."""
    ledger, wire = (
        RunLedger(store, ledger_name(cfg, api_key), run_key(cfg, output)),
        dialect_for(cfg.provider.kind).batches,
    )
    cancelled: list[str] = []
    with wire.client(cfg.provider, api_key) as http:
        known = ledger.known_batches()
        for entry in ledger.entries().values():
            batch_id = entry.get("batch_id")
            if entry["state"] in (UPLOADED, CREATING):  # a killed run's half-created batch, if there is one
                batch_id = wire.find_created(http, ledger.run, entry, known)
                if batch_id is not None:
                    entry.update(state=SUBMITTED, batch_id=batch_id)
                    ledger.put(entry)
            if batch_id is not None and entry["state"] == SUBMITTED:
                wire.cancel(http, batch_id)
                cancelled.append(batch_id)
    return [f"enrich --cancel: cancelled {len(cancelled)} batch(es): {' '.join(cancelled) or '-'}; outputs untouched"]


def batches_for(cfg: EnrichConfig, assets: Assets, calls: int, input_tokens: int) -> int:
    """How many batches `calls` lines would make (--dry-run): by lines, by bytes estimated from
    the prompt tokens (about 4 bytes a token) plus the schema each line carries, and by the
    enqueued-token queue (prompt estimate + max_tokens a line)."""
    if calls == 0:
        return 0
    b = cfg.batch
    per_line = LINE_OVERHEAD_BYTES + len(json.dumps(assets.schema.schema))
    est_bytes = 4 * input_tokens + calls * per_line
    est_tokens = input_tokens + calls * cfg.provider.max_tokens
    by_tokens = math.ceil(est_tokens / b.max_enqueued_tokens)
    return max(math.ceil(calls / b.max_lines), math.ceil(est_bytes / b.max_bytes), by_tokens)
