"""Start the gateway on loopback.

Run with: AIBATCH_GATEWAY_KEY=sk-local-dev .venv/bin/python -m gateway --config conf/gateway.toml [--port 8787]
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from .app import create_app
from .config import LOOPBACK_HOSTS, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TOML file (see conf/gateway.toml)")
    parser.add_argument("--host", help="loopback address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port; 0 picks a free one)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.host
    if host not in LOOPBACK_HOSTS:
        print(
            f"gateway: --host {host}: only loopback addresses are allowed ({', '.join(LOOPBACK_HOSTS)})",
            file=sys.stderr,
        )
        return 2
    port = config.port if args.port is None else args.port
    logging.getLogger(__name__).info("keys loaded: %s", ", ".join(f"{k.name} (from ${k.env})" for k in config.keys))
    uvicorn.run(create_app(config), host=host, port=port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
