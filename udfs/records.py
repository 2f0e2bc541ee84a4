"""Raw input records -> one record schema, as plain Python.

Both engines call these rules: the Spark ingest job and its mrjob twin. A raw
record is the bytes of one line (JSON Lines, TSV), one quoted CSV record
(which may span lines), or one Parquet row serialised as canonical JSON.

Output schema (RECORD_FIELDS): id, source, text, label, rating.
Rejects (REJECT_FIELDS): id, source, reason, raw.

The id is the first 16 hex digits of SHA-256 over the source name and the
raw record's bytes (line terminator and a leading UTF-8 byte-order mark
removed), so it depends on nothing but the record itself: equal across
engines, reruns and partition counts. Identical raw records of one source
therefore share an id; the jobs keep the first and reject the others with
reason `duplicate_record`.

Lines end where Hadoop's LineReader ends them (TextInputFormat, and Spark's
text source, which both engines read through): at LF, CR or CRLF. Lines
that are not records are skipped and counted by reason (SKIP_REASONS):
blank lines and a CSV/TSV file's header line.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import math
import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator, Mapping

FORMATS = ("csv", "tsv", "jsonl", "parquet")
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
INVALID_UNICODE = "invalid_unicode"
UNKNOWN_LABEL = "unknown_label"
DUPLICATE = "duplicate_record"

# Kinds of parsed raw records; skipped lines are not records, counted by
# reason (kind SKIP, with one of SKIP_REASONS).
RECORD = "record"
REJECT = "reject"
SKIP = "skip"
BLANK_LINE = "blank_line"
HEADER_LINE = "header_line"
SKIP_REASONS = (BLANK_LINE, HEADER_LINE)

BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark


def strip_boms(raw: bytes) -> bytes:
    """raw without the UTF-8 byte-order marks it starts with, however many.
    All of them, not one: Hadoop's LineRecordReader (Spark's text reader, and
    Hadoop Streaming's) already drops one at a file's start and a twin's
    inline or local runner does not, so removing one more would leave the
    engines different lines."""
    while raw.startswith(BOM):
        raw = raw[len(BOM) :]
    return raw


def wrong_type(field: str) -> str:
    return f"wrong_type:{field}"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """How to read one source: its name, format and which fields hold what.

    A label field's values are kept as they are read (trimmed), whatever
    they are; label_map renames raw values (to None: unlabelled, kept) and
    passes the others through. Only a source that declares its vocabulary
    (labels) rejects a label outside it as unknown_label. Without a label
    field, a rating gives the label: >= positive_min rating_labels[1],
    <= negative_max rating_labels[0], otherwise unlabelled (the VADER
    convention of issue 3; the names come from the config).
    """

    source: str
    format: str
    text_field: str = "text"
    rating_field: str | None = None
    label_field: str | None = None
    label_map: Mapping[str, str | None] | None = None
    labels: tuple[str, ...] | None = None
    rating_labels: tuple[str, str] | None = None
    positive_min: float = 0.5
    negative_max: float = -0.5

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source name must be non-empty")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.labels is not None and self.label_map is not None:
            vocabulary = set(self.labels)
            bad = {v for v in self.label_map.values() if v is not None and v not in vocabulary}
            if bad:
                raise ValueError(f"label_map values must be in labels {list(self.labels)} or null, got {sorted(bad)}")
        if self.rating_field and not self.label_field and self.rating_labels is None:
            raise ValueError("a rating field needs rating_labels (the names of a negative and a positive rating)")


def record_id(source: str, raw: bytes) -> str:
    return hashlib.sha256(source.encode("utf-8") + b"\x1f" + raw).hexdigest()[:16]


def prepare_text(text: str) -> str:
    """Text as the model and the term statistics see it: Unicode NFC, runs of
    whitespace collapsed to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


# Characters that show nothing: whitespace, controls (Unicode Cc: NUL and
# friends) and format characters (Cf: zero-width spaces and joiners, the
# BOM, bidi marks, soft hyphen). A text made only of these is empty text.
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}
_ASCII_VISIBLE = re.compile(r"[!-~]")
# A JSON escape such as "\ud800" decodes to an unpaired UTF-16 surrogate,
# which has no UTF-8 form: no output (Parquet, Arrow, JSON Lines) can hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_visible_text(text: str) -> bool:
    """Whether text holds a character that shows (anything outside
    _INVISIBLE); the ASCII check first is the common, fast case."""
    if _ASCII_VISIBLE.search(text):
        return True
    return any(unicodedata.category(c) not in _INVISIBLE for c in text)


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


def lf_piece_lines(piece: bytes) -> list[bytes]:
    """The lines Hadoop's LineReader makes of input between two LFs (the LF
    removed): a CR right before the LF belongs to a CRLF terminator, any
    other CR ends a line. mrjob's local runners split input at LF only;
    this finishes the job the same way -r hadoop and Spark do."""
    if piece.endswith(b"\r"):
        piece = piece[:-1]
    return piece.split(b"\r")


def file_pieces(stream: Iterable[bytes]) -> Iterator[bytes]:
    """The LF-ended pieces of a file read from its start, as Hadoop's
    LineRecordReader (Spark's and Hadoop Streaming's reader) reads them: it
    drops a UTF-8 BOM at a file's start, and a file that holds nothing else
    has no line at all, so its one piece, the bare mark, is left out."""
    pieces = iter(stream)
    first = next(pieces, None)
    if first is None or first == BOM:
        return iter(())
    return itertools.chain((first,), pieces)


def iter_lines(stream: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (terminator removed) of a binary stream that yields LF-ended
    pieces, like a file opened "rb" (file_pieces): ended at LF, CR or CRLF,
    as Hadoop's LineReader ends them; no empty line after a final terminator."""
    for piece in file_pieces(stream):
        yield from lf_piece_lines(piece[:-1] if piece.endswith(b"\n") else piece)


def split_lines(data: bytes) -> Iterator[bytes]:
    return iter_lines(io.BytesIO(data))


# A quoted CSV field may hold newlines, but one stray quote must not swallow
# the rest of the file: a record that spans lines is kept only if it reads as
# one CSV row with the header's field count; otherwise its first line is a
# record on its own (a malformed_csv reject) and the lines after it are read
# again. A record still open after this many lines or bytes is cut the same way.
CSV_MAX_RECORD_LINES = 1000
CSV_MAX_RECORD_BYTES = 1 << 20


def _csv_row_fits(raw: bytes, fields: int | None) -> bool:
    text = raw.decode("utf-8", errors="replace")
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        return False
    return len(rows) == 1 and (fields is None or len(rows[0]) == fields)


def _csv_records(lines: Iterable[bytes], fields: int | None = None) -> Iterator[bytes]:
    # An RFC 4180 record ends at a newline outside quotes; escaped quotes ("")
    # keep the count even, so an odd count means the record goes on. A blank
    # line outside a record is its own (skipped) raw record.
    source = iter(lines)
    again: deque[bytes] = deque()  # lines to read again after a cut record
    pending: list[bytes] = []
    quotes = size = 0

    def cut() -> bytes:
        nonlocal pending, quotes, size
        again.extendleft(reversed(pending[1:]))
        first = pending[0]
        pending, quotes, size = [], 0, 0
        return first

    while True:
        if again:
            line = again.popleft()
        else:
            following = next(source, None)
            if following is None:
                if not pending:
                    break
                yield cut()  # an unterminated quote at the end: read the rest again
                continue
            line = following
        if not pending and not line.strip():
            yield line
            continue
        pending.append(line)
        quotes += line.count(b'"')
        size += len(line)
        if quotes % 2 == 0:
            record = b"\n".join(pending)
            if len(pending) == 1 or _csv_row_fits(record, fields):
                pending, quotes, size = [], 0, 0
                yield record
            else:
                yield cut()
        elif len(pending) >= CSV_MAX_RECORD_LINES or size >= CSV_MAX_RECORD_BYTES:
            yield cut()


def raw_records(fmt: str, lines: Iterable[bytes], fields: int | None = None) -> Iterator[bytes]:
    """The raw records of a file's lines, blank lines and the header
    included (parse_line tells them apart); `fields`: the CSV header's
    field count, when known."""
    if fmt == "csv":
        return _csv_records(lines, fields)
    if fmt in ("tsv", "jsonl"):
        return iter(lines)
    raise ValueError(f"cannot split format {fmt!r} into lines")


def split_records(fmt: str, data: bytes) -> Iterator[bytes]:
    """The raw records of one (decompressed) file, header included for CSV
    and TSV; blank lines are left out."""
    return (raw for raw in raw_records(fmt, split_lines(data)) if raw.strip())


def parse_header(fmt: str, raw: bytes) -> list[str]:
    """The field names of a CSV/TSV header line (UnicodeDecodeError or
    csv.Error where it cannot be read)."""
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
        if value is None:
            return None
        if not isinstance(value, str):
            raise _Reject(wrong_type("label"))
        value = value.strip()
        if value == "":
            return None
        label = spec.label_map.get(value, value) if spec.label_map is not None else value
        if label is not None and spec.labels is not None and label not in spec.labels:
            raise _Reject(UNKNOWN_LABEL)
        return label
    if rating is None or spec.rating_labels is None:
        return None
    if rating >= spec.positive_min:
        return spec.rating_labels[1]
    if rating <= spec.negative_max:
        return spec.rating_labels[0]
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
        if not has_visible_text(text):
            raise _Reject(EMPTY_TEXT)
        if _SURROGATE.search(text):
            raise _Reject(INVALID_UNICODE)
        rating = _rating(spec, fields)
        label = _label(spec, fields, rating)
    except _Reject as rej:
        return "reject", {"id": rid, "source": spec.source, "reason": rej.reason, "raw": raw_to_str(raw)}
    return "record", {"id": rid, "source": spec.source, "text": text, "label": label, "rating": rating}


def row_to_raw(row: Mapping) -> bytes:
    """A Parquet (or any mapping) row as canonical JSON bytes: its raw form
    for ids and rejects."""
    return json.dumps(dict(row), sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")


def file_header(spec: SourceSpec, name: str, raw: bytes) -> list[str]:
    """The header of a CSV/TSV file from its first non-blank line; a
    ValueError naming the file where it is unreadable or lacks the text
    field."""
    try:
        header = parse_header(spec.format, raw)
    except (UnicodeDecodeError, csv.Error, StopIteration):
        raise ValueError(f"{name}: unreadable header line {raw_to_str(raw[:200])!r}") from None
    if spec.text_field not in header:
        raise ValueError(f"{name}: header {header} has no text field {spec.text_field!r}")
    return header


def _is_header(fmt: str, raw: bytes, header: list[str]) -> bool:
    try:
        return parse_header(fmt, raw) == header
    except (UnicodeDecodeError, csv.Error, StopIteration):
        return False


def parse_line(spec: SourceSpec, raw: bytes, header: list[str] | None = None) -> tuple[str, dict, bytes]:
    """(kind, row, raw) for one raw record of a line-based file: kind SKIP
    (row {"reason": BLANK_LINE or HEADER_LINE}) for a blank line or a line
    equal to the file's header (anywhere in it: Hadoop splits a file without
    knowing where it began), else parse_record's. Leading UTF-8 byte-order
    marks are removed first (strip_boms; raw is returned without them)."""
    if raw.startswith(BOM):  # one check per line where there is none (the hot path)
        raw = strip_boms(raw)
    if not raw.strip():
        return SKIP, {"reason": BLANK_LINE}, raw
    if header is not None and _is_header(spec.format, raw, header):
        return SKIP, {"reason": HEADER_LINE}, raw
    return (*parse_record(spec, raw, header), raw)


def parse_file(spec: SourceSpec, name: str, data: bytes) -> Iterator[tuple[str, dict, bytes]]:
    """(kind, row, raw) for every raw record of one CSV/TSV/JSON Lines file's
    bytes (parse_line: kind 'record', 'reject' or 'skip'), in plain Python:
    the rules the engines apply to files they read in pieces."""
    lines = list(split_lines(decompress(name, data)))
    header = None
    if spec.format in ("csv", "tsv"):
        first = next((line for line in lines if strip_boms(line).strip()), None)
        header = [] if first is None else file_header(spec, name, strip_boms(first))
    for raw in raw_records(spec.format, lines, len(header) if header else None):
        yield parse_line(spec, raw, header)


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
