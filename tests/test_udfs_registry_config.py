"""Model registry (immutable versions) and pipeline settings validation."""

from pathlib import Path

import numpy as np
import pytest

from udfs.config import ConfigError, load_config, parse_config
from udfs.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parent.parent


def arrays(v):
    return {"l0.weight": np.full((2, 3), v, dtype=np.float32), "l0.bias": np.zeros(2, dtype=np.float32)}


def test_register_creates_immutable_numbered_versions(tmp_path):
    reg = Registry(tmp_path)
    one = reg.register("sentiment", arrays(1.0), {"note": "a"})
    two = reg.register("sentiment", arrays(2.0), {"note": "b"})
    assert (one.ref, two.ref) == ("sentiment@1", "sentiment@2")
    assert one.weights_sha256 != two.weights_sha256
    assert reg.resolve("sentiment@latest") == "sentiment@2"
    again = reg.load("sentiment@1")
    np.testing.assert_array_equal(again.arrays["l0.weight"], arrays(1.0)["l0.weight"])
    assert again.meta["note"] == "a"
    weights = tmp_path / "sentiment" / "1" / "head.safetensors"
    assert not weights.stat().st_mode & 0o222  # read-only
    assert reg.known() == ["sentiment@1", "sentiment@2"]


def test_unknown_version_lists_known_ones(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="known: none"):
        reg.load("sentiment@1")
    reg.register("sentiment", arrays(1.0), {})
    with pytest.raises(RegistryError, match=r"unknown model 'sentiment@7'.*known: sentiment@1"):
        reg.load("sentiment@7")
    with pytest.raises(RegistryError, match="name@N"):
        reg.resolve("sentiment")


def test_tampered_weights_fail_their_hash(tmp_path):
    reg = Registry(tmp_path)
    reg.register("sentiment", arrays(1.0), {})
    weights = tmp_path / "sentiment" / "1" / "head.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="hash"):
        reg.load("sentiment@1")


def test_project_config_loads_with_five_default_sources():
    cfg = load_config(REPO / "conf" / "pipeline.toml")
    assert [s.name for s in cfg.ingest.sources] == [
        "vader_tweets",
        "vader_movie_reviews",
        "vader_amazon_reviews",
        "vader_nyt_editorials",
        "rotten_tomatoes",
    ]
    assert cfg.ingest.spec(cfg.source("rotten_tomatoes")).label_map["plot"] is None


def test_config_errors_name_file_and_key():
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"encoder": {"precision": "fp16", "batch_size": 0}, "score": {"model": "sentiment"}, "bogus": 1}, "p.toml"
        )
    text = str(err.value)
    for key in ("p.toml: encoder.precision", "p.toml: encoder.batch_size", "p.toml: score.model", "p.toml: bogus"):
        assert key in text
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\].format"):
        parse_config({"ingest": {"sources": [{"name": "x", "file": "f", "format": "xml"}]}})
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/pipeline.toml")
