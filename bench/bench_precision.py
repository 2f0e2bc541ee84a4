"""The precision part of the benchmark: all-MiniLM-L6-v2 in fp32 against bf16
on the same texts and threads (plain Python, length-sorted batches), with the
minimum cosine to fp32 and the head's accuracy under each. bf16 runs only
where the CPU supports it (AVX512-BF16 or AMX) unless forced (emulated).
Needs only torch, transformers, numpy and safetensors, so it also runs on a
machine without the project's environment.

Run with: .venv/bin/python bench/bench_precision.py --rows-json ROWS.json [--model-dir DIR]
          [--head var/models/sentiment/1] [--threads 2] [--force-bf16]
(bench/bench_spark.py runs the same measurement on its rows.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from udfs import head as H  # noqa: E402
from udfs import model as M  # noqa: E402


def measure(texts, labels, arrays, model_dir=None, threads=2, force_bf16=False, batch_size=64, vocab=None) -> dict:
    import torch

    torch.set_num_threads(threads)
    fp32 = M.load_encoder(model_dir, "fp32")
    M.embed(fp32, texts[:64], batch_size, M.encoder_shape(model_dir).max_length)
    t = time.perf_counter()
    e32 = M.embed(fp32, texts, batch_size, M.encoder_shape(model_dir).max_length)
    s32 = time.perf_counter() - t
    res = {
        "rows": len(texts),
        "threads": threads,
        "fp32_rows_per_s": len(texts) / s32,
        "bf16_supported": M.bf16_supported(),
    }
    if res["bf16_supported"] or force_bf16:
        bf16 = M._load_encoder(fp32.model_dir, "bf16")  # forced where unsupported: emulated, for the record
        M.embed(bf16, texts[:64], batch_size, M.encoder_shape(model_dir).max_length)
        t = time.perf_counter()
        e16 = M.embed(bf16, texts, batch_size, M.encoder_shape(model_dir).max_length)
        s16 = time.perf_counter() - t
        cos = (e32 * e16).sum(axis=1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e16, axis=1))
        lab = np.array([x is not None for x in labels], dtype=bool)
        truth = [x for x in labels if x is not None]
        res.update(
            bf16_rows_per_s=len(texts) / s16,
            speedup=s32 / s16,
            min_cosine=float(cos.min()),
            accuracy_fp32=H.accuracy(H.predict_labels(arrays, vocab, e32[lab])[0], truth),
            accuracy_bf16=H.accuracy(H.predict_labels(arrays, vocab, e16[lab])[0], truth),
            labelled=len(truth),
            bf16_mode="native" if res["bf16_supported"] else "emulated (forced)",
        )
    return res


def report(res: dict) -> list[str]:
    lines = [
        f"precision on {res['rows']} rows (plain Python, {res['threads']} threads): "
        f"fp32 {res['fp32_rows_per_s']:.1f} rows/s"
    ]
    if "bf16_rows_per_s" in res:
        lines.append(
            f"  bf16 ({res['bf16_mode']}): {res['bf16_rows_per_s']:.1f} rows/s, {res['speedup']:.2f}x fp32, "
            f"min cosine to fp32 {res['min_cosine']:.5f}; head accuracy on {res['labelled']} labelled rows: "
            f"fp32 {res['accuracy_fp32']:.4f}, bf16 {res['accuracy_bf16']:.4f}"
        )
    if not res["bf16_supported"]:
        lines.append('  bf16: this CPU has neither AVX512-BF16 nor AMX; precision = "bf16" falls back to fp32 here')
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows-json", required=True, help='JSON list of {"text": ..., "label": ...}')
    p.add_argument("--model-dir", help="encoder directory (default: the installed package's)")
    p.add_argument("--head", required=True, help="a registry version directory (head.safetensors)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force-bf16", action="store_true")
    args = p.parse_args(argv)
    from safetensors.numpy import load_file

    rows = json.loads(Path(args.rows_json).read_text())
    arrays = load_file(str(Path(args.head) / "head.safetensors"))
    vocab = json.loads((Path(args.head) / "meta.json").read_text())["labels"]
    res = measure(
        [r["text"] for r in rows],
        [r["label"] for r in rows],
        arrays,
        args.model_dir,
        args.threads,
        args.force_bf16,
        vocab=vocab,
    )
    print("\n".join(report(res)))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
