"""Raw input records -> one record schema, as plain Python.

Both engines call these rules: the Spark ingest job and its mrjob twin. A raw
record is the bytes of one line (JSON Lines, TSV), one quoted CSV record
(which may span lines), or one Parquet row serialised as canonical JSON.

Output schema (RECORD_FIELDS): id, source, text, label, rating.
Rejects (REJECT_FIELDS): id, source, reason, raw.

The id is the first 16 hex digits of SHA-256 over the source name and the
raw record's bytes (line terminator removed), so it depends on nothing but
the record itself: equal across engines, reruns and partition counts.
Identical raw records of one source therefore share an id; the jobs keep the
first and reject the others with reason `duplicate_record`.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import unicodedata
from collections.abc import Iterable, Iterator, Mapping

FORMATS = ("csv", "tsv", "jsonl", "parquet")
LABELS = ("negative", "positive")
RECORD_FIELDS = ("id", "source", "text", "label", "rating")
REJECT_FIELDS = ("id", "source", "reason", "raw")

# Reject reasons: stable strings compared across engines.
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_a_json_object"
MALFORMED_CSV = "malformed_csv"
WRONG_FIELD_COUNT = "wrong_field_count"
MISSING_TEXT = "missing_text"
EMPTY_TEXT = "empty_text"
UNKNOWN_LABEL = "unknown_label"
DUPLICATE = "duplicate_record"


def wrong_type(field: str) -> str:
    return f"wrong_type:{field}"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """How to read one source: its name, format and which fields hold what.

    label_map maps raw label values to a label in LABELS or to None
    (unlabelled, kept); a value outside the map is rejected. Without a label
    field, a rating gives the label: >= positive_min positive, <= negative_max
    negative, otherwise unlabelled (the VADER convention of issue 3).
    """

    source: str
    format: str
    text_field: str = "text"
    rating_field: str | None = None
    label_field: str | None = None
    label_map: Mapping[str, str | None] | None = None
    positive_min: float = 0.5
    negative_max: float = -0.5

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source name must be non-empty")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.label_map is not None:
            bad = {v for v in self.label_map.values() if v is not None and v not in LABELS}
            if bad:
                raise ValueError(f"label_map values must be in {LABELS} or null, got {sorted(bad)}")


def record_id(source: str, raw: bytes) -> str:
    return hashlib.sha256(source.encode("utf-8") + b"\x1f" + raw).hexdigest()[:16]


def prepare_text(text: str) -> str:
    """Text as the model and the term statistics see it: Unicode NFC, runs of
    whitespace collapsed to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def raw_to_str(raw: bytes) -> str:
    """The raw record as text for the rejects output (invalid bytes escaped)."""
    return raw.decode("utf-8", errors="backslashreplace")


# ----- splitting files into raw records -------------------------------------


def decompress(name: str, data: bytes) -> bytes:
    """File bytes, decompressed according to the name's suffix (.gz, .bz2)."""
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".bz2"):
        return bz2.decompress(data)
    return data


def _lines(data: bytes) -> Iterator[bytes]:
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.strip():
            yield line


def _csv_records(data: bytes) -> Iterator[bytes]:
    # An RFC 4180 record ends at a newline outside quotes; escaped quotes ("")
    # keep the count even, so an odd count means the record goes on.
    pending: list[bytes] = []
    quotes = 0
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if not pending and not line.strip():
            continue
        pending.append(line)
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            yield b"\n".join(pending)
            pending, quotes = [], 0
    if pending:
        yield b"\n".join(pending)  # unterminated quote: parse_record rejects it


def split_records(fmt: str, data: bytes) -> Iterator[bytes]:
    """The raw records of one (decompressed) file, header included for CSV
    and TSV; blank lines are not records."""
    if fmt == "csv":
        return _csv_records(data)
    if fmt in ("tsv", "jsonl"):
        return _lines(data)
    raise ValueError(f"cannot split format {fmt!r} into lines")


def parse_header(fmt: str, raw: bytes) -> list[str]:
    text = raw.decode("utf-8-sig")
    if fmt == "tsv":
        return [c.strip() for c in text.split("\t")]
    return [c.strip() for c in next(csv.reader([text]))]


# ----- one raw record -> record or reject -----------------------------------


class _Reject(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject(INVALID_UTF8) from None


def _fields(spec: SourceSpec, text: str, header: list[str] | None) -> dict:
    if spec.format == "jsonl":
        try:
            value = json.loads(text)
        except ValueError:
            raise _Reject(MALFORMED_JSON) from None
        if not isinstance(value, dict):
            raise _Reject(NOT_AN_OBJECT)
        return value
    if header is None:
        raise ValueError(f"{spec.format} records need the file's header")
    if spec.format == "tsv":
        cells = text.split("\t")
    else:
        if text.count('"') % 2:
            raise _Reject(MALFORMED_CSV)
        try:
            # StringIO(newline="") splits lines only at \r and \n, as RFC 4180
            # does; str.splitlines would also split at U+0085 and friends.
            rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error:
            raise _Reject(MALFORMED_CSV) from None
        if len(rows) != 1:
            raise _Reject(MALFORMED_CSV)
        cells = rows[0]
    if len(cells) != len(header):
        raise _Reject(WRONG_FIELD_COUNT)
    return dict(zip(header, cells, strict=True))


def _rating(spec: SourceSpec, fields: dict) -> float | None:
    if not spec.rating_field:
        return None
    value = fields.get(spec.rating_field)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _Reject(wrong_type("rating"))
    if isinstance(value, str):
        if spec.format == "jsonl":
            raise _Reject(wrong_type("rating"))
        try:
            value = float(value)
        except ValueError:
            raise _Reject(wrong_type("rating")) from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Reject(wrong_type("rating"))
    return float(value)


def _label(spec: SourceSpec, fields: dict, rating: float | None) -> str | None:
    if spec.label_field:
        value = fields.get(spec.label_field)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise _Reject(wrong_type("label"))
        if spec.label_map is None:
            if value not in LABELS:
                raise _Reject(UNKNOWN_LABEL)
            return value
        if value not in spec.label_map:
            raise _Reject(UNKNOWN_LABEL)
        return spec.label_map[value]
    if rating is None:
        return None
    if rating >= spec.positive_min:
        return "positive"
    if rating <= spec.negative_max:
        return "negative"
    return None


def parse_record(spec: SourceSpec, raw: bytes, header: list[str] | None = None) -> tuple[str, dict]:
    """("record", {id, source, text, label, rating}) or
    ("reject", {id, source, reason, raw}) for one raw record."""
    rid = record_id(spec.source, raw)
    try:
        fields = _fields(spec, _decode(raw), header)
        text = fields.get(spec.text_field)
        if text is None:
            raise _Reject(MISSING_TEXT)
        if not isinstance(text, str):
            raise _Reject(wrong_type("text"))
        text = prepare_text(text)
        if not text:
            raise _Reject(EMPTY_TEXT)
        rating = _rating(spec, fields)
        label = _label(spec, fields, rating)
    except _Reject as rej:
        return "reject", {"id": rid, "source": spec.source, "reason": rej.reason, "raw": raw_to_str(raw)}
    return "record", {"id": rid, "source": spec.source, "text": text, "label": label, "rating": rating}


def row_to_raw(row: Mapping) -> bytes:
    """A Parquet (or any mapping) row as canonical JSON bytes: its raw form
    for ids and rejects."""
    return json.dumps(dict(row), sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")


def parse_file(spec: SourceSpec, name: str, data: bytes) -> Iterator[tuple[str, dict, bytes]]:
    """(kind, row, raw) for every raw record of one CSV/TSV/JSON Lines file's
    bytes; kind is 'record' or 'reject'."""
    records = split_records(spec.format, decompress(name, data))
    header = None
    if spec.format in ("csv", "tsv"):
        first = next(records, None)
        if first is None:
            return
        try:
            header = parse_header(spec.format, first)
        except (UnicodeDecodeError, csv.Error, StopIteration):
            raise ValueError(f"{name}: unreadable header line") from None
        if spec.text_field not in header:
            raise ValueError(f"{name}: header {header} has no text field {spec.text_field!r}")
    for raw in records:
        yield (*parse_record(spec, raw, header), raw)


def parse_rows(spec: SourceSpec, rows: Iterable[Mapping]) -> Iterator[tuple[str, dict, bytes]]:
    """(kind, row, raw) for Parquet rows (as mappings)."""
    json_spec = dataclasses.replace(spec, format="jsonl")
    for row in rows:
        raw = row_to_raw(row)
        yield (*parse_record(json_spec, raw), raw)


def resolve_id_group(items: Iterable[tuple[str, dict, bytes]]) -> Iterator[tuple[str, dict]]:
    """The output rows of all parsed raw records that share one id (group by
    id, then call this): identical raw records of one source parse alike, so
    the first record is kept and each further copy becomes a reject with
    reason `duplicate_record`; rejects all stay rejects."""
    kept = False
    for kind, row, raw in items:
        if kind == "reject":
            yield kind, row
        elif not kept:
            kept = True
            yield kind, row
        else:
            yield "reject", {"id": row["id"], "source": row["source"], "reason": DUPLICATE, "raw": raw_to_str(raw)}


# ----- deterministic sampling and splits by id -------------------------------


def _bucket(salt: str, rid: str) -> int:
    return int(hashlib.sha256(f"{salt}:{rid}".encode()).hexdigest()[:8], 16) % 100


def in_sample(rid: str, percent: float) -> bool:
    """Whether a record belongs to the documented subset of `percent` per cent."""
    return _bucket("sample", rid) < percent


def split_of(rid: str, test_percent: int = 20) -> str:
    """'test' or 'train', seeded by a hash of the id."""
    return "test" if _bucket("split", rid) < test_percent else "train"
