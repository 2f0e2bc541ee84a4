"""Rows of a mixed ingest output. The mrjob ingest twin writes records and
rejects to one JSON Lines output (Hadoop Streaming has one output per job);
these tell them apart and split them into the two tables the Spark job
writes.

pack_parsed and resolve_packed are the twin's two halves of the duplicate
rule: the mapper writes each row's final output line once, packed with what
the reducer needs to resolve an id seen more than once, and the reducer only
passes lines through (or turns further copies of a record into
`duplicate_record` rejects), never parsing JSON again for an id seen once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from .records import DUPLICATE, RECORD, RECORD_FIELDS, REJECT_FIELDS, raw_to_str

_SEP = b"\t"


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


def pack_parsed(kind: str, row: dict, raw: bytes) -> bytes:
    """One parsed raw record (records.parse_line's kind, row, raw) as bytes
    for the shuffle: `r` or `j` (record or reject), the reject's reason, the
    row's output line (json.dumps: ASCII, so never a tab or newline in it)
    and, for a record, its raw bytes (valid UTF-8, since it parsed), which a
    duplicate's reject shows. Tab-separated, raw last: it may hold tabs."""
    line = json.dumps(row).encode("ascii")
    if kind == RECORD:
        return b"r\t\t" + line + _SEP + raw
    return b"j\t" + row["reason"].encode("ascii") + _SEP + line


def resolve_packed(packed: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """(reason or "" for a record, output line) for the packed rows of one
    id, by records.resolve_id_group's rule: rejects all stay rejects, the
    first record is kept and each further copy becomes a `duplicate_record`
    reject (identical raw records of one source parse alike)."""
    kept = False
    for value in packed:
        kind, reason, rest = value.split(_SEP, 2)
        if kind == b"j":
            yield reason.decode("ascii"), rest
            continue
        line, raw = rest.split(_SEP, 1)
        if not kept:
            kept = True
            yield "", line
        else:
            row = json.loads(line)
            dup = {"id": row["id"], "source": row["source"], "reason": DUPLICATE, "raw": raw_to_str(raw)}
            yield DUPLICATE, json.dumps(dup).encode("ascii")
