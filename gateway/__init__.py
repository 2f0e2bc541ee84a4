"""aibatch LLM gateway: a local server that speaks the OpenAI Chat Completions and
Anthropic Messages wire formats, enforces provider-style rate limits and injects
seeded faults. Start it with: .venv/bin/python -m gateway --config conf/gateway.toml
"""

from .app import create_app
from .config import ConfigError, GatewayConfig, load_config

__all__ = ["create_app", "load_config", "GatewayConfig", "ConfigError"]
