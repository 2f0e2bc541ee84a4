"""mrjob twin of the Spark enrich job: each mapper selects its rows by the
configured filter (udfs.enrich.select) and hands them to the same runner
(udfs.enrich.runner.enrich_batch) in batches; the calls run concurrently
inside the task under the one budget the whole job shares through the store.

Input: scored rows, one JSON object a line (the score twin's output).
Output: every selected row with its result fields, `status` enriched or
dead_letter (the dead letters, with their last error: the Spark job writes
them to a dir of their own); ./submit.sh mr commits it only when the job
succeeded (jobs.commit). The driver prints rows in = enriched + dead-lettered
+ not selected, calls, cache hits, tokens and cost. Counters (group `enrich`): rows_in,
not_selected, enriched, dead_letter, cache_hits, calls, input_tokens,
output_tokens. The API key is read in mapper_init from the variable the
config names; it is never an argument.

Run with:
    AIBATCH_GATEWAY_KEY=... ./submit.sh mr enrich -r local scored.jsonl --output-dir enriched [--overwrite] \
        [--cache DIR] [--set enrich.KEY=VALUE]
    AIBATCH_GATEWAY_KEY=... ./submit.sh mr enrich -r local scored.jsonl --dry-run   (no output dir: writes nothing)
    ... --set enrich.mode=batch [--cancel]   (the Batch APIs; --cancel cancels the --output-dir run's batches)
    (-r hadoop reads and writes hdfs:// paths; -r inline runs in one process)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mrjob.protocol import JSONValueProtocol, RawValueProtocol
from mrjob.step import MRStep

from jobs.mapreduce.configured import ConfiguredJob
from udfs.enrich.driver import add_progress_arg, read_api_key
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
        run_enrich(self)

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--job-id", default="", help="store namespace (default: from the output)")
        self.add_passthru_arg(
            "--run-output",
            default="",
            help="the final output as the user named it (the launcher sets it: the job writes to a staging dir); "
            "it names the job and its batches (default: --output-dir)",
        )
        self.add_passthru_arg("--cache", default="", help="directory of the SQLite store (default: the config's)")
        self.add_passthru_arg("--batch-rows", type=int, default=5000, help="rows handed to the runner at once")
        self.add_passthru_arg("--dry-run", action="store_true", help="count calls and estimated tokens; call nothing")
        self.add_passthru_arg(
            "--cancel",
            action="store_true",
            help="enrich.mode = batch: cancel this run's open batches (the run writing --output-dir) at the "
            "provider; write nothing",
        )
        # Internal (batch mode's first pass, set by the driver): the mappers emit request lines.
        self.add_passthru_arg("--batch-lines", action="store_true", help=argparse.SUPPRESS)
        self.add_passthru_arg(
            "--sample-percent",
            type=float,
            default=100.0,
            help="enrich only the input rows whose id hashes below this per cent (rows in counts those; default 100)",
        )
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
        if not (self.options.dry_run or self.options.batch_lines):
            self.api_key = read_api_key(self.ecfg.provider.api_key_env)

    def mapper_buffer_rows(self, _, row):
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"enrich: an input line is not a scored row with an id: {str(row)[:80]!r}")
        if self.options.sample_percent < 100 and not in_sample(str(row["id"]), self.options.sample_percent):
            return  # the same id hash as Spark's --sample-percent: outside the sample, not counted
        self.increment_counter(GROUP, "rows_in")
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


def store_settings(ecfg, cache: str):
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


def run_enrich(probe: MREnrichRows) -> None:
    """The driver side (mrjob calls run_job only when this is not a task): run into the
    output dir, print the totals (or the dry run's estimate)."""
    from udfs.enrich.accounting import EnrichTotals, PriceTable
    from udfs.enrich.driver import dry_run_summary, job_id_for
    from udfs.enrich.progress import ProgressBar, snapshot
    from udfs.enrich.runner import open_store

    # The run is named by its final output, not the staging dir the launcher gives the job, so a
    # rerun of the same command finds its claims, counters and batches again.
    output = probe.options.run_output or probe.options.output_dir
    job_id = probe.options.job_id or job_id_for(output or "-".join(probe.options.args))
    staged_argv = list(probe._cl_args) if probe.options.job_id else [*probe._cl_args, "--job-id", job_id]
    ecfg = probe.pipeline_config().enrich
    prices = PriceTable.load(_absolute(ecfg.prices))
    show = probe.options.progress and not probe.options.dry_run
    store = open_store(ecfg.model_copy(update={"store": store_settings(ecfg, probe.options.cache)}), job_id)
    total = None
    if show:
        store.progress_reset(job_id)
        total = selected_total(probe.options.args, ecfg)
    batch_lines: list[str] = []
    if ecfg.mode == "batch" and not probe.options.dry_run:
        resolved = ecfg.model_copy(update={"store": store_settings(ecfg, probe.options.cache)})
        done = batch_phase(probe, resolved, store, prices, staged_argv, output or "-".join(probe.options.args))
        if done is None:  # --cancel
            store.close()
            return
        batch_lines = done
    job = MREnrichRows(args=staged_argv)
    with job.make_runner() as runner:
        with ProgressBar(total, lambda: snapshot(store, job_id), enabled=show):
            runner.run()
        got: dict[str, int] = {}
        for step in runner.counters():
            for name, value in step.get(GROUP, {}).items():
                got[name] = got.get(name, 0) + value
    store.close()
    rows_in = got.get("rows_in", 0)
    if probe.options.dry_run:
        from udfs.enrich.assets import load_assets
        from udfs.enrich.batch_mode import batches_for

        calls, tin = got.get("est_calls", 0), got.get("est_input_tokens", 0)
        assets = load_assets(ecfg, root=ConfiguredJob.home())
        out = dry_run_summary(
            rows_in,
            got.get("selected", 0),
            calls,
            tin,
            got.get("est_output_tokens", 0),
            ecfg.provider.model,
            prices,
            batches_for(ecfg, assets, calls, tin) if ecfg.mode == "batch" else None,
        )
        print("\n".join(out["lines"]))
        return
    by_model = {name[len("model:") :]: [0, 0] for name in got if name.startswith("model:")}
    for model in by_model:
        by_model[model] = [got.get(f"model:{model}", 0), got.get(f"model_out:{model}", 0)]
    totals = EnrichTotals(
        rows_in=rows_in,
        enriched=got.get("enriched", 0),
        dead_letter=got.get("dead_letter", 0),
        not_selected=got.get("not_selected", 0),
        calls=got.get("calls", 0),
        cache_hits=got.get("cache_hits", 0),
        input_tokens=got.get("input_tokens", 0),
        output_tokens=got.get("output_tokens", 0),
        by_model=by_model,  # priced by the model that answered each row
    )
    totals.check()
    print("\n".join(totals.report(prices) + batch_lines))


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
        return obtain_batch_answers(ecfg, assets, api_key, store, lines, prices, run)


def main(argv: list[str] | None = None) -> int:
    MREnrichRows(args=list(sys.argv[1:] if argv is None else argv)).execute()
    return 0


if __name__ == "__main__":
    sys.exit(main())
