"""One validated configuration: --set overrides (same errors as the file),
defaults written once, $AIBATCH_CONFIG honoured by submit.sh, label maps
from the command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from udfs.config import (
    ConfigError,
    EncoderConfig,
    PipelineConfig,
    load_config,
    parse_config,
    parse_label_map,
    parse_labels,
)

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "conf" / "pipeline.toml"


def test_set_overrides_keys_with_toml_values():
    cfg = load_config(PIPELINE, ["encoder.max_length=128", "score.with_embedding=true", "registry_dir=/tmp/x y"])
    assert cfg.encoder.max_length == 128
    assert cfg.score.with_embedding is True
    assert cfg.registry_dir == "/tmp/x y"
    assert cfg.encoder.batch_size == load_config(PIPELINE).encoder.batch_size  # others untouched


def test_set_errors_name_the_key_like_the_file():
    with pytest.raises(
        ConfigError, match=r"encoder\.max_length: Value error, must be 0 \(the encoder.s own limit\) or at least 8"
    ):
        load_config(PIPELINE, ["encoder.max_length=2"])
    with pytest.raises(ConfigError, match=r"encoder\.max_lenght: Extra inputs are not permitted"):
        load_config(PIPELINE, ["encoder.max_lenght=64"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(PIPELINE, ["encoder.max_length"])
    with pytest.raises(ConfigError, match="registry_dir is not a table"):
        load_config(PIPELINE, ["registry_dir.x=1"])


def test_defaults_are_written_once_in_the_config_object():
    # The file and the built-in defaults agree on every scalar the file sets,
    # and the engines' settings objects have no defaults of their own.
    import dataclasses

    from udfs.predict import ScoreSettings

    file_cfg, built_in = load_config(PIPELINE), load_config(None)
    assert file_cfg.encoder == built_in.encoder
    assert file_cfg.train == built_in.train
    assert file_cfg.score == built_in.score == PipelineConfig().score
    assert built_in.score.model == "sentiment@latest"
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ScoreSettings))
    settings = ScoreSettings.from_config(EncoderConfig(max_length=64, batch_size=16), {}, ())
    assert (settings.max_length, settings.batch_size) == (64, 16)


def test_label_map_argument():
    assert parse_label_map("neutral=,pos=positive") == {"neutral": None, "pos": "positive"}
    assert parse_label_map("pos=good") == {"pos": "good"}  # any label name
    with pytest.raises(ConfigError, match="RAW=LABEL"):
        parse_label_map("pos")
    assert parse_labels("world, sports,business") == ("world", "sports", "business")
    with pytest.raises(ConfigError, match="distinct"):
        parse_labels("a,a")


def test_source_vocabulary_is_checked_against_its_label_map():
    source = {"name": "s", "file": "f", "format": "jsonl", "label_field": "l"}
    cfg = parse_config({"ingest": {"sources": [{**source, "labels": ["x", "y"], "label_map": {"a": "x", "b": ""}}]}})
    assert cfg.ingest.spec(cfg.ingest.sources[0]).labels == ("x", "y")
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\].*label_map values must be one of labels"):
        parse_config({"ingest": {"sources": [{**source, "labels": ["x"], "label_map": {"a": "z"}}]}})
    with pytest.raises(ConfigError, match="rating_labels"):
        parse_config({"ingest": {"rating_labels": ["same", "same"]}})


def test_submit_honours_aibatch_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[encoder]\nmax_length = 2\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["AIBATCH_CONFIG"] = str(bad)
    for cmd in (["stats", "--input", "x", "--output", "y"], ["mr", "stats", "-r", "inline", "x"]):
        r = subprocess.run([str(ROOT / "submit.sh"), *cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode == 2, out
        assert f"{bad}: encoder.max_length" in out
        assert "Traceback" not in out
