"""udfs scoring on a GPU (encoder.device = "cuda"): rows/s of udfs.model.embed
in fp32 and fp16 at batch sizes 64/256/512 against the same machine's CPU in
fp32, the minimum cosine to CPU fp32, and how many labels of a fixed seeded
head differ. Reads what bench/gpu_prepare.sh puts in .gpu/ (2,000 real rows,
216 of them long plot summaries; the encoder with fp16-stored weights, which
every precision here loads, so the comparison is like for like; pydantic
wheels for a machine without them).

Run with: bench/gpu_prepare.sh, then on the GPU machine (repo root, .gpu carried):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    PYTHONPATH=/tmp/site python3 bench/bench_gpu_udfs.py
"""

import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.getcwd())
from udfs import head as H  # noqa: E402
from udfs import model as M  # noqa: E402

LABELS = ("negative", "positive")  # a random two-class head: only the cost matters

texts = json.load(open(".gpu/texts.json"))  # written by bench/gpu_prepare.sh
MD = ".gpu/model"
out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": len(texts), "long_rows": 216}
out["plan_auto_no_gpu_assigned"] = str(M.plan_device("auto", "fp32", 64, "fp16", 256, [], torch.cuda.device_count()))
out["plan_auto_gpu_0"] = str(M.plan_device("auto", "fp32", 64, "fp16", 256, ["0"], torch.cuda.device_count()))


def run(device, precision, bs, rounds=3):
    enc = M.load_encoder(MD, precision, device)
    M.embed(enc, texts[:256], bs, 256)
    best, emb = float("inf"), None
    for _ in range(rounds):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        emb = M.embed(enc, texts, bs, 256)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return len(texts) / best, emb


rng = np.random.default_rng(0)
arrays = {
    "l0.weight": rng.normal(size=(len(LABELS), 384)).astype(np.float32),
    "l0.bias": np.zeros(len(LABELS), np.float32),
}
res = {}
for threads in (2, 16):
    torch.set_num_threads(threads)
    rps, ref = run("cpu", "fp32", 64, rounds=1)
    res[f"cpu fp32 {threads} threads bs64"] = {"rows_per_s": round(rps, 1)}
ref_labels, _, _ = H.predict_labels(arrays, LABELS, ref)
for precision in ("fp32", "fp16"):
    for bs in (64, 256, 512):
        rps, emb = run("cuda:0", precision, bs)
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        labels, _, _ = H.predict_labels(arrays, LABELS, emb)
        res[f"cuda {precision} bs{bs}"] = {
            "rows_per_s": round(rps, 1),
            "min_cosine_vs_cpu_fp32": round(float(cos.min()), 6),
            "labels_differing": int(sum(a != b for a, b in zip(labels, ref_labels, strict=True))),
        }
out["results"] = res
print(json.dumps(out, indent=1))
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp/out"), "gpu.json"), "w"), indent=1)
