#!/usr/bin/env bash
# The README's main job. Until the pipeline jobs land this is the foundation
# smoke run: start HDFS, write through WebHDFS, read with Spark, stop.
# Run with: ./scripts/demo.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$root/.venv/bin/python" "$root/scripts/smoke.py"
