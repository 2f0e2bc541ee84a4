"""Writes one line to the task log saying which Python a MapReduce task
runs: its pid, working dir, sys.prefix and where torch and the providers'
SDKs (the enrich clients', udfs/worker_env.py's PROVIDER_SDKS) would be
imported from (found, not imported). mrjob runs it as a setup command before each
task on YARN (infra/yarn.py), so the container's stderr shows that the task
ran the packed environment unpacked in its own container dir.

Run with (what the setup command does): environment/bin/python task_probe.py
"""

import importlib.util
import json
import os
import sys


def origin(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return spec.origin if spec else None


record = {
    "pid": os.getpid(),
    "cwd": os.getcwd(),
    "executable": sys.executable,
    "prefix": sys.prefix,
    "torch": origin("torch"),
    "sdks": {name: origin(name) for name in ("openai", "anthropic")},
}
sys.stderr.write("aibatch task python: " + json.dumps(record, sort_keys=True) + "\n")
