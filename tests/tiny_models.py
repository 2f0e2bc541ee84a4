"""Tiny transformer directories that tests build for themselves (random
weights, saved with save_pretrained, the default encoder's tokenizer): quick
to load on a 2-core machine, and of shapes no shipped package has."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _copy_tokenizer(dest: Path) -> None:
    from udfs import model as M

    src = M.default_model_dir()
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)


def bert_config(hidden: int = 32, layers: int = 2, heads: int = 2, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        **extra,
    )


def tiny_encoder(dest: Path, hidden: int = 32, pooling: str | None = "cls", normalize: bool = False) -> Path:
    """A random BertModel in dest; with pooling, sentence-transformers files
    saying that pooling (and Normalize only where asked)."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    dest.mkdir(parents=True, exist_ok=True)
    BertModel(bert_config(hidden)).save_pretrained(dest)
    _copy_tokenizer(dest)
    if pooling:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
        (dest / "modules.json").write_text(json.dumps(modules))
        (dest / "1_Pooling").mkdir(exist_ok=True)
        (dest / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": hidden,
                    "pooling_mode_cls_token": pooling == "cls",
                    "pooling_mode_mean_tokens": pooling == "mean",
                    "pooling_mode_max_tokens": pooling == "max",
                }
            )
        )
        (dest / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return dest


def tiny_classifier(dest: Path, labels: list[str], hidden: int = 32) -> Path:
    """A random BertForSequenceClassification in dest whose config names
    labels (id2label)."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    dest.mkdir(parents=True, exist_ok=True)
    config = bert_config(hidden, id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    BertForSequenceClassification(config).save_pretrained(dest)
    _copy_tokenizer(dest)
    return dest


# ----- a generic pyfunc model: a team's own torch module, logged the MLflow way -----

PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_models" / "char_trigram_model.py"


def char_trigram_signature():
    """The signature the char-trigram model is logged with: a `text` string
    in; predicted (string), probability (double), scores (array of double),
    chars (long) out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    outputs = [ColSpec("string", "predicted"), ColSpec("double", "probability"),
               ColSpec(Array("double"), "scores"), ColSpec("long", "chars")]  # fmt: skip
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))


def log_char_trigram(store, name: str, labels: list[str], dest: Path, signature, fail: bool = False) -> str:
    """Log the char-trigram torch model (random weights, saved in dest) with
    mlflow.pyfunc.log_model from code into store (a udfs.models.Store),
    registered by MLflow itself as version 1 of name: its model URI.
    signature: the one to log (None: none); fail: its predict raises."""
    import mlflow
    import torch

    from tests.pyfunc_models.char_trigram_model import make_module

    torch.manual_seed(0)
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / "weights.pt"
    torch.save(make_module(len(labels)).state_dict(), weights)
    with mlflow.start_run(experiment_id=store.experiment_id()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # mlflow's advice on type hints and input examples
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"weights": str(weights)},
            model_config={"labels": list(labels), "fail": fail},
            signature=signature,
            registered_model_name=name,
            pip_requirements=[],
        )
    return f"models:/{name}/{info.registered_model_version}"
