"""Rows of a mixed ingest output. The mrjob ingest twin writes records and
rejects to one JSON Lines output (Hadoop Streaming has one output per job);
these tell them apart and split them into the two tables the Spark job
writes."""

from __future__ import annotations

from collections.abc import Iterable

from .records import RECORD_FIELDS, REJECT_FIELDS


def is_reject_row(row: dict) -> bool:
    """Rejects carry a reason and no text; records carry text."""
    return "reason" in row and "text" not in row


def split_rows(rows: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(records, rejects), each row reduced to its table's fields (a field
    that is absent is null, as in Spark's JSON output)."""
    records, rejects = [], []
    for row in rows:
        if is_reject_row(row):
            rejects.append({k: row.get(k) for k in REJECT_FIELDS})
        else:
            records.append({k: row.get(k) for k in RECORD_FIELDS})
    return records, rejects
