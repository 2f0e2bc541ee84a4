"""A team's own PyTorch text model, as an MLflow "model from code": the
tests log this file with `mlflow.pyfunc.log_model(python_model=<this
file>, artifacts={"weights": ...}, model_config=...)`, so the model is
self-contained (no pickled class, no import of the tests package where it
is loaded). Hashed character trigrams -> a two-layer torch module -> one
of model_config["labels"]. Outputs: predicted (string), probability
(double), scores (every class's probability, an array of doubles) and
chars (the text's length, a long). With model_config["fail"] its predict
raises, as a broken model's would."""

from __future__ import annotations

import zlib

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

BUCKETS = 64


def make_module(classes: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(BUCKETS, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes))


def features(texts: list[str]) -> np.ndarray:
    """Counts of each text's character trigrams, hashed into BUCKETS (crc32: the same in every process)."""
    out = np.zeros((len(texts), BUCKETS), dtype=np.float32)
    for i, text in enumerate(texts):
        low = text.lower()
        for j in range(max(1, len(low) - 2)):
            out[i, zlib.crc32(low[j : j + 3].encode()) % BUCKETS] += 1.0
    return out


class CharTrigramModel(PythonModel):
    def load_context(self, context):
        import torch

        config = context.model_config or {}
        self.labels = list(config["labels"])
        self.fail = bool(config.get("fail"))
        self.module = make_module(len(self.labels))
        self.module.load_state_dict(torch.load(context.artifacts["weights"], weights_only=True))
        self.module.eval()

    def predict(self, context, model_input, params=None):
        import torch

        if self.fail:
            raise ValueError("the trigram table is corrupt (a model broken on purpose)")
        texts = [str(t) for t in model_input["text"]]
        with torch.inference_mode():
            probs = torch.softmax(self.module(torch.from_numpy(features(texts))), dim=1).double().numpy()
        best = probs.argmax(axis=1)
        return pd.DataFrame(
            {
                "predicted": [self.labels[i] for i in best],
                "probability": probs[np.arange(len(best)), best],
                "scores": [row.tolist() for row in probs],
                "chars": [len(t) for t in texts],
            }
        )


mlflow.models.set_model(CharTrigramModel())
