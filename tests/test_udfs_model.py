"""The encoder and head in plain Python (udfs/model.py, udfs/head.py,
udfs/predict.py) on real text."""

import logging

import numpy as np
import pytest

from udfs import head as H
from udfs import model as M
from udfs.config import EncoderConfig, TrainConfig
from udfs.predict import ScoreSettings, score_texts


def embed(encoder, texts, batch_size=None):
    """M.embed at the default settings (udfs/config.py), batch size as given."""
    enc = EncoderConfig()
    return M.embed(encoder, texts, batch_size or enc.batch_size, enc.max_length)


TEXTS = [
    "A wonderful, moving film with brilliant performances.",
    "Dull.",
    "The plot makes no sense and the acting is painfully bad from start to finish.",
    "I loved every minute of it",
    "An utterly boring waste of two hours.",
]


@pytest.fixture(scope="module")
def encoder():
    return M.load_encoder()


def test_embeddings_are_normalised_and_independent_of_batching(encoder):
    full = embed(encoder, TEXTS, batch_size=64)
    assert full.shape == (5, 384) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([embed(encoder, [t]) for t in TEXTS])
    np.testing.assert_allclose(full, one_by_one, atol=1e-5)
    np.testing.assert_allclose(embed(encoder, TEXTS, batch_size=2), full, atol=1e-5)
    assert embed(encoder, []).shape == (0, 384)


def test_similar_sentences_are_closer(encoder):
    e = embed(encoder, ["a great movie", "an excellent film", "the stock market fell"])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_loader_is_cached_and_versioned(encoder):
    assert M.load_encoder() is encoder
    assert len(encoder.version) == 12 and encoder.version == M.weights_version(encoder.model_dir)


def test_length_order_is_stable():
    assert M.length_order([3, 1, 3, 2]).tolist() == [1, 3, 0, 2]


def test_bf16_falls_back_to_fp32_where_unsupported(monkeypatch, caplog):
    monkeypatch.setattr(M, "bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="udfs.model"):
        assert M.effective_precision("bf16") == "fp32"
    assert "using fp32" in caplog.text
    monkeypatch.setattr(M, "bf16_supported", lambda: True)
    assert M.effective_precision("bf16") == "bf16"
    with pytest.raises(ValueError):
        M.effective_precision("int8")


def test_head_trains_and_predicts_on_real_embeddings(encoder):
    pos = ["great fun", "a delight", "superb acting", "I loved it", "brilliant and moving", "wonderful"]
    neg = ["awful", "a bore", "terrible acting", "I hated it", "dull and lifeless", "dreadful"]
    x = embed(encoder, pos + neg)
    vocab = ["negative", "positive"]
    arrays = H.train_head(x, ["positive"] * 6 + ["negative"] * 6, vocab, TrainConfig(hidden=8, epochs=100, seed=1))
    labels, probs, every = H.predict_labels(arrays, vocab, embed(encoder, ["what a lovely film", "boring and bad"]))
    assert every.shape == (2, 2)
    assert labels == ["positive", "negative"] and (probs > 0.5).all()
    p = H.predict_proba(arrays, x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert H.majority_baseline(["positive", "positive", "negative"], ["negative", "positive"]) == ("positive", 0.5)

    out = score_texts(
        ["lovely", None, "", "awful"], ScoreSettings.from_config(EncoderConfig(), arrays, vocab), with_embedding=True
    )
    assert list(out.columns) == ["predicted", "probability", "probabilities", "embedding"]
    assert set(out["probabilities"][0]) == set(vocab) and out["probabilities"][1] is None
    assert out["predicted"].tolist()[1:3] == [None, None] and np.isnan(out["probability"][1])
    assert out["embedding"][1] is None and len(out["embedding"][0]) == 384


def test_the_shape_comes_from_the_encoder_directory(tmp_path):
    from .tiny_models import tiny_encoder

    default = M.encoder_shape(None)
    assert (default.name, default.dim, default.layers, default.intermediate, default.heads) == (
        "all-MiniLM-L6-v2",
        384,
        6,
        1536,
        12,
    )
    assert (default.max_length, default.pooling, default.normalize) == (256, "mean", True)

    tiny = tiny_encoder(tmp_path / "tiny-cls", hidden=48, pooling="cls", normalize=False)
    shape = M.encoder_shape(tiny)
    assert (shape.name, shape.dim, shape.layers, shape.max_length, shape.pooling, shape.normalize) == (
        "tiny-cls",
        48,
        2,
        64,
        "cls",
        False,
    )
    enc = M.load_encoder(tiny)
    texts = ["a short one", "a somewhat longer text than the first"]
    out = M.embed(enc, texts, 2, 0)
    assert out.shape == (2, 48)
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)  # not normalised: the dir says so
    # CLS pooling: the first token's hidden state, as transformers computes it
    import torch

    with torch.inference_mode():
        batch = enc.tokenizer(texts[:1], return_tensors="pt")
        cls = enc.model(**batch).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(out[:1], cls, atol=1e-5)
    # the cost estimate follows the shape: a narrower, shallower encoder costs less per token
    assert M.encoder_flops(33, shape) < M.encoder_flops(33, default)
    assert M.effective_max_length(shape, 0) == 64 and M.effective_max_length(shape, 512) == 64

    plain = tiny_encoder(tmp_path / "plain", hidden=32, pooling=None)  # no sentence-transformers files
    assert (M.encoder_shape(plain).pooling, M.encoder_shape(plain).max_length) == ("mean", 128)


def test_a_dir_without_an_encoder_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a BERT-family encoder config"):
        M.encoder_shape(tmp_path)
