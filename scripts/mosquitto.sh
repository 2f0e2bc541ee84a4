#!/usr/bin/env bash
# Start, stop or check the Mosquitto MQTT broker (Debian's package) on
# loopback: 127.0.0.1:1883, one user from a password file (no anonymous
# access), persistence under var/mosquitto (infra/mosquitto.py).
# Run with: ./scripts/mosquitto.sh start|stop|status [--port N] [--data-dir DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$root/.venv/bin/python" ]] || { echo "error: run ./scripts/setup.sh first" >&2; exit 1; }
cd "$root"
exec "$root/.venv/bin/python" -m infra mosquitto "$@"
