"""The enrich twin's two outputs, written by its driver: MapReduce streaming
has one output per job (Hadoop's MultipleOutputs needs a Java output format),
so the job writes every result to a hidden results dir and the driver streams
it, line by line, into the enriched output and the dead letters, as the Spark
job writes its two outputs from its staged results. --retry-dead-letters
reads the run it retries here too: the dead letters' ids (shipped to the
tasks, the only rows they re-run) and the previous output's rows (copied into
the new output). Local paths and hdfs:// alike (jobs.commit's file systems);
nothing is held whole in memory but the failed rows' ids.

Used by jobs/mapreduce/mr_enrich_rows.py's driver; see docs/enrichment.md."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jobs import commit
from udfs.enrich.result import DEAD_LETTER, ENRICHED

PART = "part-00000"


@dataclass
class Split:
    """What split_results wrote: rows per output, and the kept rows by (status, model)."""

    enriched: int = 0
    dead_letter: int = 0
    kept: Counter = field(default_factory=Counter)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    from mrjob.util import to_lines

    for line in to_lines(chunks):
        if line.strip():
            yield line if line.endswith(b"\n") else line + b"\n"


def split_results(results: Iterable[bytes], output: str, dead_letters: str, kept: Iterable[bytes] = ()) -> Split:
    """Stream `kept` (the previous output's rows, --retry-dead-letters) and then the job's
    `results` (byte chunks, as mrjob's cat_output gives them) into OUTPUT/part-00000 and
    DEAD_LETTERS/part-00000 by each row's status; both files are written even when empty."""
    done = Split()
    out_fs, dead_fs = commit.filesystem(output), commit.filesystem(dead_letters)
    with (
        out_fs.open_write(f"{output.rstrip('/')}/{PART}") as ok,
        dead_fs.open_write(f"{dead_letters.rstrip('/')}/{PART}") as dead,
    ):
        for line in _lines(kept):
            row = json.loads(line)
            done.kept[(row.get("status"), row.get("model"))] += 1
            ok.write(line)
        for line in _lines(results):
            status = json.loads(line).get("status")
            if status == ENRICHED:
                ok.write(line)
                done.enriched += 1
            elif status == DEAD_LETTER:
                dead.write(line)
                done.dead_letter += 1
            else:
                raise ValueError(f"enrich: a result line has no known status ({status!r}): {line[:80]!r}")
    return done


def write_retry_ids(dead_letters: str, ids_file: Path) -> int:
    """The ids of the dead letters at `dead_letters`, one JSON value a line, into ids_file
    (the tasks re-run the input rows whose id is among them); how many dead letters."""
    if not commit.filesystem(dead_letters).exists(dead_letters):
        raise commit.OutputError(
            f"enrich --retry-dead-letters: no dead letters at {dead_letters}: retry the run that wrote them "
            "(the same --output-dir and --dead-letters)"
        )
    failed = 0
    with open(ids_file, "w") as fh:
        for line in _lines(commit.filesystem(dead_letters).lines(dead_letters)):
            fh.write(json.dumps(json.loads(line)["id"]) + "\n")
            failed += 1
    return failed


def load_retry_ids(ids_file: str) -> set[str]:
    """The ids written by write_retry_ids, as the keys the mappers compare (json.dumps of the id)."""
    with open(ids_file) as fh:
        return {line.strip() for line in fh if line.strip()}


def previous_rows(output: str) -> Iterator[bytes]:
    """The previous output's lines (--retry-dead-letters keeps them)."""
    if not commit.filesystem(output).exists(output):
        raise commit.OutputError(f"enrich --retry-dead-letters: no previous output at {output}")
    return commit.filesystem(output).lines(output)
