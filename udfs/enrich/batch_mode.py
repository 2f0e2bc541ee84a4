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
    lines: Iterable[tuple[str, str]],
    prices: PriceTable,
    output: str,
) -> list[str]:
    """Run batch mode over the request lines (custom_id, line JSON) for the run whose final
    output is `output`; the answers land in the store's cache. Returns the summary line."""
    with tempfile.TemporaryDirectory(prefix="enrich-batch-") as work:
        ledger, run = ledger_name(cfg, api_key), run_key(cfg, output)
        driver = BatchDriver(cfg, assets, api_key, store, ledger, run, Path(work), say, on_stage=kill_hook())
        report = driver.run(lines)
    return batch_report(report, prices)


def cancel_batches(cfg: EnrichConfig, assets: Assets, api_key: str, store: Store, output: str) -> list[str]:
    """--cancel: cancel the open batches of the run whose final output is `output` at the
    provider (other runs' on the same key and store are left alone); no output is touched."""
    with tempfile.TemporaryDirectory(prefix="enrich-batch-") as work:
        ledger, run = ledger_name(cfg, api_key), run_key(cfg, output)
        driver = BatchDriver(cfg, assets, api_key, store, ledger, run, Path(work), say)
        cancelled = driver.cancel()
    return [f"enrich --cancel: cancelled {len(cancelled)} batch(es): {' '.join(cancelled) or '-'}; outputs untouched"]


def batches_for(cfg: EnrichConfig, assets: Assets, calls: int, input_tokens: int) -> int:
    """How many batches `calls` lines would make (--dry-run): by lines, and by bytes estimated
    from the prompt tokens (about 4 bytes a token) plus the schema each line carries."""
    if calls == 0:
        return 0
    per_line = LINE_OVERHEAD_BYTES + len(json.dumps(assets.schema.schema))
    est_bytes = 4 * input_tokens + calls * per_line
    return max(math.ceil(calls / cfg.batch.max_lines), math.ceil(est_bytes / cfg.batch.max_bytes))
