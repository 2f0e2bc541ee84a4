"""The sentiment head: a small MLP over the 384-d sentence embeddings.

Training uses torch (seeded, full batch, on the driver); prediction is plain
numpy over the saved arrays, so both engines compute the same numbers and
executors need nothing but the arrays, shipped as plain values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from .config import TrainConfig
from .records import LABELS

log = logging.getLogger(__name__)


def layer_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted({k.split(".")[0] for k in arrays}, key=lambda s: int(s[1:]))


def predict_proba(arrays: Mapping[str, np.ndarray], embeddings: np.ndarray) -> np.ndarray:
    """Class probabilities (n, len(LABELS)), float64, for float32 embeddings.
    arrays holds layers l0.weight, l0.bias, l1.weight, ... with ReLU between."""
    x = np.asarray(embeddings, dtype=np.float64)
    names = layer_names(arrays)
    for i, name in enumerate(names):
        x = x @ np.asarray(arrays[f"{name}.weight"], dtype=np.float64).T + np.asarray(
            arrays[f"{name}.bias"], dtype=np.float64
        )
        if i < len(names) - 1:
            x = np.maximum(x, 0.0)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def predict_labels(arrays: Mapping[str, np.ndarray], embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(predicted labels, probability of each predicted label)."""
    probs = predict_proba(arrays, embeddings)
    if len(probs) == 0:
        return [], np.zeros(0, dtype=np.float64)
    best = probs.argmax(axis=1)
    return [LABELS[i] for i in best], probs[np.arange(len(best)), best]


def train_head(embeddings: np.ndarray, labels: Sequence[str], settings: TrainConfig) -> dict[str, np.ndarray]:
    """Fit the head on embeddings with labels in LABELS; returns its arrays."""
    import torch

    if len(labels) == 0:
        raise ValueError("no labelled rows to train on")
    torch.manual_seed(settings.seed)
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    y = torch.as_tensor([LABELS.index(label) for label in labels], dtype=torch.long)
    dims = [x.shape[1]] + ([settings.hidden] if settings.hidden else []) + [len(LABELS)]
    layers: list[torch.nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(settings.epochs):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    log.info("trained head %s on %d rows: final loss %.4f", dims, len(y), loss.item())
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    arrays = {}
    for i, lin in enumerate(linears):
        arrays[f"l{i}.weight"] = lin.weight.detach().numpy().astype(np.float32).copy()
        arrays[f"l{i}.bias"] = lin.bias.detach().numpy().astype(np.float32).copy()
    return arrays


def accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    if len(truth) == 0:
        return float("nan")
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


def majority_baseline(train_labels: Sequence[str], test_labels: Sequence[str]) -> tuple[str, float]:
    """The most common training label (ties: first in LABELS) and the test
    accuracy of always predicting it."""
    if len(train_labels) == 0:
        raise ValueError("no training labels")
    counts = {label: 0 for label in LABELS}
    for label in train_labels:
        counts[label] += 1
    majority = max(LABELS, key=lambda label: (counts[label], -LABELS.index(label)))
    return majority, accuracy([majority] * len(test_labels), test_labels)
