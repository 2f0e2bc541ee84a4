"""mrjob twin of the Spark enrich job: each mapper selects its rows by the
configured filter (udfs.enrich.select) and hands them to the same runner
(udfs.enrich.runner.enrich_batch) in batches; the calls run concurrently
inside the task under the one budget the whole job shares through the store.

Input: scored rows, one JSON object a line (the score twin's output).
Output, as the Spark job's (JSON Lines, the input columns plus the result
fields): the enriched rows in --output-dir, the dead letters (with their last
error) in --dead-letters (default OUTPUT_dead_letters). The job writes every
result to a hidden results dir; the driver streams it into the two by
`status` (jobs.mapreduce.enrich_outputs), and ./submit.sh mr commits both
together only when all of that succeeded (jobs.commit; run without the
launcher, the driver commits them itself). --retry-dead-letters re-runs only
the rows whose id is in the dead letters (their ids are shipped to the
mappers), keeps the previous output's rows and replaces both outputs, as on
Spark. The driver prints rows in = enriched + dead-lettered + not selected,
calls, cache hits, tokens and cost. Counters (group `enrich`): rows_in,
not_selected, enriched, dead_letter, cache_hits, calls, input_tokens,
output_tokens. The API key is read in mapper_init from the variable the
config names; it is never an argument.

Run with:
    AIBATCH_GATEWAY_KEY=... ./submit.sh mr enrich -r local scored.jsonl --output-dir enriched [--dead-letters DL] \
        [--overwrite] [--retry-dead-letters] [--cache DIR] [--sample-percent P] [--set enrich.KEY=VALUE]
    AIBATCH_GATEWAY_KEY=... ./submit.sh mr enrich -r local scored.jsonl --dry-run   (no output dir: writes nothing)
    ... --set enrich.mode=batch [--cancel]   (the Batch APIs; --cancel cancels the --output-dir run's batches)
    (-r hadoop reads and writes hdfs:// paths; -r inline runs in one process)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path

from mrjob.protocol import JSONValueProtocol, RawValueProtocol
from mrjob.step import MRStep

from jobs import commit
from jobs.mapreduce.configured import ConfiguredJob
from jobs.mapreduce.enrich_outputs import Split, load_retry_ids, previous_rows, split_results, write_retry_ids
from udfs.enrich.accounting import EnrichTotals
from udfs.enrich.driver import add_enrich_args, add_progress_arg, count_kept, dead_letters_path, read_api_key
from udfs.enrich.driver import summary as enrich_summary
from udfs.records import in_sample

log = logging.getLogger(__name__)

GROUP = "enrich"
PROMPTS_NAME = "enrich_prompts"  # the prompt templates' dir, shipped to each task under this name
SCHEMA_NAME = "enrich_schema.json"


def _absolute(path: str) -> str:
    """A setting's path, relative ones taken from the project root (ConfiguredJob.home)."""
    return path if Path(path).is_absolute() or "://" in path else str(ConfiguredJob.home() / path)


class MREnrichRows(ConfiguredJob):
    INPUT_PROTOCOL = JSONValueProtocol
    OUTPUT_PROTOCOL = RawValueProtocol

    def run_job(self):
        if not self.options.report_facts:
            run_enrich(self)
            return
        from jobs.mapreduce import twin_report

        with twin_report.StepTimer() as timer:
            ran = run_enrich(self)
        if ran is not None:
            summary, got = ran
            twin_report.write_facts(
                self.options.report_facts, self.options.runner or "inline", timer.steps(), {GROUP: got}, summary
            )

    def configure_args(self):
        super().configure_args()
        add_enrich_args(self.add_passthru_arg)  # the options the Spark job offers too (udfs.enrich.driver)
        self.add_passthru_arg("--job-id", default="", help="store namespace (default: from the output)")
        self.add_passthru_arg(
            "--run-output",
            default="",
            help="the final output as the user named it (the launcher sets it: the job writes to a staging dir); "
            "it names the job and its batches (default: --output-dir)",
        )
        self.add_passthru_arg("--batch-rows", type=int, default=5000, help="rows handed to the runner at once")
        # Internal, set by the launcher: the staging dir the dead letters go to (it commits it with the output).
        self.add_passthru_arg("--dead-letters-dir", default="", help=argparse.SUPPRESS)
        # Internal, set by the driver: --retry-dead-letters' ids (a file shipped to the tasks).
        self.add_file_arg("--retry-ids", help=argparse.SUPPRESS)
        # Internal: the launcher sets --ship-api-key where the tasks run in YARN containers, which
        # do not inherit the client's environment; the driver then writes the key to a private file
        # (0600, in its 0700 temp dir) shipped as --api-key-file, uploaded owner-only (hadoop_runner).
        self.add_passthru_arg("--ship-api-key", action="store_true", help=argparse.SUPPRESS)
        self.add_file_arg("--api-key-file", help=argparse.SUPPRESS)
        # Internal (batch mode's first pass, set by the driver): the mappers emit request lines.
        self.add_passthru_arg("--batch-lines", action="store_true", help=argparse.SUPPRESS)
        add_progress_arg(self.arg_parser)
        self.pass_arg_through("--progress")

    # ----- driver side: what to ship -------------------------------------
    def dirs(self):
        return [f"{Path(_absolute(self.pipeline_config().enrich.prompts_dir)).resolve()}#{PROMPTS_NAME}"]

    def files(self):
        return [f"{Path(_absolute(self.pipeline_config().enrich.answer_schema)).resolve()}#{SCHEMA_NAME}"]

    # ----- task side ------------------------------------------------------
    def steps(self):
        return [
            MRStep(
                mapper_init=self.mapper_init_client,
                mapper=self.mapper_buffer_rows,
                mapper_final=self.mapper_final_flush,
            )
        ]

    def mapper_init_client(self):
        ecfg = self.pipeline_config().enrich
        self.ecfg = ecfg.model_copy(
            update={
                "prompts_dir": str(Path(PROMPTS_NAME).resolve()),
                "answer_schema": str(Path(SCHEMA_NAME).resolve()),
                "store": store_settings(ecfg, self.options.cache),
            }
        )
        from udfs.enrich.assets import load_assets
        from udfs.enrich.progress import ProgressFeed
        from udfs.enrich.runner import TaskState, open_store

        self.assets = load_assets(self.ecfg)
        self.buffer = []
        self.store = open_store(self.ecfg, self.options.job_id)
        self.state = TaskState()  # what this task learns carries over its batches
        self.counters = ProgressFeed(self.store, self.options.job_id) if self.options.progress else None
        # --retry-dead-letters: only these rows are re-run, whatever the filter says (as on Spark)
        self.retry_ids = load_retry_ids(self.options.retry_ids) if self.options.retry_ids else None
        if not (self.options.dry_run or self.options.batch_lines):
            self.api_key = read_api_key(self.ecfg.provider.api_key_env, key_file=self.options.api_key_file)

    def mapper_buffer_rows(self, _, row):
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"enrich: an input line is not a scored row with an id: {str(row)[:80]!r}")
        if self.options.sample_percent < 100 and not in_sample(str(row["id"]), self.options.sample_percent):
            return  # the same id hash as Spark's --sample-percent: outside the sample, not counted
        self.increment_counter(GROUP, "rows_in")
        if self.retry_ids is not None and json.dumps(row["id"]) not in self.retry_ids:
            return  # kept from the previous output, or not selected then: the driver counts those
        self.buffer.append(row)
        if len(self.buffer) >= self.options.batch_rows:
            yield from self._flush()

    def mapper_final_flush(self):
        yield from self._flush()
        self.store.close()

    def _flush(self):
        import pandas as pd

        from udfs.enrich.select import select_mask

        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        if self.retry_ids is not None:
            selected = rows  # the dead letters' rows, selected by the run that failed them
        else:
            mask = select_mask(pd.DataFrame(rows), self.ecfg.select).tolist()
            selected = [r for r, keep in zip(rows, mask, strict=True) if keep]
            self.increment_counter(GROUP, "not_selected", len(rows) - len(selected))
        if not selected:
            return
        if self.options.batch_lines:  # batch mode's first pass: the request lines, made in the tasks
            from udfs.enrich.batch_lines import request_lines

            for custom_id, line, tokens in request_lines(selected, self.ecfg, self.assets):
                yield None, json.dumps([custom_id, line, tokens])
            return
        if self.options.dry_run:
            from udfs.enrich.accounting import estimate_counts

            calls, input_tokens, output_tokens = estimate_counts(selected, self.ecfg, self.assets, self.store)
            self.increment_counter(GROUP, "selected", len(selected))
            self.increment_counter(GROUP, "est_calls", calls)
            self.increment_counter(GROUP, "est_input_tokens", input_tokens)
            self.increment_counter(GROUP, "est_output_tokens", output_tokens)
            return
        from udfs.enrich.result import result_fields
        from udfs.enrich.runner import enrich_batch

        results = enrich_batch(
            selected,
            self.ecfg,
            api_key=self.api_key.get_secret_value(),
            store=self.store,
            on_event=None if self.counters is None else self.counters.on_event,
            assets=self.assets,
            state=self.state,
        )
        if self.counters is not None:
            self.counters.flush()
        for row, fields in zip(selected, result_fields(selected, results), strict=True):
            self.increment_counter(GROUP, fields["status"])
            if fields["cached"]:
                self.increment_counter(GROUP, "cache_hits")
            else:
                self.increment_counter(GROUP, "calls", int(fields["attempts"] or 0))
                self.increment_counter(GROUP, "input_tokens", int(fields["input_tokens"] or 0))
                self.increment_counter(GROUP, "output_tokens", int(fields["output_tokens"] or 0))
                # per answering model, for the cost (Hadoop counter names are plain strings)
                self.increment_counter(GROUP, f"model:{fields['model']}", int(fields["input_tokens"] or 0))
                self.increment_counter(GROUP, f"model_out:{fields['model']}", int(fields["output_tokens"] or 0))
            yield None, json.dumps({**row, **fields}, ensure_ascii=False, default=str)


# ----- the driver: run into staging, commit, report --------------------------


def store_settings(ecfg, cache: str | None):
    """The store settings the tasks use: --cache DIR's SQLite file, else the
    config's, a relative path taken from the project root."""
    store = ecfg.store
    path = str(Path(cache) / "store.sqlite") if cache else store.path
    return store.model_copy(update={"path": _absolute(path)})


def selected_total(inputs: list[str], ecfg) -> int | None:
    """How many rows the filter selects, for the progress bar's ETA: counted
    here when every input is a local file, else unknown (None)."""
    import pandas as pd

    from udfs.enrich.select import select_mask

    paths = [Path(p) for p in inputs]
    if not paths or not all(p.is_file() for p in paths):
        return None
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    return int(select_mask(pd.DataFrame(rows), ecfg.select).sum()) if rows else 0


def run_enrich(probe: MREnrichRows) -> tuple[dict, dict[str, int]] | None:
    """The driver side (mrjob calls run_job only when this is not a task): run the job into a
    hidden results dir, split it into the output and the dead letters (jobs.mapreduce.enrich_outputs),
    print the totals (or the dry run's estimate). Returns the run's summary (as the Spark job's)
    and its `enrich` counters; None for a dry run or --cancel."""
    from udfs.enrich.accounting import PriceTable
    from udfs.enrich.driver import job_id_for
    from udfs.enrich.runner import open_store

    opts = probe.options
    # The run is named by its final output, not the staging dir the launcher gives the job, so a
    # rerun of the same command finds its claims, counters and batches again.
    output = opts.run_output or opts.output_dir
    dead_letters = dead_letters_path(output, opts.dead_letters) if output else ""
    if opts.retry_dead_letters and not output:
        raise ValueError("enrich --retry-dead-letters: give the --output-dir of the run to retry")
    job_id = opts.job_id or job_id_for(output or "-".join(opts.args))
    staged_argv = list(probe._cl_args) if opts.job_id else [*probe._cl_args, "--job-id", job_id]
    ecfg = probe.pipeline_config().enrich
    prices = PriceTable.load(_absolute(ecfg.prices))
    show = opts.progress and not opts.dry_run
    resolved = ecfg.model_copy(update={"store": store_settings(ecfg, opts.cache)})
    with tempfile.TemporaryDirectory(prefix="enrich-retry-", dir=opts.local_tmp_dir or None) as tmp:
        failed = 0
        if opts.retry_dead_letters:
            ids_file = Path(tmp) / "retry_ids.jsonl"
            failed = write_retry_ids(dead_letters, ids_file)
            staged_argv += ["--retry-ids", str(ids_file)]
        if opts.ship_api_key and not (opts.dry_run or opts.cancel):
            key_file = Path(tmp) / "api_key"  # tmp is the driver's own (0700)
            key_file.touch(mode=0o600)
            key_file.write_text(read_api_key(ecfg.provider.api_key_env).get_secret_value())
            # mrjob deletes its HDFS scratch (the key's copy among it) on failure too
            staged_argv += ["--api-key-file", str(key_file), "--cleanup-on-failure", "HADOOP_TMP"]
        store = open_store(resolved, job_id)
        total = None
        if show:
            store.progress_reset(job_id)
            total = failed if opts.retry_dead_letters else selected_total(opts.args, ecfg)
        batch_lines: list[str] = []
        if (ecfg.mode == "batch" or opts.cancel) and not opts.dry_run:
            done = batch_phase(probe, resolved, store, prices, staged_argv, output or "-".join(opts.args))
            if done is None:  # --cancel
                store.close()
                return None
            batch_lines = done
        if opts.dry_run or not output:
            got, split = run_counted(without_output_dir(staged_argv), store, job_id, total, show), None
        else:
            got, split = run_split(probe, staged_argv, output, dead_letters, store, job_id, total, show)
        store.close()
    if opts.dry_run:
        kept = sum(1 for _ in previous_rows(output)) if opts.retry_dead_letters else 0
        print_dry_run(got, kept + failed if opts.retry_dead_letters else got.get("selected", 0), ecfg, prices)
        return None
    totals = totals_of(got, split, failed if opts.retry_dead_letters else None)
    out = enrich_summary(totals, prices, output, dead_letters)  # the totals checked
    print("\n".join(out["lines"] + batch_lines))
    if output:
        print(f"enriched: {output}\ndead letters: {dead_letters}")
    return out, got


def run_counted(argv: list[str], store, job_id: str, total: int | None, show: bool) -> dict[str, int]:
    """Run the job; its `enrich` counters summed over the steps."""
    from udfs.enrich.progress import ProgressBar, snapshot

    job = MREnrichRows(args=argv)
    with job.make_runner() as runner:
        with ProgressBar(total, lambda: snapshot(store, job_id), enabled=show):
            runner.run()
        return counters_of(runner)


def counters_of(runner) -> dict[str, int]:
    got: dict[str, int] = {}
    for step in runner.counters():
        for name, value in step.get(GROUP, {}).items():
            got[name] = got.get(name, 0) + value
    return got


def run_split(probe, staged_argv, output, dead_letters, store, job_id, total, show):
    """Run the job into a hidden results dir beside the output's staging dir, then split it into
    the output and the dead letters: the launcher's staging dirs (it commits both), else, run
    without the launcher, dirs committed here together (jobs.commit: both in place or neither).
    --retry-dead-letters: the previous output's rows are copied into the new output first."""
    from udfs.enrich.progress import ProgressBar, snapshot

    opts = probe.options
    launched = bool(opts.dead_letters_dir)
    dests = {"output": opts.output_dir, "dead_letters": opts.dead_letters_dir or dead_letters}
    committing = (
        contextlib.nullcontext(dests)
        if launched
        else commit.committed(dests, overwrite=opts.retry_dead_letters, inputs=opts.args)
    )
    with committing as staging:
        results = commit.scratch_path(staging["output"], "results")
        job = MREnrichRows(args=[*without_output_dir(staged_argv), "--output-dir", results])
        try:
            with job.make_runner() as runner:
                with ProgressBar(total, lambda: snapshot(store, job_id), enabled=show):
                    runner.run()
                got = counters_of(runner)
                kept = previous_rows(output) if opts.retry_dead_letters else ()
                split = split_results(runner.cat_output(), staging["output"], staging["dead_letters"], kept)
        finally:
            fs = commit.filesystem(results)
            if fs.exists(results):
                fs.delete(results)
    return got, split


def print_dry_run(got: dict[str, int], selected: int, ecfg, prices) -> None:
    from udfs.enrich.assets import load_assets
    from udfs.enrich.batch_mode import batches_for
    from udfs.enrich.driver import dry_run_summary

    calls, tin = got.get("est_calls", 0), got.get("est_input_tokens", 0)
    assets = load_assets(ecfg, root=ConfiguredJob.home())
    out = dry_run_summary(
        got.get("rows_in", 0),
        selected,
        calls,
        tin,
        got.get("est_output_tokens", 0),
        ecfg.provider.model,
        prices,
        batches_for(ecfg, assets, calls, tin) if ecfg.mode == "batch" else None,
    )
    print("\n".join(out["lines"]))


def totals_of(got: dict[str, int], split: Split | None, failed: int | None) -> EnrichTotals:
    """The run's totals from the job's counters; with --retry-dead-letters (`failed`: how many
    dead letters it retried) the kept rows count as Spark's do and not selected is what neither
    the kept rows nor the retried ones are (the mappers see no filter then)."""
    by_model = {name[len("model:") :]: [0, 0] for name in got if name.startswith("model:")}
    for model in by_model:
        by_model[model] = [got.get(f"model:{model}", 0), got.get(f"model_out:{model}", 0)]
    totals = EnrichTotals(
        rows_in=got.get("rows_in", 0),
        enriched=got.get("enriched", 0),
        dead_letter=got.get("dead_letter", 0),
        not_selected=got.get("not_selected", 0),
        calls=got.get("calls", 0),
        cache_hits=got.get("cache_hits", 0),
        input_tokens=got.get("input_tokens", 0),
        output_tokens=got.get("output_tokens", 0),
        by_model=by_model,  # priced by the model that answered each row
    )
    if failed is not None and split is not None:
        for (status, model), rows in split.kept.items():
            count_kept(totals, status, model, rows)
        totals.not_selected = totals.rows_in - sum(split.kept.values()) - failed
    return totals


def without_output_dir(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--output-dir":
            skip = True
        elif not a.startswith("--output-dir="):
            out.append(a)
    return out


def batch_phase(probe: MREnrichRows, ecfg, store, prices, staged_argv: list[str], run: str) -> list[str] | None:
    """enrich.mode = "batch" (the launcher is the driver): a first pass of the same job whose
    mappers emit the selected rows' request lines, streamed back here into
    udfs.enrich.batch_mode, which fills the answer cache through the Batch API; the usual pass
    then answers the rows from the cache. --cancel cancels the run's open batches instead
    (None). `run`: the final output (the inputs when there is none), which keys the batches."""
    from udfs.enrich.assets import load_assets
    from udfs.enrich.batch_mode import cancel_batches, obtain_batch_answers

    api_key = read_api_key(ecfg.provider.api_key_env).get_secret_value()
    assets = load_assets(ecfg, root=ConfiguredJob.home())
    if probe.options.cancel:
        if not (probe.options.run_output or probe.options.output_dir):
            raise ValueError("enrich --cancel: give the run's --output-dir (the batches cancelled are that run's)")
        print("\n".join(cancel_batches(ecfg, api_key, store, run)))
        return None
    job = MREnrichRows(args=[*without_output_dir(staged_argv), "--batch-lines"])
    with job.make_runner() as runner:
        runner.run()
        lines = (tuple(json.loads(value)) for _, value in job.parse_output(runner.cat_output()))
        retry = probe.options.retry_dead_letters  # the retried lines get their batch attempts back, as on Spark
        return obtain_batch_answers(ecfg, assets, api_key, store, lines, prices, run, retry)


def main(argv: list[str] | None = None) -> int:
    MREnrichRows(args=list(sys.argv[1:] if argv is None else argv)).execute()
    return 0


if __name__ == "__main__":
    sys.exit(main())
