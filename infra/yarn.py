"""Start, stop and check a single-node YARN on loopback: one ResourceManager
and one NodeManager (with MapReduce's shuffle service), each in its own JVM
from the project's Hadoop home, on top of the running single-node HDFS.

The instance's conf dir (settings.yarn_dir/conf) holds the HDFS site files
plus yarn-site.xml and a mapred-site.xml with mapreduce.framework.name=yarn:
it is the client configuration of `./submit.sh --master yarn` and of
`./submit.sh mr <job> -r hadoop` on YARN (HADOOP_CONF_DIR).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import string
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .daemons import (
    ClusterError,
    DaemonSet,
    check_ports,
    get_json,
    java_home,
    java_or_error,
    status_of,
    with_fast_gunzip,
)
from .hadoop_home import TEMPLATE_DIR, render_conf_dir
from .hdfs import LocalHDFS
from .settings import (
    DEFAULT_HADOOP_HOME,
    REPO_ROOT,
    ClusterSettings,
    HdfsSettings,
    hdfs_user,
    load_cluster_settings,
    load_settings,
)

log = logging.getLogger(__name__)

DAEMONS = ("resourcemanager", "nodemanager")

# Without Hadoop's native library (Maven Central ships none) the NodeManager
# starts one `chmod` process per file of a localised archive
# (RawLocalFileSystem.setPermission): about 42,300 for the packed
# environment. Its own conf dir therefore names infra/java's NioLocalFs as
# the local file system, which sets the same bits through java.nio (no
# process); only the NodeManager's (the clients' and containers' conf dir is
# Hadoop's default). Where that cannot be compiled (no javac), Java 17's
# posix_spawn through its jspawnhelper (two execs each) is replaced by vfork,
# which execs chmod directly, at about half the cost per process
# (bench/bench_chmod.py measures both in one run).
NODEMANAGER_LAUNCH = "-Djdk.lang.Process.launchMechanism=VFORK"
NIO_LOCAL_FS = "aibatch.hadoop.NioLocalFs"
NIO_SOURCE = Path(__file__).resolve().parent / "java" / "aibatch" / "hadoop" / "NioLocalFs.java"
JAVA_BUILD = REPO_ROOT / "var" / "build" / "java"


def hadoop_jars(hadoop_home: Path) -> Path:
    """Where the Hadoop home's jars lie (flat: hadoop/pom.xml)."""
    return hadoop_home / "share" / "hadoop" / "common" / "lib"


def nio_local_fs_classes(hadoop_home: Path, java: str) -> Path | None:
    """The compiled NioLocalFs (var/build/java/<hash of source and Hadoop
    jars>), compiled here the first time; None, with a warning, where it
    cannot be (a JRE without javac)."""
    jars = hadoop_jars(hadoop_home)
    key = hashlib.sha256(NIO_SOURCE.read_bytes())
    key.update("\n".join(sorted(p.name for p in jars.glob("hadoop-*.jar"))).encode())
    out = JAVA_BUILD / f"nio-local-fs-{key.hexdigest()[:12]}"
    if out.is_dir():
        return out
    javac = Path(java_home(java)) / "bin" / "javac"
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        proc = subprocess.run(
            [str(javac), "-nowarn", "-cp", f"{jars}/*", "-d", str(tmp), str(NIO_SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc = subprocess.CompletedProcess([], 1, "", str(exc))
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning(
            "could not compile %s (%s); the NodeManager will start a chmod process per localised file",
            NIO_SOURCE.name,
            (proc.stderr or proc.stdout).strip()[-500:],
        )
        return None
    try:
        os.replace(tmp, out)
    except OSError:  # another process compiled it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


PORT_NAMES = {
    "rm_port": "ResourceManager client RPC",
    "rm_scheduler_port": "ResourceManager scheduler RPC",
    "rm_tracker_port": "ResourceManager resource tracker",
    "rm_admin_port": "ResourceManager admin RPC",
    "rm_http_port": "ResourceManager web UI",
    "nm_port": "NodeManager container manager",
    "nm_localizer_port": "NodeManager localizer",
    "nm_http_port": "NodeManager web UI",
    "shuffle_port": "MapReduce shuffle",
}


@dataclass
class LocalYARN:
    settings: ClusterSettings
    hdfs_settings: HdfsSettings
    hadoop_home: Path = DEFAULT_HADOOP_HOME

    def __post_init__(self):
        self.hadoop_home = Path(self.hadoop_home).resolve()
        self.base = Path(self.settings.yarn_dir).resolve()
        self.conf_dir = self.base / "conf"
        self.nm_conf_dir = self.base / "nodemanager-conf"
        self.daemons = DaemonSet(self.base)
        self.hdfs = LocalHDFS(self.hdfs_settings, hadoop_home=self.hadoop_home)

    @property
    def rm_web_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.rm_http_port}"

    def env(self) -> dict[str, str]:
        """Environment for clients of this YARN (spark-submit --master yarn,
        mrjob's -r hadoop, the hadoop command)."""
        env = self.hdfs.env()
        env["HADOOP_CONF_DIR"] = str(self.conf_dir)
        return env

    def render_conf(self) -> Path:
        """HDFS's site files, then yarn-site.xml and mapred-site.xml (YARN's)."""
        render_conf_dir(self.hdfs_settings, self.conf_dir, hdfs_user())
        values = {
            **{k: str(v) for k, v in self.settings.yarn_ports().items()},
            "host": self.settings.host,
            "nm_memory_mb": str(self.settings.nm_memory_mb),
            "nm_vcores": str(self.settings.nm_vcores),
            "container_min_mb": str(self.settings.container_min_mb),
            "container_max_mb": str(self.settings.container_max_mb),
            "task_java_opts": self.settings.task_java_opts,
            "yarn_dir": str(self.base),
            "conf_dir": str(self.conf_dir),
            "hadoop_home": str(self.hadoop_home),
        }
        for template in sorted(TEMPLATE_DIR.glob("*.yarn")):
            text = string.Template(template.read_text()).substitute(values)
            (self.conf_dir / template.name.removesuffix(".yarn")).write_text(text)
        return self.conf_dir

    def render_nodemanager_conf(self, local_fs_classes: Path | None) -> Path:
        """The NodeManager's own conf dir: the client conf dir's files, its
        yarn-site.xml naming NioLocalFs as the local file system where it
        was compiled. Containers get the client conf dir (the admin env)."""
        shutil.rmtree(self.nm_conf_dir, ignore_errors=True)
        shutil.copytree(self.conf_dir, self.nm_conf_dir)
        if local_fs_classes is not None:
            site = self.nm_conf_dir / "yarn-site.xml"
            prop = (
                "  <property><name>fs.AbstractFileSystem.file.impl</name>"
                f"<value>{NIO_LOCAL_FS}</value></property>\n</configuration>"
            )
            site.write_text(site.read_text().replace("</configuration>", prop))
        return self.nm_conf_dir

    def running(self) -> dict[str, int | None]:
        return {d: self.daemons.pid(d) for d in DAEMONS}

    def running_nodes(self) -> list[dict]:
        nodes = (get_json(f"{self.rm_web_url}/ws/v1/cluster/nodes") or {}).get("nodes") or {}
        return [n for n in nodes.get("node", []) if n.get("state") == "RUNNING"]

    def is_ready(self) -> bool:
        return bool(self.running_nodes())

    def start(self, timeout: float = 120.0) -> bool:
        """Start the ResourceManager and NodeManager and wait for a RUNNING
        node; False if they already ran."""
        pids = self.running()
        if all(pids.values()):
            self.daemons.wait(list(DAEMONS), self.is_ready, "YARN", timeout)
            return False
        if any(pids.values()):
            self.stop()
        java = java_or_error()
        if not self.hdfs.hadoop_bin.exists():
            raise ClusterError(f"Hadoop home not found at {self.hadoop_home} (no bin/hadoop): run scripts/setup.sh")
        if not self.hdfs.is_ready():
            raise ClusterError(
                f"HDFS is not running at {self.hdfs.hdfs_url} (YARN keeps job files there): "
                f"start it first with ./scripts/hdfs.sh start"
            )
        check_ports(self.settings.host, self.settings.yarn_ports(), PORT_NAMES.__getitem__)
        for d in ("local", "container-logs"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.render_conf()
        classes = nio_local_fs_classes(self.hadoop_home, java)
        self.render_nodemanager_conf(classes)
        for daemon in DAEMONS:
            env = self.env()
            env["JAVA_HOME"] = java_home(java)
            env["HADOOP_HEAPSIZE"] = self.settings.daemon_heap
            env["HADOOP_LOG_DIR"] = str(self.daemons.log_dir)
            env["HADOOP_OPTS"] = f"-Dhadoop.root.logger=INFO,RFA -Dhadoop.log.file={daemon}.log {self.daemons.marker}"
            if daemon == "nodemanager":
                env["HADOOP_CONF_DIR"] = str(self.nm_conf_dir)
                env["HADOOP_OPTS"] += f" {NODEMANAGER_LAUNCH}"
                if classes is not None:
                    env["HADOOP_CLASSPATH"] = os.pathsep.join(filter(None, [env.get("HADOOP_CLASSPATH"), str(classes)]))
            self._truncate_log(daemon)
            self.daemons.spawn(daemon, [str(self.hdfs.hadoop_bin), daemon], with_fast_gunzip(env))
        try:
            self.daemons.wait(list(DAEMONS), self.is_ready, "YARN (a RUNNING NodeManager)", timeout)
        except BaseException:
            self.stop()
            raise
        return True

    def _truncate_log(self, daemon: str) -> None:
        """Start-up errors are read from this start's log only."""
        log_file = self.daemons.log_dir / f"{daemon}.log"
        if log_file.exists():
            os.replace(log_file, log_file.with_suffix(".log.previous"))

    def stop(self) -> bool:
        return self.daemons.stop(list(reversed(DAEMONS)))

    def status(self) -> str:
        return status_of(self.running(), self.is_ready)

    def describe(self) -> str:
        s = self.settings
        return (
            f"ResourceManager: {s.host}:{s.rm_port} (web UI {self.rm_web_url})\n"
            f"NodeManager:     {s.host}:{s.nm_port} (web UI http://{s.host}:{s.nm_http_port}), "
            f"{s.nm_memory_mb} MB, {s.nm_vcores} vcores, shuffle port {s.shuffle_port}\n"
            f"HDFS:            {self.hdfs.hdfs_url}\n"
            f"client conf:     HADOOP_CONF_DIR={self.conf_dir}\n"
            f"logs:            {self.daemons.log_dir} (containers: {self.base / 'container-logs'})"
        )


MRJOB_CONF = REPO_ROOT / "conf" / "mrjob.conf"
MRJOB_YARN_CONF = REPO_ROOT / "conf" / "hadoop" / "mrjob-yarn.conf"


def framework_of(conf_dir: str | os.PathLike | None) -> str:
    """mapreduce.framework.name in conf_dir's mapred-site.xml ('local' if unset)."""
    try:
        text = (Path(conf_dir) / "mapred-site.xml").read_text() if conf_dir else ""
    except FileNotFoundError:
        text = ""
    match = re.search(r"<name>mapreduce\.framework\.name</name>\s*<value>([^<]+)</value>", text)
    return match.group(1).strip() if match else "local"


def default_client_conf_dir() -> Path | None:
    """The local YARN's conf dir while its ResourceManager runs, else the
    local HDFS's (the LocalJobRunner), else None."""
    try:
        yarn_dir = Path(load_cluster_settings().yarn_dir).resolve()
        hdfs_conf = load_settings().data_dir / "conf"
    except Exception:  # a broken settings file: the launcher's own checks say so later
        return None
    if DaemonSet(yarn_dir).pid("resourcemanager") and (yarn_dir / "conf" / "yarn-site.xml").exists():
        return yarn_dir / "conf"
    return hdfs_conf if hdfs_conf.is_dir() else None


def mrjob_target(runner: str, local_job_runner: bool, env: Mapping[str, str]) -> tuple[Path, list[str], Path | None]:
    """How `./submit.sh mr <job> -r RUNNER` runs: (mrjob conf file, extra
    mrjob arguments, HADOOP_CONF_DIR). -r hadoop goes to YARN when the
    Hadoop conf dir says so (tasks in containers, running the packed
    environment), else, or with --local-job-runner, to the LocalJobRunner."""
    from .pack import archive_url, require_archive

    conf_dir = Path(env["HADOOP_CONF_DIR"]) if env.get("HADOOP_CONF_DIR") else default_client_conf_dir()
    if runner != "hadoop" or local_job_runner or framework_of(conf_dir) != "yarn":
        return MRJOB_CONF, [], conf_dir
    assert conf_dir is not None
    url = env.get("AIBATCH_ENV_ARCHIVE") or archive_url(conf_dir=conf_dir)
    url = require_archive(url.split("#", 1)[0], conf_dir, Path(env.get("HADOOP_HOME") or DEFAULT_HADOOP_HOME))
    # Tasks and mrjob's setup wrapper run the environment YARN unpacks into
    # each container as ./environment; a setup command writes which Python
    # that is to the task log (infra/task_probe.py).
    python = "environment/bin/python"
    probe = Path(__file__).with_name("task_probe.py")
    return (
        MRJOB_YARN_CONF,
        ["--archives", f"{url}#environment", "--python-bin", python, "--setup", f"{python} {probe}#"],
        conf_dir,
    )
