#!/usr/bin/env bash
# Start, stop or check the single-node YARN on loopback (ResourceManager,
# NodeManager with MapReduce's shuffle; conf/cluster.toml) on top of the
# running single-node HDFS (./scripts/hdfs.sh start first).
# Run with: ./scripts/yarn.sh start|stop|status|restart
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$root/.venv/bin/python" ]] || { echo "error: run ./scripts/setup.sh first" >&2; exit 1; }
cd "$root"
exec "$root/.venv/bin/python" -m infra yarn "$@"
