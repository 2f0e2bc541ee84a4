"""Start the aibatch service (loopback unless the config allows another address).

Run with: AIBATCH_SERVICE_KEYS=sk-mine .venv/bin/python -m service [--config conf/service.toml] [--port 8790]
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from gateway.app import ACCESS_LOG_FILTER
from udfs.config import ConfigError as PipelineConfigError

from .app import create_app
from .config import DEFAULT_CONFIG, ConfigError, api_keys, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="TOML file (default conf/service.toml)")
    parser.add_argument("--host", help="address to bind (default: host in the config, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: port in the config; 0 picks a free one)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        host = args.host or config.host
        config.check_exposure(host)
        keys = api_keys(config)
        app = create_app(config, keys)
    except (ConfigError, PipelineConfigError) as exc:
        print(f"service: {exc}", file=sys.stderr)
        return 2
    port = config.port if args.port is None else args.port
    logging.getLogger(__name__).info("%d API key(s) from $%s", len(keys), config.keys_env)
    logging.getLogger("uvicorn.access").addFilter(ACCESS_LOG_FILTER)  # a key put in a query string stays out
    uvicorn.run(app, host=host, port=port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
