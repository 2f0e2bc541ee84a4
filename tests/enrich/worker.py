"""One enrich task in its own process, for the tests that share a store across processes.

Run with: python -m tests.enrich.worker CONFIG_JSON ROWS_JSON OUT_JSON  (key in $AIBATCH_TEST_KEY)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from udfs.enrich.runner import enrich_batch, open_store
from udfs.enrich.settings import EnrichConfig


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = EnrichConfig.model_validate_json(Path(argv[0]).read_text())
    rows = json.loads(Path(argv[1]).read_text())
    store = open_store(cfg, "job-worker")
    out = enrich_batch(rows, cfg, api_key=os.environ["AIBATCH_TEST_KEY"], store=store)
    Path(argv[2]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
