"""Register a pretrained Hugging Face model directory in MLflow as a model
of the classifier kind (a sequence-classification model; its labels from
config.json's id2label) or the embedder kind (embeddings only), without
training: a run recording its kind, source and weights version, and the
next version of a registered model, which `score --model models:/NAME/N`
then runs on either engine (docs/models.md).

Run with:
    ./submit.sh register --kind embedder --model-dir DIR --name minilm [--normalize | --no-normalize]
    ./submit.sh register --kind classifier --model-dir DIR --name topics-bert
or directly:
    .venv/bin/python -m jobs.register --config conf/pipeline.toml --kind classifier --model-dir DIR --name NAME
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from udfs import models
from udfs.config import ConfigError, load_config

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="register", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--config", default=None, help="pipeline settings (default $AIBATCH_CONFIG, else conf/pipeline.toml)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--kind", required=True, choices=models.TRANSFORMER_KINDS)
    p.add_argument("--model-dir", required=True, help="a Hugging Face model directory (config.json, model.safetensors)")
    p.add_argument("--name", required=True, help="the registered model's name")
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an embedder's L2 normalisation (default: as the directory's Normalize module says)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parser().parse_args(argv)
    home = Path(os.environ.get("AIBATCH_HOME") or os.getcwd())
    config = args.config or os.environ.get("AIBATCH_CONFIG") or str(home / "conf" / "pipeline.toml")
    if args.normalize is not None and args.kind != "embedder":
        print("register: --normalize applies to the embedder kind only", file=sys.stderr)
        return 2
    try:
        # the directory first: a wrong one is named before any store is opened
        models.transformer_meta(Path(args.model_dir).expanduser().resolve(), args.kind, args.normalize)
        store = models.open_store(load_config(config, args.overrides), home)
        store.check()
        registered = store.log_pretrained(args.name, args.kind, Path(args.model_dir), args.normalize)
    except (ConfigError, models.ModelError) as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2
    what = f"labels {registered.labels}" if registered.labels else f"normalize={registered.normalize}"
    print(
        f"registered {registered.uri} ({registered.kind}, {what}, weights {registered.weights_version}, "
        f"run {registered.run_id})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
