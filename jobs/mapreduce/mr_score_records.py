"""mrjob twin of the Spark score job: a model of any kind (docs/models.md)
applied in the mapper, in length-sorted batches for the transformer kinds,
one torch thread per task.

The model travels to the tasks the mrjob way, as archives uploaded with
the job and unpacked in each task's working dir (mrjob's `archives`; plain
tar files made here, since mrjob's `dirs` gzips a directory at level 9 on
every run: 4.6 s of CPU for the encoder's 88 MB, which compress to 83 MB):
the encoder as `./encoder` and the head's files
(downloaded from MLflow on the driver: udfs.models) as `./head` in each
task's working directory; a classifier's, an embedder's or a generic pyfunc
model's own directory as `./model`. The mapper loads only
those shipped copies, so the job runs the same on a multi-node cluster.

Two steps, so the work follows the map slots, not the input's HDFS blocks:
(1) a cheap pass tokenises each row and deals it to one of
score.partitions_per_core x map slots buckets by estimated cost
(udfs.partitioning, as the Spark job does; a pyfunc model, which has no
tokenizer, by row count), one reducer per bucket (keys
chosen so Hadoop's HashPartitioner gives each bucket its own reducer);
(2) the scoring mappers, one per bucket file. Map slots: --map-slots, else
the local runner's num_cores, else this machine's cores.

Input: records, one JSON object a line (the ingest output; reject rows are
skipped and counted). Output: one scored row a line, as udfs.lineage writes
it. Counters (group `score`): rows, skipped_rejects, batches (scoring step),
cost_mflop (estimated, both steps).

Run with:
    ./submit.sh mr score -r hadoop --model sentiment@1 \
        hdfs:///user/$USER/aibatch/mr/records --output-dir hdfs:///user/$USER/aibatch/mr/scored
or directly:
    .venv/bin/python -m jobs.mapreduce.mr_score_records -r local --config conf/pipeline.toml \
        --model sentiment@1 records.jsonl
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from mrjob.compat import jobconf_from_env
from mrjob.protocol import JSONValueProtocol, RawValueProtocol
from mrjob.step import MRStep

from jobs.mapreduce.configured import ConfiguredJob
from udfs import lineage as L
from udfs.ingest_rows import is_reject_row
from udfs.partitioning import task_count

GROUP = "score"
ENCODER_NAME = "encoder"
HEAD_NAME = "head"
MODEL_NAME = "model"  # a classifier's, embedder's or pyfunc model's directory (it replaces ./encoder and ./head)
ONNX_NAME = "onnx"


class ShippedModelMissing(RuntimeError):
    """The task's working directory lacks the shipped model copy."""


def tar_dirs(dirs: list[str]) -> list[str]:
    """Each DIR#NAME as an uncompressed tar of DIR's files (symlinks followed),
    in a temp dir removed when the driver exits: ARCHIVE#NAME, which Hadoop
    and mrjob's local runners unpack as ./NAME in each task's working dir."""
    import tarfile

    if not dirs:
        return []
    tmp = Path(tempfile.mkdtemp(prefix="aibatch-archives-"))
    atexit.register(shutil.rmtree, tmp, True)  # uploaded with the job by then
    out = []
    for spec in dirs:
        path, name = spec.rsplit("#", 1)
        archive = tmp / f"{name}.tar"
        with tarfile.open(archive, "w", dereference=True) as tar:
            for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
                tar.add(file, arcname=str(file.relative_to(path)))
        out.append(f"{archive}#{name}")
    return out


class MRScoreRecords(ConfiguredJob):
    INPUT_PROTOCOL = JSONValueProtocol
    OUTPUT_PROTOCOL = RawValueProtocol

    _head_dir: Path | None = None
    _model_dir: Path | None = None  # a classifier's or embedder's files, shipped as ./model

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg(
            "--model",
            help="MLflow model URI (models:/NAME/N, models:/NAME@ALIAS, runs:/ID/model), a local model dir, "
            "or NAME@N (default: score.model in the config)",
        )
        self.add_passthru_arg("--precision", choices=["fp32", "bf16"], help="override encoder.precision")
        self.add_passthru_arg(
            "--flush-rows",
            type=int,
            default=1024,
            help="rows buffered per task before a scoring pass (sorted by length within it)",
        )
        self.add_passthru_arg("--run-id", default="", help="lineage run id (default: the Hadoop job id)")
        self.add_passthru_arg(
            "--map-slots",
            type=int,
            help="map tasks the cluster runs at once (default: the local runner's num_cores, else this machine's cores)",
        )

    # ----- driver side: what to ship -------------------------------------
    def archives(self):
        return [*super().archives(), *tar_dirs(self.model_dirs())]

    def model_dirs(self) -> list[str]:
        """The encoder dir and the head's files (DIR#NAME), resolved in the
        driver (an unknown model fails here, naming what the registry holds)."""
        from udfs import model as M
        from udfs import models
        from udfs.scoring import plan_scoring

        cfg = self.pipeline_config()
        if self._head_dir is None:
            ref = self.options.model or cfg.score.model
            store = None if models.is_local(ref) else models.open_store(cfg, self.home())
            tmp = Path(tempfile.mkdtemp(prefix="aibatch-head-"))
            atexit.register(shutil.rmtree, tmp, True)  # uploaded with the job by then
            model = models.download_to(store, ref, tmp)
            if isinstance(model, models.TransformerVersion | models.PyfuncVersion):
                # a classifier, embedder or pyfunc model: its own directory is all the tasks need
                # columns it cannot write, settings it cannot use fail here, before Hadoop
                plan_scoring(cfg, model, "check", precision=self.options.precision)
                self._model_dir = model.model_dir
                self._head_dir = model.model_dir
            else:
                self._head_dir = tmp / models.HEAD_ARTIFACT
        if self._model_dir is not None:
            return [f"{self._model_dir}#{MODEL_NAME}"]
        encoder_dir = M.resolve_model_dir(cfg.encoder.model_dir or None).resolve()
        shipped = [f"{encoder_dir}#{ENCODER_NAME}", f"{self._head_dir}#{HEAD_NAME}"]
        if cfg.encoder.runtime == "onnxruntime":
            from udfs import onnx_runtime

            # exported (or found in the cache) here, once, and shipped: tasks never export
            cache = onnx_runtime.export(str(encoder_dir)).parent.parent
            shipped.append(f"{cache}#{ONNX_NAME}")
        return shipped

    # ----- task side ------------------------------------------------------
    def buckets(self) -> int:
        """Scoring map tasks: partitions_per_core for each map slot."""
        slots = self.options.map_slots or getattr(self.options, "num_cores", None) or os.cpu_count() or 1
        return task_count(slots, self.pipeline_config().score.partitions_per_core)

    def steps(self):
        return [
            MRStep(
                mapper_init=self.mapper_init_costs,
                mapper=self.mapper_deal_rows,
                mapper_final=self.mapper_final_deal,
                reducer=self.reducer_pass_bucket,
                jobconf={"mapreduce.job.reduces": str(self.buckets())},
            ),
            MRStep(
                mapper_init=self.mapper_init_model, mapper=self.mapper_buffer_rows, mapper_final=self.mapper_final_flush
            ),
        ]

    # ----- step 1: deal rows to buckets of equal estimated cost ------------
    def mapper_init_costs(self):
        from udfs.partitioning import GreedyBuckets, hadoop_reducer_keys

        # The bucket count travels in the step's jobconf (the driver chose it).
        n = int(jobconf_from_env("mapreduce.job.reduces", "1"))
        self.keys = hadoop_reducer_keys(n)
        task = int(jobconf_from_env("mapreduce.task.partition", "0") or 0)
        self.dealer = GreedyBuckets(n, start=task)
        # the transformer whose tokenizer and shape give the cost: the
        # encoder, or a classifier's or embedder's own directory; a pyfunc
        # model has none, so its rows count one each
        from udfs.models import PYFUNC_KIND, find_model_files

        own = Path(MODEL_NAME)
        self.by_count = own.is_dir() and find_model_files(own.resolve())[0] == PYFUNC_KIND
        self.encoder_dir = own.resolve() if own.is_dir() else self._shipped(Path(ENCODER_NAME), "encoder")
        self.max_length = self.pipeline_config().encoder.max_length
        self.pending = []

    def mapper_deal_rows(self, _, row):
        self.pending.append(row)
        if len(self.pending) >= self.options.flush_rows:
            yield from self._deal()

    def mapper_final_deal(self):
        yield from self._deal()

    def _deal(self):
        from udfs.partitioning import text_costs

        rows, self.pending = self.pending, []
        if not rows:
            return
        texts = [None if is_reject_row(r) else r.get("text") for r in rows]
        if self.by_count:
            costs = np.ones(len(rows), dtype=np.int64)
        else:
            costs = text_costs(texts, str(self.encoder_dir), self.max_length)
            self.increment_counter(GROUP, "cost_mflop", int(costs.sum()))
        for row, bucket in zip(rows, self.dealer.assign(costs), strict=True):
            yield self.keys[bucket], row

    def reducer_pass_bucket(self, key, rows):
        for row in rows:
            yield key, row

    @staticmethod
    def _shipped(path: Path, what: str) -> Path:
        if not path.is_dir():
            raise ShippedModelMissing(
                f"the shipped {what} copy ./{path} is missing from the task's working dir "
                f"{os.getcwd()}: run the job with its model dirs (see MRScoreRecords.model_dirs)"
            )
        return path.resolve()

    def mapper_init_model(self):
        from udfs.models import PYFUNC_KIND, find_model_files, load_head_dir, load_pyfunc_dir, load_transformer_dir
        from udfs.predict import load_for, set_threads
        from udfs.pyfunc_kind import load_model
        from udfs.scoring import plan_scoring

        if Path(MODEL_NAME).is_dir():  # a classifier, an embedder or a pyfunc model (model_dirs() shipped it alone)
            own = Path(MODEL_NAME).resolve()
            kind = find_model_files(own)[0]
            model = load_pyfunc_dir(own) if kind == PYFUNC_KIND else load_transformer_dir(own)
            encoder_dir = None
        else:
            encoder_dir = self._shipped(Path(ENCODER_NAME), "encoder")
            model = load_head_dir(self._shipped(Path(HEAD_NAME), "head"))
        if self.pipeline_config().encoder.runtime == "onnxruntime":
            os.environ["AIBATCH_ONNX_CACHE"] = str(self._shipped(Path(ONNX_NAME), "ONNX encoder"))
        # mrjob does not set torch's threads per task as Spark does (measured
        # faster with one: shared/RESOURCES.md).
        set_threads(1)
        run_id = self.options.run_id or jobconf_from_env("mapreduce.job.id", "") or "unknown"
        plan = plan_scoring(
            self.pipeline_config(),
            model,
            run_id,
            encoder_dir=encoder_dir,
            precision=self.options.precision,
            torch_threads=1,
            scored_at=dt.datetime.now(dt.UTC),
        )
        self.settings, self.lineage, self.fields = plan.settings, plan.lineage, [name for name, _ in plan.fields]
        self.pyfunc = plan.pyfunc
        self.with_embedding = self.pipeline_config().score.with_embedding
        if self.pyfunc is not None:
            load_model(self.pyfunc.model_dir)  # once per task, before the first row
        else:
            load_for(self.settings)
        self.buffer = []

    def mapper_buffer_rows(self, _, row):
        if is_reject_row(row):
            self.increment_counter(GROUP, "skipped_rejects")
            return
        self.buffer.append(row)
        if len(self.buffer) >= self.options.flush_rows:
            yield from self._flush()

    def mapper_final_flush(self):
        yield from self._flush()

    def _flush(self):
        from udfs.predict import score_texts
        from udfs.pyfunc_kind import predict_frame

        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        texts = [r.get("text") for r in rows]
        if self.pyfunc is not None:  # its own predict, once per buffer of rows
            scored = predict_frame([r.get("id") for r in rows], texts, self.pyfunc)
            self.increment_counter(GROUP, "batches")
        else:
            scored = score_texts(texts, self.settings, self.with_embedding)
            self.increment_counter(GROUP, "batches", -(-len(rows) // self.settings.batch_size))
        columns = [scored[name].tolist() for name in self.fields]  # the columns the model's kind writes
        for row, *values in zip(rows, *columns, strict=True):
            self.increment_counter(GROUP, "rows")
            yield None, L.scores_row_json(row, dict(zip(self.fields, values, strict=True)), self.lineage)


if __name__ == "__main__":
    MRScoreRecords.run()
