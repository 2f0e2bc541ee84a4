"""mrjob twin of the Spark ingest job for line-based input (JSON Lines, TSV
with --header): each raw line becomes a record (id, source, text, label,
rating) or a reject (id, source, reason, raw), by the same rules
(udfs.records) and the same duplicate rule (udfs.ingest_rows). The mapper
writes each row's output line once (udfs.ingest_rows.pack_parsed); the
reducer passes the lines of an id seen once through untouched and resolves
the ids seen more than once. Counters are added up in each task and written
once at its end, not once a line (each is a line on the task's stderr).

Output: one JSON object a line; records have `text`, rejects have `reason`
(udfs.ingest_rows.is_reject_row tells them apart). Counters (group `ingest`):
input, good, rejected, one per reject reason, and `skipped <reason>` for
lines that are not records (blank lines, the TSV header).

Run with:
    ./submit.sh mr ingest -r hadoop --source vader_tweets --rating-field sentiment \
        hdfs:///user/$USER/aibatch/raw/tweets.jsonl --output-dir hdfs:///user/$USER/aibatch/mr/records
or directly:
    .venv/bin/python -m jobs.mapreduce.mr_ingest_records -r inline --source mine data.jsonl
"""

from __future__ import annotations

from collections import Counter

from mrjob.compat import jobconf_from_env
from mrjob.protocol import BytesProtocol, BytesValueProtocol
from mrjob.step import MRStep

from jobs.mapreduce.configured import ConfiguredJob
from udfs import ingest_rows, input_files
from udfs import records as R
from udfs.config import ConfigError, parse_label_map, parse_labels

GROUP = "ingest"


class MRIngestRecords(ConfiguredJob):
    INPUT_PROTOCOL = BytesValueProtocol  # raw bytes: invalid UTF-8 must reach the parser
    # Ids and packed rows as bytes (ingest_rows.pack_parsed), output lines as
    # the mapper wrote them: nothing is JSON-decoded or re-encoded on the way.
    INTERNAL_PROTOCOL = BytesProtocol
    OUTPUT_PROTOCOL = BytesValueProtocol

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--source", required=True, help="source name of the input")
        self.add_passthru_arg(
            "--format", default="jsonl", choices=["jsonl", "tsv"], help="line format of the input (default jsonl)"
        )
        self.add_passthru_arg("--header", help="TSV: the tab-separated field names (the file's header line is skipped)")
        self.add_passthru_arg("--text-field", default="text")
        self.add_passthru_arg("--rating-field")
        self.add_passthru_arg("--label-field")
        self.add_passthru_arg(
            "--label-map", help="rename raw labels, e.g. 'neutral=,pos=positive' (empty: unlabelled; others kept)"
        )
        self.add_passthru_arg(
            "--labels",
            help="the label vocabulary, e.g. 'negative,neutral,positive' (others: unknown_label; default: keep every label)",
        )

    def steps(self):
        return [
            MRStep(
                mapper_init=self.mapper_init_spec,
                mapper=self.mapper_parse_line,
                mapper_final=self.mapper_final_counters,
                reducer_init=self.reducer_init_counters,
                reducer=self.reducer_keep_first,
                reducer_final=self.reducer_final_counters,
                # Reducers only pass lines through: as many as map slots, so
                # that the reduce phase is not one core's serial tail (on
                # Hadoop's LocalJobRunner with conf/mrjob.conf's
                # mapreduce.local.reduce.tasks.maximum; a cluster runs them anyway).
                jobconf={"mapreduce.job.reduces": "2"},
            )
        ]

    def load_args(self, args):
        super().load_args(args)
        if not self.is_task():
            self.source_spec()  # a bad map or label set fails before any task starts

    def source_spec(self) -> R.SourceSpec:
        o = self.options
        ingest = self.pipeline_config().ingest
        try:
            return ingest.source_spec(
                source=o.source,
                format=o.format,
                text_field=o.text_field,
                rating_field=o.rating_field,
                label_field=o.label_field,
                label_map=parse_label_map(o.label_map) if o.label_map else None,
                labels=parse_labels(o.labels) if o.labels else None,
            )
        except ValueError as exc:  # ConfigError is one
            raise ConfigError(f"ingest options: {exc}") from None

    def mapper_init_spec(self):
        o = self.options
        self.spec = self.source_spec()
        self.header = R.parse_header("tsv", o.header.encode()) if o.header else None
        if o.format == "tsv" and not self.header:
            raise ValueError("--format tsv needs --header (the file's field names)")
        self.counts: Counter[str] = Counter()

    def make_runner(self):
        # The inline and local runners read local files themselves: read
        # what Hadoop would (no hidden or _ files), and fail naming a
        # compressed file that cannot be read to its end, where mrjob would
        # stop silently at a truncated .gz or fail without naming it.
        o = self.options
        if o.format == "tsv" and o.header and o.text_field not in R.parse_header("tsv", o.header.encode()):
            raise ValueError(f"--header {o.header!r} has no text field {o.text_field!r} (--text-field)")
        if self.reads_local_files():
            for path in self.visible_inputs():
                input_files.check_compressed(path)
        return super().make_runner()

    def _wrap_protocols(self, step_num, step_type):
        # mrjob reads input lines with every trailing CR and LF stripped
        # (rstrip(b"\r\n")), so "a\r\r\n" would lose the empty line Hadoop's
        # LineReader sees there. Strip only the LF; the mapper ends lines at
        # CR and CRLF as Hadoop does (udfs.records.lf_piece_lines). On
        # -r hadoop the lines arrive already split and nothing changes.
        read_lines, write_line = super()._wrap_protocols(step_num, step_type)
        if (step_num, step_type) != (0, "mapper"):
            return read_lines, write_line

        def read_lf_pieces():
            # mrjob's readers give a file that holds only a BOM one line, the
            # bare mark, where Hadoop's reads none (R.file_pieces; a split
            # that starts at 0 is a file's start). Hadoop Streaming ends
            # every line it hands over with LF, so there it never matches.
            lines = self._read_input()
            if jobconf_from_env("mapreduce.map.input.start", "0") == "0":
                lines = R.file_pieces(lines)
            for line in lines:
                yield None, line[:-1] if line.endswith(b"\n") else line

        return read_lf_pieces, write_line

    def mapper_parse_line(self, _, piece: bytes):
        counts, spec, header = self.counts, self.spec, self.header
        for line in R.lf_piece_lines(piece):
            kind, row, raw = R.parse_line(spec, line, header)
            if kind == R.SKIP:
                counts[f"skipped {row['reason']}"] += 1
                continue
            counts["input"] += 1
            yield row["id"].encode("ascii"), ingest_rows.pack_parsed(kind, row, raw)

    def mapper_final_counters(self):
        self._write_counters()
        return iter(())

    def reducer_init_counters(self):
        self.counts = Counter()

    def reducer_keep_first(self, _rid, packed):
        counts = self.counts
        for reason, line in ingest_rows.resolve_packed(packed):
            if reason:
                counts["rejected"] += 1
                counts[f"reason {reason}"] += 1
            else:
                counts["good"] += 1
            yield None, line

    def reducer_final_counters(self):
        self._write_counters()
        return iter(())

    def _write_counters(self):
        for name, n in sorted(self.counts.items()):
            self.increment_counter(GROUP, name, n)
        self.counts.clear()


if __name__ == "__main__":
    MRIngestRecords.run()
