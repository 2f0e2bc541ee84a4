#!/usr/bin/env bash
# Start, stop or check the single-node Kafka broker (KRaft, no ZooKeeper) on
# loopback: 127.0.0.1:19092, data under var/kafka (infra/kafka.py).
# Run with: ./scripts/kafka.sh start|stop|status|restart [--port N] [--data-dir DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$root/.venv/bin/python" ]] || { echo "error: run ./scripts/setup.sh first" >&2; exit 1; }
cd "$root"
exec "$root/.venv/bin/python" -m infra kafka "$@"
