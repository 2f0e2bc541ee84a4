"""The classification head: a small MLP over the encoder's sentence
embeddings, for the 2..N classes its training rows hold.

Training uses torch (seeded, full batch, on the driver); prediction is plain
numpy over the saved arrays, so both engines compute the same numbers and
executors need nothing but the arrays and the label names (the vocabulary,
sorted, stored with the model), shipped as plain values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from .config import TrainConfig

log = logging.getLogger(__name__)


def layer_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted({k.split(".")[0] for k in arrays}, key=lambda s: int(s[1:]))


def predict_proba(arrays: Mapping[str, np.ndarray], embeddings: np.ndarray) -> np.ndarray:
    """Class probabilities (n, classes), float64, for float32 embeddings, in
    the order of the model's labels. arrays holds layers l0.weight, l0.bias,
    l1.weight, ... with ReLU between."""
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


def classes(arrays: Mapping[str, np.ndarray]) -> int:
    """How many classes the head's last layer scores."""
    return int(np.asarray(arrays[f"{layer_names(arrays)[-1]}.bias"]).shape[0])


def check_labels(arrays: Mapping[str, np.ndarray], labels: Sequence[str]) -> None:
    if classes(arrays) != len(labels):
        raise ValueError(
            f"the head scores {classes(arrays)} classes but {len(labels)} labels came with it: {list(labels)}"
        )


def predict_labels(
    arrays: Mapping[str, np.ndarray], labels: Sequence[str], embeddings: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(predicted labels, probability of each predicted label, all the
    classes' probabilities (n, len(labels)))."""
    probs = predict_proba(arrays, embeddings)
    if len(probs) == 0:
        return [], np.zeros(0, dtype=np.float64), probs.reshape(0, len(labels))
    best = probs.argmax(axis=1)
    return [labels[i] for i in best], probs[np.arange(len(best)), best], probs


def vocabulary(labels: Sequence[str]) -> list[str]:
    """The label set of training rows, sorted: the order of the head's classes."""
    return sorted(set(labels))


class LabelSetError(ValueError):
    """Training rows whose label set cannot train a head (one class, or a
    class with too few rows); the message names the counts."""


def label_counts(labels: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def check_label_set(labels: Sequence[str], min_class_rows: int, where: str) -> list[str]:
    """The vocabulary of labels, or LabelSetError naming where (the input)
    and the counts for a set with one class or a class below min_class_rows."""
    counts = label_counts(labels)
    if len(counts) < 2:
        raise LabelSetError(f"{where}: the labelled rows hold {len(counts)} class(es) {counts}: a head needs 2 or more")
    small = {k: v for k, v in counts.items() if v < min_class_rows}
    if small:
        raise LabelSetError(
            f"{where}: classes with fewer than train.min_class_rows={min_class_rows} labelled rows: {small} "
            f"(all counts {counts})"
        )
    return list(counts)


def train_head(
    embeddings: np.ndarray, labels: Sequence[str], vocab: Sequence[str], settings: TrainConfig
) -> dict[str, np.ndarray]:
    """Fit the head on embeddings with labels in vocab (the class order);
    returns its arrays."""
    import torch

    if len(labels) == 0:
        raise ValueError("no labelled rows to train on")
    index = {label: i for i, label in enumerate(vocab)}
    torch.manual_seed(settings.seed)
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    y = torch.as_tensor([index[label] for label in labels], dtype=torch.long)
    dims = [x.shape[1]] + ([settings.hidden] if settings.hidden else []) + [len(vocab)]
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
    """The most common training label (ties: the first in sorted order) and
    the test accuracy of always predicting it."""
    if len(train_labels) == 0:
        raise ValueError("no training labels")
    counts = label_counts(train_labels)
    majority = min(counts, key=lambda label: (-counts[label], label))
    return majority, accuracy([majority] * len(test_labels), test_labels)


def confusion_matrix(predicted: Sequence[str], truth: Sequence[str], vocab: Sequence[str]) -> list[list[int]]:
    """matrix[i][j]: test rows of true class vocab[i] predicted as vocab[j]."""
    index = {label: i for i, label in enumerate(vocab)}
    matrix = [[0] * len(vocab) for _ in vocab]
    for p, t in zip(predicted, truth, strict=True):
        matrix[index[t]][index[p]] += 1
    return matrix


def per_class_metrics(matrix: Sequence[Sequence[int]], vocab: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion
    matrix (0 where a denominator is 0, as scikit-learn's zero_division=0)."""
    out = {}
    for i, label in enumerate(vocab):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
            "support": support,
        }
    return out
