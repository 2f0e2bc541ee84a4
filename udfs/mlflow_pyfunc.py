"""The project's head + encoder as an MLflow pyfunc model, for anyone who
loads it through MLflow (`mlflow.pyfunc.load_model("models:/topics/1")`,
`mlflow.pyfunc.spark_udf`). The project's own jobs do not go through this
class: they download the head's files on the driver and score with the
batched fast path (udfs.predict), which this class calls too.

Artifacts: `head` (head.safetensors + meta.json). The encoder is a pinned
reference, not a copy: meta.json names its weights version, and
load_context refuses other weights (udfs.lineage.check_head_encoder)."""

from __future__ import annotations

from mlflow.pyfunc import PythonModel


class HeadEncoderModel(PythonModel):
    def load_context(self, context):  # type: ignore[no-untyped-def]  # (MLflow reads the hints as a signature)
        from pathlib import Path

        from . import lineage as L
        from . import model as M
        from .config import EncoderConfig
        from .models import load_head_dir
        from .predict import ScoreSettings

        head = load_head_dir(Path(context.artifacts["head"]))
        model_dir = head.meta.get("encoder", {}).get("model_dir") or None
        resolved = M.resolve_model_dir(model_dir).resolve()
        L.check_head_encoder(head.ref, head.meta, M.weights_version(str(resolved)), resolved)
        self.settings = ScoreSettings.from_config(
            EncoderConfig(model_dir=str(resolved), device="cpu"), dict(head.arrays), head.labels
        )

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """A pandas DataFrame with a `text` column (or a Series / list of
        texts) -> predicted, probability, probabilities per row."""
        import pandas as pd

        from .predict import score_texts

        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        else:
            texts = pd.Series(list(model_input))
        return score_texts(texts.tolist(), self.settings)


class TransformerKindModel(PythonModel):
    """A classifier or embedder (a Hugging Face model directory, a copy of
    it in the artifact `transformer` with aibatch.json), for MLflow users;
    the jobs score it through udfs.predict as this does."""

    def load_context(self, context):  # type: ignore[no-untyped-def]  # (MLflow reads the hints as a signature)
        from pathlib import Path

        from .config import EncoderConfig
        from .models import load_transformer_dir
        from .predict import ScoreSettings

        model = load_transformer_dir(Path(context.artifacts["transformer"]))
        self.settings = ScoreSettings.from_config(
            EncoderConfig(device="cpu"),
            {},
            model.labels,
            model_dir=str(model.model_dir),
            kind=model.kind,
            normalize=model.normalize,
        )

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """A pandas DataFrame with a `text` column (or a Series / list of
        texts) -> predicted, probability, probabilities (a classifier) or
        embedding (an embedder) per row."""
        import pandas as pd

        from .predict import score_texts

        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        else:
            texts = pd.Series(list(model_input))
        return score_texts(texts.tolist(), self.settings)
