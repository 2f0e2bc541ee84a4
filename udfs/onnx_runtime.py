"""The encoder on ONNX Runtime (encoder.runtime = "onnxruntime"): exported
once from the installed weights, cached by their hash, never downloaded.

The export loads the model with attn_implementation="eager": with the
default (SDPA) attention, torch.onnx.export of transformers 5's BERT gave
wrong embeddings for padded batches (minimum cosine 0.84 against torch,
shared/RESOURCES.md). Every export is therefore checked against torch on a
padded batch before it is kept (cosine >= MIN_COSINE), then optimised with
onnxruntime.transformers.optimizer (fused attention and layer norms) and
checked again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_COSINE = 0.9999
# Texts of very different lengths, so the check batch is mostly padding.
CHECK_TEXTS = (
    "Fine.",
    "A warm, funny and quietly devastating film about a family that never says what it means.",
    "The plot wanders, the jokes land half the time, and yet the lead performance holds everything together "
    "for two hours; by the end I cared about these people more than I expected to, which is rare for a "
    "film this uneven. " * 3,
)


class OnnxExportError(RuntimeError):
    """The exported or optimised model does not reproduce torch's embeddings."""


def cache_dir() -> Path:
    """$AIBATCH_ONNX_CACHE, else var/onnx under $AIBATCH_HOME (or the working dir)."""
    root = os.environ.get("AIBATCH_ONNX_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("AIBATCH_HOME") or os.getcwd()) / "var" / "onnx"


def model_path(model_dir: str, cache: Path | None = None) -> Path:
    from .model import weights_version

    return (cache or cache_dir()) / weights_version(model_dir) / "encoder.onnx"


class _Wrapper:  # built lazily: torch is imported only when exporting
    @staticmethod
    def make(model: Any) -> Any:
        import torch

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                # by keyword: BertModel.forward's positional order changed in transformers 5
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return Encoder()


def export(model_dir: str, cache: Path | None = None) -> Path:
    """The checked, optimised ONNX file for the weights in model_dir,
    exported on first use (raises OnnxExportError if it does not match torch)."""
    target = model_path(model_dir, cache)
    if target.is_file():
        return target
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    from .model import encoder_shape, load_tokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tok = load_tokenizer(model_dir)
    sample = tok(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.inference_mode():
            torch.onnx.export(
                _Wrapper.make(model),
                (sample["input_ids"], sample["attention_mask"]),
                str(raw),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "last_hidden_state": {0: "batch", 1: "sequence"},
                },
                opset_version=17,
                dynamo=False,
            )
        check(str(raw), model_dir, "export")
        optimised = optimizer.optimize_model(
            str(raw),
            model_type="bert",
            num_heads=model.config.num_attention_heads,
            hidden_size=encoder_shape(model_dir).hidden,
        )
        opt = Path(tmp) / "opt.onnx"
        optimised.save_model_to_file(str(opt))
        check(str(opt), model_dir, "optimised export")
        shutil.move(str(opt), target)  # complete files only: a crash leaves no half-written model
    log.info("exported %s to %s", model_dir, target)
    return target


def check(path: str, model_dir: str, what: str) -> float:
    """Minimum cosine between the ONNX model's and torch's pooled embeddings
    on a padded batch; OnnxExportError below MIN_COSINE."""
    from .model import embed, load_encoder

    torch_enc = load_encoder(model_dir, "fp32")
    onnx_enc = dataclass_replace_model(torch_enc, session(path, threads=1))
    a = embed(torch_enc, list(CHECK_TEXTS), 8, 256)
    b = embed(onnx_enc, list(CHECK_TEXTS), 8, 256)
    cos = float(np.min((a * b).sum(axis=1)))
    if cos < MIN_COSINE:
        raise OnnxExportError(f"{what} of {model_dir}: minimum cosine to torch {cos:.6f} < {MIN_COSINE}")
    return cos


def dataclass_replace_model(encoder: Any, model: Any) -> Any:
    import dataclasses

    return dataclasses.replace(encoder, model=model, runtime="onnxruntime")


def session(path: str | Path, threads: int) -> Any:
    """An ONNX Runtime session on CPU with `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(sess: Any, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """last_hidden_state as float32 (batch, sequence, hidden)."""
    return sess.run(
        ["last_hidden_state"],
        {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)},
    )[0]


def main() -> int:
    """Export the installed encoder (setup runs this); prints the file."""
    import sys

    from .model import resolve_model_dir

    logging.basicConfig(level=logging.WARNING)
    path = export(str(resolve_model_dir(None).resolve()))
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
