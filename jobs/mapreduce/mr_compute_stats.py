"""mrjob twin of the Spark stats job: term frequencies per predicted label,
counts per source and predicted label, and top terms per label, by the
rules of udfs.terms (tokenisation, ordering, row form).

Input: scored records, one JSON object a line. Output: `table<TAB>row`
lines (JSONProtocol), tables in the order counts, term_freq, top_terms and
rows within each in the table's sort order; the final step has one
reducer, so the output is one ordered file.

Run with:
    ./submit.sh mr stats -r hadoop hdfs:///user/$USER/aibatch/mr/scored \
        --output-dir hdfs:///user/$USER/aibatch/mr/stats [--set stats.top_k=25]
"""

from __future__ import annotations

import json

from mrjob.protocol import BytesValueProtocol, JSONProtocol
from mrjob.step import MRStep

from jobs.mapreduce.configured import ConfiguredJob
from udfs import terms

GROUP = "stats"


class BadScoredRow(ValueError):
    """An input line is not a scored row; the message quotes it."""


def parse_scored_line(line: bytes) -> dict:
    """A scored row from one input line. The input is the score job's own
    output, so a line that is not one means the wrong input: the job stops
    with the line quoted rather than count it under some label."""
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    if not isinstance(row, dict) or "source" not in row or "predicted" not in row:
        raise BadScoredRow(f"not a scored row (JSON object with source, text, predicted): {line[:200]!r}")
    return row


class MRComputeStats(ConfiguredJob):
    INPUT_PROTOCOL = BytesValueProtocol
    INTERNAL_PROTOCOL = JSONProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def steps(self):
        return [
            MRStep(mapper=self.mapper_count_terms, combiner=self.combiner_sum, reducer=self.reducer_sum),
            MRStep(reducer=self.reducer_order_tables, jobconf={"mapreduce.job.reduces": "1"}),
        ]

    def mapper_count_terms(self, _, line: bytes):
        if not line.strip():
            return
        row = parse_scored_line(line)
        self.increment_counter(GROUP, "rows")
        label = terms.label_key(row.get("predicted"))
        yield ["counts", row["source"], label], 1
        for term in terms.tokenize(row.get("text") or ""):
            yield ["term_freq", label, term], 1

    def combiner_sum(self, key, counts):
        yield key, sum(counts)

    def reducer_sum(self, key, counts):
        table, a, b = key
        total = sum(counts)
        yield table, [a, b, total]
        if table == "term_freq":
            yield "top_terms", [a, b, total]

    def reducer_order_tables(self, table, rows):
        rows = [tuple(r) for r in rows]
        if table == "counts":
            ordered = sorted(rows, key=lambda r: terms.counts_sort_key(*r))
            lines = (terms.counts_row(*r) for r in ordered)
        elif table == "term_freq":
            ordered = sorted(rows, key=lambda r: terms.term_freq_sort_key(*r))
            lines = (terms.term_freq_row(*r) for r in ordered)
        else:
            by_label: dict[str, list[tuple[str, int]]] = {}
            for label, term, count in rows:
                by_label.setdefault(label, []).append((term, count))
            ranked = [
                t
                for label in by_label
                for t in terms.ranked_top_terms(label, by_label[label], self.pipeline_config().stats.top_k)
            ]
            lines = (terms.top_terms_row(*r) for r in sorted(ranked, key=lambda r: terms.top_terms_sort_key(*r)))
        for line in lines:
            self.increment_counter(GROUP, table)
            yield table, json.loads(line)


if __name__ == "__main__":
    MRComputeStats.run()
