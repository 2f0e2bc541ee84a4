"""Time of one budget decision in the SQLite store as the call rate grows (the log is compacted).

Run with: .venv/bin/python bench/bench_budget_store.py

For each rate, appends calls spread over 1.2 windows of 60 s (a fake
clock, no sleeping) and prints the mean time of the last 200 decisions and
how many entries the log holds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from udfs.enrich.budget import BudgetLimits  # noqa: E402
from udfs.enrich.store_sqlite import SqliteStore  # noqa: E402


def main() -> int:
    limits = BudgetLimits(60.0, {"requests": 10**6, "tokens": 10**9}, 10**6)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "budget.sqlite")
        for per_minute in (600, 6000):
            step, ns, times = 60.0 / per_minute, f"rate{per_minute}", []
            for i in range(int(per_minute * 1.2)):
                start = time.perf_counter()
                store.budget_acquire(ns, f"e{i}", 1000.0 + i * step, {"requests": 1, "tokens": 300}, limits, 0.0)
                times.append(time.perf_counter() - start)
            held = store.budget_usage(ns, 1000.0 + per_minute * 1.2 * step, 60.0)["requests"]
            last = times[-200:]
            print(
                f"{per_minute:6d} calls/min: {sum(last) / len(last) * 1000:6.2f} ms per decision (last 200); "
                f"{held} calls in the window"
            )
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
