#!/usr/bin/env bash
# Start, stop or check the single-node HDFS on loopback (conf/hdfs.toml).
# Run with: ./scripts/hdfs.sh start|stop|status|restart
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$root/.venv/bin/python" ]] || { echo "error: run ./scripts/setup.sh first" >&2; exit 1; }
cd "$root"
exec "$root/.venv/bin/python" -m infra hdfs "$@"
