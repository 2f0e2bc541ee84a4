"""Start, stop and check a single-node HDFS (one NameNode, one DataNode) on
loopback, from the project's Hadoop home.

The daemons are the real Apache Hadoop classes, run with the instance's own
config dir (rendered from conf/hadoop/*.template) and data kept under
settings.data_dir, so a restart keeps the files.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .hadoop_home import render_conf_dir
from .settings import DEFAULT_HADOOP_HOME, HdfsSettings, check_exposure, hdfs_user

log = logging.getLogger(__name__)

DAEMONS = ("namenode", "datanode")


class HdfsError(RuntimeError):
    """HDFS could not be started or reached; the message says why."""


def check_java() -> str:
    """Return the java binary, or raise naming what is missing."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise HdfsError(
            "Java not found (no java on PATH and JAVA_HOME unset): "
            "install OpenJDK 17, e.g. apt-get install openjdk-17-jdk-headless"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if not match or int(match.group(1)) < 17:
        raise HdfsError(f"Java 17 or newer is required, {java} reports: {out.strip()}")
    return java


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _unassigned_ports() -> range:
    """Ports the kernel never picks by itself: those below its ephemeral range
    (net.ipv4.ip_local_port_range, 32768-60999 by default), from 10000."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, low)


_handed_out: set[int] = set()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports (for tests that run their own instance).

    A port chosen now may be bound minutes later (a test session's cluster
    settings are chosen once, its standalone cluster starts when a module
    needs it). Ports from the kernel's ephemeral range can meanwhile go to
    any outgoing connection's local end, as one did in CI; so these come from
    below that range. Each process walks its own stretch of it (by pytest-xdist
    worker, else by pid) and never hands a port out twice; a port something
    already listens on is skipped.
    """
    pool = _unassigned_ports()
    if len(pool) < 1000:  # a machine whose ephemeral range starts low: let the kernel choose
        return _kernel_ports(n, host)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    slot = int(worker) if worker.isdigit() else os.getpid()
    start = (slot * 2003) % len(pool)
    ports: list[int] = []
    for i in range(len(pool)):
        port = pool[(start + i) % len(pool)]
        if port in _handed_out or port_in_use(host, port):
            continue
        _handed_out.add(port)
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports on {host} between {pool.start} and {pool.stop - 1}")


def _kernel_ports(n: int, host: str) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class LocalHDFS:
    settings: HdfsSettings
    hadoop_home: Path = DEFAULT_HADOOP_HOME
    user: str | None = None

    def __post_init__(self):
        self.hadoop_home = Path(self.hadoop_home)
        self.user = self.user or hdfs_user()
        self.base = Path(self.settings.data_dir).resolve()
        self.conf_dir = self.base / "conf"
        self.log_dir = self.base / "logs"
        self.run_dir = self.base / "run"

    @property
    def username(self) -> str:
        return self.user or hdfs_user()

    # ----- addresses -------------------------------------------------------
    @property
    def hdfs_url(self) -> str:
        return self.settings.hdfs_url

    @property
    def webhdfs_url(self) -> str:
        return self.settings.webhdfs_url

    def env(self) -> dict[str, str]:
        """Environment for `hadoop` commands against this instance."""
        env = dict(os.environ)
        env["HADOOP_HOME"] = str(self.hadoop_home)
        env["HADOOP_CONF_DIR"] = str(self.conf_dir)
        env["HADOOP_USER_NAME"] = self.username
        env["HADOOP_LOG_DIR"] = str(self.log_dir)
        return env

    @property
    def hadoop_bin(self) -> Path:
        return self.hadoop_home / "bin" / "hadoop"

    # ----- process bookkeeping --------------------------------------------
    def _pid_file(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    def _pid(self, daemon: str) -> int | None:
        try:
            pid = int(self._pid_file(daemon).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        # A recycled pid would not be our Java process.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        if f"-Daibatch.instance={self.conf_dir}".encode() not in cmdline:
            return None
        return pid

    def running(self) -> dict[str, int | None]:
        return {d: self._pid(d) for d in DAEMONS}

    # ----- lifecycle --------------------------------------------------------
    def start(self, timeout: float = 120.0) -> bool:
        """Start both daemons and wait until HDFS is usable. Returns False if
        it was already running (nothing done), True if it started it."""
        check_exposure(self.settings, "HDFS settings")  # settings built without load_settings too
        pids = self.running()
        if all(pids.values()):
            log.info("HDFS already running (pids %s)", pids)
            self.wait_ready(timeout)
            return False
        if any(pids.values()):
            # Half up (one daemon died): restart cleanly.
            self.stop()
        check_java()
        if not self.hadoop_bin.exists():
            raise HdfsError(f"Hadoop home not found at {self.hadoop_home} (no bin/hadoop): run scripts/setup.sh")
        names = {
            "namenode_port": "NameNode RPC",
            "namenode_http_port": "NameNode HTTP (WebHDFS)",
            "datanode_port": "DataNode data transfer",
            "datanode_http_port": "DataNode HTTP",
            "datanode_ipc_port": "DataNode IPC",
        }
        for key, port in self.settings.ports().items():
            if port_in_use(self.settings.host, port):
                raise HdfsError(
                    f"{names[key]} port {port} on {self.settings.host} is already in use by "
                    f"another process; free it or choose another port "
                    f"(conf/hdfs.toml key '{key}' or AIBATCH_HDFS_{key.upper()})"
                )
        for d in (self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        render_conf_dir(self.settings, self.conf_dir, self.username)
        self._format_if_new()
        self._spawn("namenode")
        self._spawn("datanode")
        try:
            self.wait_ready(timeout)
            self._make_dirs()
        except BaseException:
            self.stop()
            raise
        return True

    def _name_dir(self) -> Path:
        return self.base / "name"

    def _format_if_new(self) -> None:
        name_dir = self._name_dir()
        version = name_dir / "current" / "VERSION"
        if version.exists():
            text = version.read_text(errors="replace")
            if "namespaceID=" not in text or "clusterID=" not in text:
                raise HdfsError(
                    f"NameNode directory {name_dir} is corrupt ({version} lacks namespaceID/"
                    f"clusterID); move it away to start an empty HDFS, or restore it"
                )
            return
        if name_dir.exists() and any(name_dir.iterdir()):
            raise HdfsError(
                f"NameNode directory {name_dir} is corrupt (it has files but no current/VERSION); "
                f"move it away to start an empty HDFS, or restore it"
            )
        log.info("formatting a new NameNode in %s", name_dir)
        # A stale DataNode dir would carry another cluster's id.
        shutil.rmtree(self.base / "data", ignore_errors=True)
        proc = subprocess.run(
            [str(self.hadoop_bin), "namenode", "-format", "-nonInteractive", "-force"],
            env=self.env(),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise HdfsError(f"formatting the NameNode failed:\n{_last_lines(proc.stderr)}")

    def _spawn(self, daemon: str) -> None:
        env = self.env()
        env["HADOOP_HEAPSIZE"] = self.settings.daemon_heap
        env["HADOOP_OPTS"] = (
            f"-Dhadoop.root.logger=INFO,RFA -Dhadoop.log.file={daemon}.log -Daibatch.instance={self.conf_dir}"
        )
        # Start-up errors are read from what this start appends, not older runs.
        self._log_offsets = getattr(self, "_log_offsets", {})
        for name in (f"{daemon}.log", f"{daemon}.out"):
            p = self.log_dir / name
            self._log_offsets[name] = p.stat().st_size if p.exists() else 0
        out = open(self.log_dir / f"{daemon}.out", "ab")
        proc = subprocess.Popen(
            [str(self.hadoop_bin), daemon],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self._pid_file(daemon).write_text(str(proc.pid))
        self._procs = getattr(self, "_procs", {})
        self._procs[daemon] = proc

    def _daemon_failure(self) -> str | None:
        for daemon in DAEMONS:
            proc = getattr(self, "_procs", {}).get(daemon)
            dead = proc.poll() is not None if proc else self._pid(daemon) is None
            if dead:
                return f"the {daemon} exited during start-up:\n{self._log_error(daemon)}"
        return None

    def _log_error(self, daemon: str) -> str:
        text = ""
        for name in (f"{daemon}.log", f"{daemon}.out"):
            p = self.log_dir / name
            if p.exists():
                with open(p, "rb") as fh:
                    fh.seek(getattr(self, "_log_offsets", {}).get(name, 0))
                    text += fh.read().decode(errors="replace")[-20000:]
        errors = [line for line in text.splitlines() if " ERROR " in line or "Exception" in line]
        return "\n".join(errors[-8:]) or _last_lines(text)

    def _jmx(self, query: str) -> dict | None:
        url = f"{self.webhdfs_url}/jmx?qry={query}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                beans = json.load(resp).get("beans", [])
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return beans[0] if beans else None

    def is_ready(self) -> bool:
        state = self._jmx("Hadoop:service=NameNode,name=FSNamesystemState")
        info = self._jmx("Hadoop:service=NameNode,name=NameNodeInfo")
        if not state or not info:
            return False
        return state.get("NumLiveDataNodes", 0) >= 1 and not info.get("Safemode")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready():
                return
            failure = self._daemon_failure()
            if failure:
                raise HdfsError(failure)
            time.sleep(0.5)
        raise HdfsError(
            f"HDFS did not become ready (live DataNode, safe mode off) within {timeout:.0f} s; logs in {self.log_dir}"
        )

    def _make_dirs(self) -> None:
        """/user/<user> owned by the job user (mrjob stages files there), and a
        world-writable /tmp (the LocalJobRunner's staging dir lives under it)."""
        from hdfs import InsecureClient

        # The NameNode's superuser is the OS user that started it.
        superuser = getpass.getuser()
        client = InsecureClient(self.webhdfs_url, user=superuser)
        home = f"/user/{self.user}"
        client.makedirs(home)
        if self.user != superuser:
            client.set_owner(home, owner=self.user)
        client.makedirs("/tmp", permission="1777")
        client.set_permission("/tmp", "1777")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop both daemons; returns False if none was running."""
        stopped = False
        for daemon in reversed(DAEMONS):
            pid = self._pid(daemon)
            if pid:
                stopped = True
                _terminate(pid, timeout)
            self._pid_file(daemon).unlink(missing_ok=True)
        return stopped

    def status(self) -> str:
        from .daemons import status_of  # daemons builds on this module

        return status_of(self.running(), self.is_ready)

    def describe(self) -> str:
        return (
            f"HDFS:    {self.hdfs_url}\n"
            f"WebHDFS: {self.webhdfs_url}/webhdfs/v1\n"
            f"user:    {self.user} (home /user/{self.user})\n"
            f"conf:    {self.conf_dir}\n"
            f"logs:    {self.log_dir}"
        )


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap if it is our own child.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _last_lines(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])
