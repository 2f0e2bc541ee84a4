"""/score throughput of the service: concurrent one-text requests micro-batched,
the same requests one at a time, and the plain udfs call on the same texts,
with the ratios, from one run.

Run with: nice -n 10 .venv/bin/python bench/bench_service.py [--texts 128 --concurrency 32]

It registers a small head in a private MLflow store (the default encoder,
trained on a few sentences: its accuracy is not the point), starts the
service itself (python -m service on a free loopback port, with a generated
config and key), prints a table and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.running import free_port  # noqa: E402

WORDS = (
    "the film plot acting was wonderful dull slow brilliant moving boring story music great awful long short "
    "funny sad scenes characters ending director camera loved hated never always quite really"
).split()
TRAIN = [
    ("a wonderful, moving film with superb acting", "positive"),
    ("brilliant and funny, highly recommended", "positive"),
    ("a great story told beautifully", "positive"),
    ("dull, slow and far too long", "negative"),
    ("a terrible waste of time", "negative"),
    ("awful acting and a boring plot", "negative"),
]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 40))) for _ in range(n)]


def register_head(base: Path) -> Path:
    """A pipeline config whose registry (in base) holds sentiment@1."""
    from udfs import head as H
    from udfs import model as M
    from udfs import models
    from udfs.config import EncoderConfig, TrainConfig
    from udfs.predict import embed_texts

    text = (REPO / "conf" / "pipeline.toml").read_text()
    config = base / "pipeline.toml"
    config.write_text(text.replace('registry_dir = "var/mlflow"', f'registry_dir = "{base / "models"}"'))
    enc = EncoderConfig()
    emb = embed_texts([t for t, _ in TRAIN], None, enc.precision, enc.batch_size, enc.max_length)
    labels = [label for _, label in TRAIN]
    vocab = H.vocabulary(labels)
    arrays = H.train_head(emb, labels, vocab, TrainConfig(hidden=8, epochs=30))
    version = M.weights_version(str(M.resolve_model_dir(None).resolve()))
    meta = {"encoder": {"name": M.DEFAULT_ENCODER_NAME, "version": version, "precision": "fp32"}, "labels": vocab}
    store = models.Store(f"sqlite:///{(base / 'models').resolve() / 'mlflow.db'}", base / "models")
    store.log_trained("sentiment", arrays, meta, {}, {}, {})
    return config


def plain_udfs(config: Path, batch: list[str], threads: int) -> float:
    """texts/s of udfs.predict.score_texts over all texts in one call (encoder batches of encoder.batch_size)."""
    from udfs import models
    from udfs.config import load_config
    from udfs.predict import score_texts
    from udfs.scoring import plan_scoring

    cfg = load_config(config)
    head = models.load(models.open_store(cfg, REPO), "sentiment@1")
    plan = plan_scoring(cfg, head, "bench", torch_threads=threads)
    score_texts(batch[:8], plan.settings)  # warm: the encoder loaded once
    started = time.perf_counter()
    score_texts(batch, plan.settings)
    return len(batch) / (time.perf_counter() - started)


async def over_http(url: str, key: str, batch: list[str], concurrency: int) -> float:
    """texts/s of one-text requests to /api/v2/score, `concurrency` in flight at once."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"x-api-key": key}, timeout=600, limits=limits) as client:

        async def one(text: str) -> None:
            async with sem:
                r = await client.post("/api/v2/score", json={"model": "sentiment@1", "texts": [text]})
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(t) for t in batch))
        return len(batch) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, in the service and the plain call")
    args = parser.parse_args()
    batch = texts(args.texts)
    key = "sk-bench-" + secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        base = Path(tmp)
        config = register_head(base)
        service_conf = base / "service.toml"
        service_conf.write_text(
            f'pipeline_config = "{config}"\nkeys_env = "BENCH_SERVICE_KEYS"\n'
            f"[score]\nmax_texts = 64\nmax_batch_size = {args.max_batch_size}\nmax_wait_ms = {args.max_wait_ms}\n"
            f"torch_threads = {args.threads}\n"
            f'[runs]\ndb = "{base / "runs.db"}"\ndir = "{base / "runs"}"\n'
        )
        port = free_port()
        env = dict(os.environ, BENCH_SERVICE_KEYS=key)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--config",
                str(service_conf),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(f"{url}/api/v1/health").raise_for_status()
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print("the service did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.3)
            asyncio.run(over_http(url, key, batch[:4], 1))  # warm: the model loaded once
            sequential = asyncio.run(over_http(url, key, batch, 1))
            before = httpx.get(f"{url}/api/v1/health").json()["score"]
            batched = asyncio.run(over_http(url, key, batch, args.concurrency))
            after = httpx.get(f"{url}/api/v1/health").json()["score"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        plain = plain_udfs(config, batch, args.threads)
    calls = after["batches"] - before["batches"]
    print(
        f"/score throughput, {args.texts} texts of 6-40 words, one text per request, torch threads {args.threads}, "
        f"max_batch_size {args.max_batch_size}, max_wait_ms {args.max_wait_ms}"
    )
    print(f"  {'plain udfs call (score_texts, all texts)':<52} {plain:8.1f} texts/s")
    print(
        f"  {f'service, {args.concurrency} concurrent requests, micro-batched':<52} {batched:8.1f} texts/s  ({calls} model calls, largest {after['largest_batch']})"
    )
    print(f"  {'service, one request at a time':<52} {sequential:8.1f} texts/s")
    print(
        f"  micro-batched / one at a time: {batched / sequential:.2f}x; micro-batched / plain udfs: {batched / plain:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
