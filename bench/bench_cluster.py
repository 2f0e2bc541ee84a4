"""Benchmark of the score job on a cluster against local mode, on the same
real rows and the same 2 cores: local[2], a Spark standalone cluster of 2
workers x 1 core, and YARN with 2 executor containers x 1 core, each
executor running the packed environment. Per master: rows/s with start-up
included (the whole ./submit.sh, from the command to its exit: JVMs,
containers, unpacking the environment, model loads, the warm-up) and
excluded (the measured score job alone, after a warm-up job in the same
application has started every executor and loaded the model), as ratios
to local mode.

Run with: .venv/bin/python bench/bench_cluster.py [--rows 20000] [--files 8] [--masters local,standalone,yarn]

It starts its own HDFS, YARN and standalone cluster on free loopback ports
under a temp dir, packs the environment (cached under var/pack) and
uploads it, trains a small head on real labelled rows into a temp
registry, writes the rows as --files JSON Lines files, and stops
everything at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_spark import default_rows  # noqa: E402

from infra.hdfs import LocalHDFS, free_ports  # noqa: E402
from infra.pack import Packer  # noqa: E402
from infra.settings import ClusterSettings, HdfsSettings  # noqa: E402
from infra.standalone import SparkStandalone  # noqa: E402
from infra.yarn import LocalYARN  # noqa: E402
from udfs.config import load_config  # noqa: E402

log = logging.getLogger("bench")
APP = REPO / "bench" / "cluster_score_app.py"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def make_registry(base: Path, cfg) -> Path:
    """A pipeline config whose registry holds sentiment@1, a head trained on
    600 labelled real rows (its accuracy is not what is measured)."""
    from udfs import head as H
    from udfs import model as M
    from udfs import models
    from udfs.predict import embed_texts

    rows = default_rows(cfg, 3000)
    rows = rows[rows["label"].notna()].head(600)
    enc = cfg.encoder
    emb = embed_texts(rows["text"].tolist(), None, enc.precision, enc.batch_size, enc.max_length)
    vocab = H.vocabulary(rows["label"].tolist())
    arrays = H.train_head(emb, rows["label"].tolist(), vocab, cfg.train.model_copy(update={"epochs": 60, "hidden": 16}))
    root = base / "models"
    store = models.Store(models.tracking_uri("", root), root)
    version = M.weights_version(str(M.resolve_model_dir(None).resolve()))
    store.log_trained(
        "sentiment",
        arrays,
        {
            "encoder": {"name": M.DEFAULT_ENCODER_NAME, "version": version, "precision": "fp32"},
            "trained_on": len(rows),
            "labels": vocab,
        },
        {},
        {},
        {},
    )
    text = (REPO / "conf" / "pipeline.toml").read_text()
    assert 'registry_dir = "var/mlflow"' in text
    path = base / "pipeline.toml"
    path.write_text(text.replace('registry_dir = "var/mlflow"', f'registry_dir = "{root}"'))
    return path


def write_rows(webhdfs, path: str, frame, files: int) -> None:
    per = -(-len(frame) // files)
    for i in range(files):
        part = frame.iloc[i * per : (i + 1) * per].astype(object)
        part = part.where(part.notna(), None)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part.to_dict("records"))
        webhdfs.write(f"{path}/part-{i:02d}.jsonl", data=data.encode(), overwrite=True)


def run_master(name: str, master: str, env: dict, config: Path, base_url: str) -> dict:
    cmd = [str(REPO / "submit.sh"), "--master", master, "--config", str(config), str(APP)]
    cmd += ["--warmup", f"{base_url}/warmup", "--input", f"{base_url}/records", "--output", f"{base_url}/out-{name}"]
    cmd += ["--model", "sentiment@1"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd="/tmp", env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name}: submit failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("bench-result: ")).split(": ", 1)[1])
    return {**result, "wall": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--files", type=int, default=8, help="input files (at least 4)")
    p.add_argument("--masters", default="local,standalone,yarn")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    masters = args.masters.split(",")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    cfg = load_config(REPO / "conf" / "pipeline.toml")

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        base = Path(tmp)
        hdfs_ports = free_ports(5)
        hdfs = LocalHDFS(
            HdfsSettings().with_overrides(
                **dict(zip(HdfsSettings.PORT_KEYS, hdfs_ports, strict=True)), data_dir=base / "hdfs", daemon_heap="1g"
            )
        )
        ports = free_ports(13)
        keys = [*ClusterSettings.YARN_PORT_KEYS, "spark_master_port", "spark_master_http_port"]
        worker_http = free_ports(1)[0]
        cluster = ClusterSettings().with_overrides(
            **dict(zip(keys, ports, strict=False)),
            spark_worker_http_port=worker_http,
            yarn_dir=base / "yarn",
            spark_dir=base / "spark",
        )
        yarn = LocalYARN(cluster, hdfs.settings, hadoop_home=hdfs.hadoop_home)
        standalone = SparkStandalone(cluster)
        try:
            hdfs.start()
            from hdfs import InsecureClient

            webhdfs = InsecureClient(hdfs.webhdfs_url, user=hdfs.username)
            frame = default_rows(cfg, args.rows)
            rows_path = f"/user/{hdfs.username}/bench-cluster"
            write_rows(webhdfs, f"{rows_path}/records", frame, max(4, args.files))
            write_rows(webhdfs, f"{rows_path}/warmup", frame.head(400), 4)
            config = make_registry(base, cfg)
            env = {**hdfs.env(), "AIBATCH_CONFIG": str(config)}
            if set(masters) - {"local"}:
                packer = Packer()
                started = time.monotonic()
                archive, packed = packer.pack()
                pack_s = time.monotonic() - started
                os.environ["HADOOP_CONF_DIR"] = str(hdfs.conf_dir)
                started = time.monotonic()
                url = packer.upload(archive, f"{hdfs.hdfs_url}/user/{hdfs.username}/aibatch/env")
                packer.upload(packer.spark_jars_zip(), f"{hdfs.hdfs_url}/user/{hdfs.username}/aibatch/env")
                upload_s = time.monotonic() - started
                env["AIBATCH_ENV_ARCHIVE"] = url
                print(
                    f"packed environment: {archive.stat().st_size / 1e9:.2f} GB "
                    f"({'packed' if packed else 'cached'} in {pack_s:.0f} s, uploaded in {upload_s:.0f} s)",
                    flush=True,
                )
            results = {}
            base_url = f"{hdfs.hdfs_url}{rows_path}"
            for name in masters:
                if name == "local":
                    results[name] = run_master(name, "local[2]", env, config, base_url)
                elif name == "standalone":
                    standalone.start()
                    results[name] = run_master(name, standalone.master_url, env, config, base_url)
                    standalone.stop()
                    for worker in standalone.worker_names():  # each executor's unpacked 5 GB environment
                        shutil.rmtree(standalone.work_dir(worker), ignore_errors=True)
                elif name == "yarn":
                    yarn.start()
                    # Two executor containers of one core each.
                    yarn_env = {**env, **yarn.env()}
                    results[name] = run_master(name, "yarn", yarn_env, config, base_url)
                    yarn.stop()
                log.info("%s: %s", name, results[name])
        finally:
            standalone.stop()
            yarn.stop()
            hdfs.stop()

    print(f"{args.rows} real rows in {max(4, args.files)} files, 2 cores ({cpu_name()}), head sentiment@1, fp32")
    print("rows/s (ratio to local mode):")
    print(f"  {'master':<28} {'start-up excluded':>24} {'start-up included':>24}")
    labels = {"local": "local[2]", "standalone": "standalone, 2 workers x 1", "yarn": "YARN, 2 containers x 1"}
    local = results.get("local")
    for name, r in results.items():
        steady = r["rows"] / r["seconds"]
        whole = r["rows"] / r["wall"]
        if local:
            s_ratio = steady / (local["rows"] / local["seconds"])
            w_ratio = whole / (local["rows"] / local["wall"])
            cells = f"{steady:9.1f} ({s_ratio:4.2f})", f"{whole:9.1f} ({w_ratio:4.2f})"
        else:
            cells = f"{steady:9.1f}", f"{whole:9.1f}"
        print(
            f"  {labels[name]:<28} {cells[0]:>24} {cells[1]:>24}   job {r['seconds']:.1f} s, submit {r['wall']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
