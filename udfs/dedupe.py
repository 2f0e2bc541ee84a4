"""Duplicate records, the one rule both ingest engines apply after parsing.

Identical raw records of one source share an id (udfs.records.record_id). The
first is kept and each other copy is rejected with reason `duplicate_record`
and its raw text. The copies are byte-identical, so which one is "first"
cannot show in the output: the result does not depend on input order,
partitioning or engine.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from .records import DUPLICATE, RECORD_FIELDS, REJECT_FIELDS


def keep_first(rid: str, items: Iterable[tuple[dict, str]]) -> Iterator[tuple[str, dict]]:
    """items: (record, raw text) pairs sharing the id rid. Yields
    ("record", record) once and ("reject", row) for every other copy."""
    first = True
    for record, raw in items:
        if first:
            first = False
            yield "record", record
        else:
            yield "reject", {"id": rid, "source": record["source"], "reason": DUPLICATE, "raw": raw}


def is_reject_row(row: dict) -> bool:
    """Whether a row of a mixed ingest output (the mrjob twin writes records
    and rejects to one JSON Lines output) is a reject: rejects carry a reason."""
    return "reason" in row and "text" not in row


def split_rows(rows):
    """(records, rejects) of a mixed ingest output, each row reduced to its
    table's fields."""
    records, rejects = [], []
    for row in rows:
        if is_reject_row(row):
            rejects.append({k: row.get(k) for k in REJECT_FIELDS})
        else:
            records.append({k: row.get(k) for k in RECORD_FIELDS})
    return records, rejects
