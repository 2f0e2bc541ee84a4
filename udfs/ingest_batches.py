"""The ingest rules (udfs.records) over Arrow batches of raw lines: what the
Spark ingest job maps over its input with `mapInArrow`.

Input batches hold the raw bytes of one line a row (column `raw`, binary:
never decoded before the rules see them, so invalid UTF-8 reaches the
parser), and for CSV/TSV the file the line came from (`file`) and where the
Hadoop split holding it starts (`block_start`). Output batches have the
columns of PARSED_SCHEMA: one row per raw record, of kind record, reject or
skip (a blank or header line, counted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import pyarrow as pa

from . import records as R

PARSED_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("rating", pa.float64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)
# The same schema as Spark DDL, for mapInArrow.
PARSED_DDL = ", ".join(f"{f.name} {'double' if f.type == pa.float64() else 'string'}" for f in PARSED_SCHEMA)

BatchFn = Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def to_batch(parsed: Iterable[tuple[str, dict, bytes]]) -> pa.RecordBatch:
    """One output batch of (kind, row, raw) triples. `raw` is kept for
    records too (a duplicate's reject shows it): a record's raw bytes are
    valid UTF-8, a reject's row holds its raw as text, invalid bytes escaped."""
    triples = list(parsed)
    rows = [row for _, row, _ in triples]
    # Column by column: one comprehension each is several times faster than
    # appending eight values per row.
    columns = [
        [kind for kind, _, _ in triples],
        [row.get("id") for row in rows],
        [row.get("source") for row in rows],
        [row.get("text") for row in rows],
        [row.get("label") for row in rows],
        [row.get("rating") for row in rows],
        [row.get("reason") for row in rows],
        [raw if kind == R.RECORD else row.get("raw") for kind, row, raw in triples],
    ]
    return pa.RecordBatch.from_arrays(
        [pa.array(values, type=field.type) for values, field in zip(columns, PARSED_SCHEMA, strict=True)],
        schema=PARSED_SCHEMA,
    )


def _with_source(spec: R.SourceSpec, parsed: tuple[str, dict, bytes]) -> tuple[str, dict, bytes]:
    kind, row, raw = parsed
    if kind == R.SKIP:
        row = {**row, "source": spec.source}
    return kind, row, raw


def line_parser(spec: R.SourceSpec, headers: Mapping[str, list[str]] | None = None) -> BatchFn:
    """The batch function for line formats (JSON Lines; TSV with `headers`,
    each file's field names by the value of its `file` column). Lines are
    independent, so any split of the file gives the same rows."""
    if spec.format == "tsv" and headers is None:
        raise ValueError("TSV lines need their files' headers")

    def parse(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            raws = batch.column("raw").to_pylist()
            if headers is None:
                out = (R.parse_line(spec, raw) for raw in raws)
            else:
                files = batch.column("file").to_pylist()
                out = (R.parse_line(spec, raw, headers.get(f)) for raw, f in zip(raws, files, strict=True))
            yield to_batch(_with_source(spec, p) for p in out)

    return parse


def csv_parser(spec: R.SourceSpec, name: str, header: list[str]) -> BatchFn:
    """The batch function for one CSV file read whole in one task, in order
    (a quoted field may hold newlines, so the file cannot be split at any
    line): the lines stream through, never the whole file in memory."""

    def lines(batches: Iterable[pa.RecordBatch]) -> Iterator[bytes]:
        last_start = -1
        for batch in batches:
            starts = batch.column("block_start").to_pylist()
            if starts and (starts[0] < last_start or starts != sorted(starts)):
                # coalesce(1) concatenates the file's splits in order; were
                # that ever not so, records would be torn apart silently.
                raise RuntimeError(f"{name}: splits of a CSV file arrived out of order")
            if starts:
                last_start = starts[-1]
            yield from batch.column("raw").to_pylist()

    def parse(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        chunk: list[tuple[str, dict, bytes]] = []
        for raw in R.raw_records("csv", lines(batches), len(header) or None):
            chunk.append(_with_source(spec, R.parse_line(spec, raw, header)))
            if len(chunk) >= 10_000:
                yield to_batch(chunk)
                chunk = []
        if chunk:
            yield to_batch(chunk)

    return parse
