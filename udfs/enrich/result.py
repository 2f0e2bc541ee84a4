"""The result contract of the enrich stage: what the runner returns for each
selected row, and what both drivers write. One definition of the statuses,
the result fields in output order, their pandas dtypes, the fields that
differ between two runs of the same work, and the check that results answer
their rows one for one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The output statuses of a selected row (udfs.enrich.runner writes them).
ENRICHED = "enriched"
DEAD_LETTER = "dead_letter"
# The answer fields and call facts the runner adds to each selected row, in
# output order (udfs.enrich.runner.enrich_batch's contract).
RESULT_FIELDS: tuple[str, ...] = (
    "status",
    "topic",
    "summary",
    "severity",
    "raw_answer",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "provider",
    "model",
    "template",
    "request_id",
    "cached",
    "error",
)
# Fields that differ between two runs of the same work (timings, ids the
# server makes up): compared runs ignore them.
RUN_VARYING_FIELDS: tuple[str, ...] = ("latency_ms", "ttft_ms", "request_id", "cached", "attempts")


# pandas dtypes of the result fields (nullable, so a dead letter's missing
# answer stays null through Arrow into Spark).
RESULT_DTYPES: dict[str, str] = {
    "status": "string",
    "topic": "string",
    "summary": "string",
    "severity": "Int32",
    "raw_answer": "string",
    "input_tokens": "Int32",
    "output_tokens": "Int32",
    "latency_ms": "Float64",
    "ttft_ms": "Float64",
    "attempts": "Int32",
    "provider": "string",
    "model": "string",
    "template": "string",
    "request_id": "string",
    "cached": "boolean",
    "error": "string",
}


def result_fields(rows: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The runner's results in RESULT_FIELDS, checked to answer the input rows
    one for one and in order (a missing or extra result would lose a row)."""
    if len(results) != len(rows):
        raise RuntimeError(f"enrich: the runner returned {len(results)} results for {len(rows)} rows")
    out = []
    for row, result in zip(rows, results, strict=True):
        if result.get("id") != row.get("id"):
            raise RuntimeError(f"enrich: result for id {result.get('id')!r} where row {row.get('id')!r} was expected")
        if result.get("status") not in (ENRICHED, DEAD_LETTER):
            raise RuntimeError(f"enrich: row {row.get('id')!r} ended with status {result.get('status')!r}")
        out.append({name: result.get(name) for name in RESULT_FIELDS})
    return out


def results_frame(rows: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]) -> Any:
    """result_fields() as a pandas DataFrame with nullable dtypes."""
    import pandas as pd

    fields = result_fields(rows, results)
    frame = pd.DataFrame(fields, columns=list(RESULT_FIELDS))
    return frame.astype(RESULT_DTYPES)
