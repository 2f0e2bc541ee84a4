"""Writes one line to the task log saying which Python a MapReduce task
runs: its pid, working dir, sys.prefix and where torch and the providers'
SDKs (the enrich clients') would be imported from (found, not imported, by
udfs.worker_env's module_file, from the job's shipped code on PYTHONPATH).
mrjob runs it as a setup command before each task on YARN (infra/yarn.py),
so the container's stderr shows that the task ran the packed environment
unpacked in its own container dir.

Run with (what the setup command does): environment/bin/python task_probe.py
"""

import json
import os
import sys

from udfs.worker_env import PROVIDER_SDKS, module_file

record = {
    "pid": os.getpid(),
    "cwd": os.getcwd(),
    "executable": sys.executable,
    "prefix": sys.prefix,
    "torch": module_file("torch"),
    "sdks": {name: module_file(name) for name in PROVIDER_SDKS},
}
sys.stderr.write("aibatch task python: " + json.dumps(record, sort_keys=True) + "\n")
