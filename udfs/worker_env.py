"""Which Python a Spark executor's Python worker runs: its process, its
executor JVM, its working dir, sys.prefix, torch's location, the
encoder's directory and where the providers' SDKs are. `./submit.sh --master URL env-check` collects these
from every executor (infra/env_check.py); on a cluster, submit.sh also sets
AIBATCH_WORKER_PROBE=1 in the executors' environment, and then each Python
worker that scores writes its report once, as one line, to its executor's
log (`aibatch worker python: {...}`), so a job's own logs show that its
executors ran the packed environment inside their own dirs."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
from typing import Any

PROBE_ENV = "AIBATCH_WORKER_PROBE"
LOG_PREFIX = "aibatch worker python: "
# The official SDKs udfs/enrich/dialects.py opens its clients with, in the
# tasks that call the provider: the packed environment must hold them.
PROVIDER_SDKS = ("openai", "anthropic")
_logged = False


def executor_jvm(pid: int) -> tuple[int | None, str]:
    """The nearest ancestor Java process of pid and its main class."""
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            return None, ""
        if argv and os.path.basename(argv[0]) == "java":
            main = next((a for a in argv if a.startswith("org.apache.spark.")), "")
            return ppid, main
        pid = ppid
    return None, ""


def module_file(name: str) -> str:
    """Where module `name` would be imported from (found without importing
    it), or why it cannot be."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        return f"missing: {exc}"
    return spec.origin if spec is not None and spec.origin else f"missing: no module named {name!r}"


def probe(_index: int = 0) -> dict[str, Any]:
    """This Python worker's report (runs in an executor)."""
    import torch

    from udfs import model as M

    jvm_pid, jvm_main = executor_jvm(os.getpid())
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "executor_jvm_pid": jvm_pid,
        "executor_jvm_main": jvm_main,
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "prefix_realpath": os.path.realpath(sys.prefix),
        "torch": torch.__file__,
        "torch_version": torch.__version__,
        "encoder_dir": str(M.default_model_dir()),
        "sdks": {name: module_file(name) for name in PROVIDER_SDKS},
        "env_vars": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TQDM_DISABLE")},
    }


def log_once() -> None:
    """With AIBATCH_WORKER_PROBE=1: write this worker's report to stderr (the
    executor's log) the first time it is called in this process."""
    global _logged
    if _logged or os.environ.get(PROBE_ENV) != "1":
        return
    _logged = True
    sys.stderr.write(LOG_PREFIX + json.dumps(probe(), sort_keys=True) + "\n")
    sys.stderr.flush()


def read_log_lines(text: str) -> list[dict[str, Any]]:
    """The reports in an executor log's text."""
    return [json.loads(line[len(LOG_PREFIX) :]) for line in text.splitlines() if line.startswith(LOG_PREFIX)]
