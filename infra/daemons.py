"""Start, find and stop a set of long-running Java daemons that belong to one
instance directory (pid files under run/, logs under logs/), the way
infra/hdfs.py runs the NameNode and DataNode. Used by the single-node YARN
and the Spark standalone cluster."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .hdfs import HdfsError, _last_lines, _terminate, check_java, port_in_use


class ClusterError(RuntimeError):
    """A cluster daemon could not be started or reached; the message says why."""


def end_child(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Stop a child server cleanly: SIGTERM (servers save their state on it),
    then SIGKILL if it has not exited within timeout seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def java_or_error() -> str:
    try:
        return check_java()
    except HdfsError as exc:
        raise ClusterError(str(exc)) from None


def java_home(java: str) -> str:
    """JAVA_HOME of a java binary (containers need it: YARN starts their JVMs
    as $JAVA_HOME/bin/java)."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    return str(Path(java).resolve().parent.parent)


# infra/bin: a gzip that decompresses with igzip where installed (its header
# says when). Hadoop's FileUtil.unTar runs `gzip -dc ARCHIVE | tar -x` from
# the PATH of the process that unpacks: YARN's NodeManager localising the
# packed environment, each standalone executor and the client-mode driver
# unpacking spark.archives. GNU gzip spends about 30 s of CPU on the 3.2 GB
# archive, igzip under a third of that (bench/bench_gunzip.py).
GZIP_DIR = Path(__file__).resolve().parent / "bin"


def with_fast_gunzip(env: dict[str, str]) -> dict[str, str]:
    """env with infra/bin first on its PATH (once)."""
    parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and Path(p) != GZIP_DIR]
    return {**env, "PATH": os.pathsep.join([str(GZIP_DIR), *parts])}


def check_ports(host: str, ports: dict[str, int], what: Callable[[str], str]) -> None:
    """Raise naming the first port already taken and the setting that chose it."""
    for key, port in ports.items():
        if port_in_use(host, port):
            raise ClusterError(
                f"{what(key)} port {port} on {host} is already in use by another process; free it or "
                f"choose another port (conf/cluster.toml key '{key.split('+')[0]}' or "
                f"AIBATCH_CLUSTER_{key.split('+')[0].upper()})"
            )


def get_json(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def status_of(pids: dict[str, int | None], ready: Callable[[], bool]) -> str:
    """One word for a set of daemons: all alive and ready, some alive, none."""
    if all(pids.values()) and ready():
        return "running"
    if any(pids.values()):
        return "starting or degraded"
    return "stopped"


class DaemonSet:
    """The daemons of one instance: each started in its own process group
    with a marker (-Daibatch.instance=<base>) in its command line, so a
    recycled pid is never taken for ours."""

    def __init__(self, base: Path):
        self.base = Path(base).resolve()
        self.log_dir = self.base / "logs"
        self.run_dir = self.base / "run"
        self.marker = f"-Daibatch.instance={self.base}"
        self._procs: dict[str, subprocess.Popen] = {}
        self._offsets: dict[str, int] = {}

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self.pid_file(name).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if self.marker.encode() in cmdline else None

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        for d in (self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        out_path = self.log_dir / f"{name}.out"
        self._offsets[name] = out_path.stat().st_size if out_path.exists() else 0
        with open(out_path, "ab") as out:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid_file(name).write_text(str(proc.pid))
        self._procs[name] = proc

    def exited(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc.poll() is not None if proc else self.pid(name) is None

    def log_tail(self, name: str) -> str:
        """The errors this start wrote to the daemon's .out and .log files."""
        text = ""
        for path in (self.log_dir / f"{name}.out", self.log_dir / f"{name}.log"):
            if path.exists():
                with open(path, "rb") as fh:
                    fh.seek(self._offsets.get(name, 0) if path.suffix == ".out" else 0)
                    text += fh.read().decode(errors="replace")[-20000:]
        errors = [line for line in text.splitlines() if " ERROR " in line or "Exception" in line]
        return "\n".join(errors[-8:]) or _last_lines(text)

    def wait(self, names: list[str], ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name in names:
                if self.exited(name):
                    raise ClusterError(f"the {name} exited during start-up:\n{self.log_tail(name)}")
            time.sleep(0.5)
        raise ClusterError(f"{what} did not become ready within {timeout:.0f} s; logs in {self.log_dir}")

    def stop(self, names: list[str], timeout: float = 30.0) -> bool:
        stopped = False
        for name in names:
            pid = self.pid(name)
            if pid:
                stopped = True
                _terminate(pid, timeout)
            self.pid_file(name).unlink(missing_ok=True)
        return stopped
