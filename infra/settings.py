"""Typed settings of the local HDFS, read once from conf/hdfs.toml.

Every key may be overridden by an environment variable named
AIBATCH_HDFS_<KEY>; errors name the file or variable and the key at fault.
"""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "hdfs.toml"
HADOOP_VERSION = "3.5.0"
DEFAULT_HADOOP_HOME = REPO_ROOT / "var" / f"hadoop-{HADOOP_VERSION}"


class SettingsError(ValueError):
    """A setting is missing or has a bad value; the message names it."""


@dataclasses.dataclass(frozen=True)
class HdfsSettings:
    host: str = "127.0.0.1"
    namenode_port: int = 19820
    namenode_http_port: int = 19870
    datanode_port: int = 19866
    datanode_http_port: int = 19864
    datanode_ipc_port: int = 19867
    data_dir: Path = REPO_ROOT / "var" / "hdfs"
    local_map_tasks: int = 2
    daemon_heap: str = "512m"
    # Serve on a non-loopback host only when the user says so (see check_exposure).
    allow_remote_access: bool = False

    PORT_KEYS = (
        "namenode_port",
        "namenode_http_port",
        "datanode_port",
        "datanode_http_port",
        "datanode_ipc_port",
    )

    @property
    def hdfs_url(self) -> str:
        return f"hdfs://{self.host}:{self.namenode_port}"

    @property
    def webhdfs_url(self) -> str:
        return f"http://{self.host}:{self.namenode_http_port}"

    def ports(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.PORT_KEYS}

    def with_overrides(self, **kw) -> HdfsSettings:
        return dataclasses.replace(self, **kw)


def _coerce(key: str, raw, where: str, base: Path, cls: type = HdfsSettings):
    field = {f.name: f for f in dataclasses.fields(cls)}.get(key)
    if field is None:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise SettingsError(f"{where}: unknown key '{key}' (known keys: {known})")
    default = field.default
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "false", "0", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise SettingsError(f"{where}: '{key}' must be true or false, got {raw!r}")
    if not isinstance(default, (int, str, Path)):
        raise SettingsError(f"{where}: key '{key}' cannot be set")
    if isinstance(default, int):
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: '{key}' must be an integer, got {raw!r}") from None
        if key.endswith("_port") and not 1 <= value <= 65535:
            raise SettingsError(f"{where}: '{key}' must be a port in 1..65535, got {value}")
        if key in POSITIVE_KEYS and value < 1:
            raise SettingsError(f"{where}: '{key}' must be at least 1, got {value}")
        return value
    if not isinstance(raw, str) or not raw:
        raise SettingsError(f"{where}: '{key}' must be a non-empty string, got {raw!r}")
    if isinstance(default, Path):
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (base / path)
    return raw


def _read_values(path: Path, env: Mapping[str, str], prefix: str, cls: type, what: str) -> tuple[dict, dict[str, str]]:
    """The TOML file's keys, then the PREFIX* environment overrides, coerced
    to cls's fields: (values, key -> where it was given)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{what} config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    values: dict = {}
    given_by: dict[str, str] = {}
    for key, raw in data.items():
        values[key] = _coerce(key, raw, str(path), REPO_ROOT, cls)
        given_by[key] = str(path)
    for name, raw in env.items():
        if name.startswith(prefix):
            key = name[len(prefix) :].lower()
            values[key] = _coerce(key, raw, f"environment variable {name}", Path.cwd(), cls)
            given_by[key] = f"environment variable {name}"
    return values, given_by


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> HdfsSettings:
    """Read the TOML file, then the AIBATCH_HDFS_* environment overrides."""
    path = Path(path) if path else DEFAULT_CONFIG
    values, given_by = _read_values(path, os.environ if env is None else env, "AIBATCH_HDFS_", HdfsSettings, "HDFS")
    settings = HdfsSettings(**values)
    ports = settings.ports()
    if len(set(ports.values())) != len(ports):
        raise SettingsError(f"{path}: the HDFS ports must differ from each other, got {ports}")
    check_exposure(settings, given_by.get("host", str(path)))
    return settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_exposure(settings: HdfsSettings, where: str) -> None:
    """Refuse a non-loopback host unless allow_remote_access is set: this HDFS
    runs with simple authentication, so whoever reaches its ports is whoever
    they say they are."""
    if is_loopback(settings.host) or settings.allow_remote_access:
        return
    raise SettingsError(
        f"{where}: host {settings.host!r} is not a loopback address. This HDFS uses simple authentication: anyone "
        "who can reach its ports can read, write and delete every file as any user (WebHDFS takes the user from "
        '?user.name=, RPC from the client\'s word). Use host = "127.0.0.1", or, if the network is trusted, set '
        "allow_remote_access = true (or AIBATCH_HDFS_ALLOW_REMOTE_ACCESS=true)."
    )


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """The single-node YARN (ResourceManager + NodeManager) and the Spark
    standalone cluster (one master, `spark_workers` workers), read from
    conf/cluster.toml; every key overridable by AIBATCH_CLUSTER_<KEY>."""

    host: str = "127.0.0.1"
    rm_port: int = 18032
    rm_scheduler_port: int = 18030
    rm_tracker_port: int = 18031
    rm_admin_port: int = 18033
    rm_http_port: int = 18088
    nm_port: int = 18040
    nm_localizer_port: int = 18041
    nm_http_port: int = 18042
    shuffle_port: int = 18062
    nm_memory_mb: int = 8192
    nm_vcores: int = 2
    container_min_mb: int = 256
    container_max_mb: int = 4096
    yarn_dir: Path = REPO_ROOT / "var" / "yarn"
    spark_master_port: int = 17077
    spark_master_http_port: int = 18080
    spark_worker_http_port: int = 18081
    spark_workers: int = 2
    spark_worker_cores: int = 1
    spark_worker_memory: str = "2g"
    spark_dir: Path = REPO_ROOT / "var" / "spark-standalone"
    daemon_heap: str = "512m"
    # JVM options added to every MapReduce task's and application master's
    # JVM on the local YARN (mapred-site.xml), after the heap size.
    task_java_opts: str = ""

    YARN_PORT_KEYS = (
        "rm_port",
        "rm_scheduler_port",
        "rm_tracker_port",
        "rm_admin_port",
        "rm_http_port",
        "nm_port",
        "nm_localizer_port",
        "nm_http_port",
        "shuffle_port",
    )

    @property
    def spark_master_url(self) -> str:
        return f"spark://{self.host}:{self.spark_master_port}"

    def yarn_ports(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.YARN_PORT_KEYS}

    def spark_ports(self) -> dict[str, int]:
        ports = {"spark_master_port": self.spark_master_port, "spark_master_http_port": self.spark_master_http_port}
        for i in range(self.spark_workers):
            ports[f"spark_worker_http_port+{i}"] = self.spark_worker_http_port + i
        return ports

    def with_overrides(self, **kw) -> ClusterSettings:
        return dataclasses.replace(self, **kw)


POSITIVE_KEYS = (
    "local_map_tasks",
    "nm_memory_mb",
    "nm_vcores",
    "container_min_mb",
    "container_max_mb",
    "spark_workers",
    "spark_worker_cores",
)
DEFAULT_CLUSTER_CONFIG = REPO_ROOT / "conf" / "cluster.toml"


def load_cluster_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> ClusterSettings:
    """Read conf/cluster.toml, then the AIBATCH_CLUSTER_* environment overrides."""
    path = Path(path) if path else DEFAULT_CLUSTER_CONFIG
    values, _ = _read_values(path, os.environ if env is None else env, "AIBATCH_CLUSTER_", ClusterSettings, "cluster")
    settings = ClusterSettings(**values)
    ports = list(settings.yarn_ports().values()) + list(settings.spark_ports().values())
    if len(set(ports)) != len(ports):
        raise SettingsError(f"{path}: the YARN and Spark ports must differ from each other, got {sorted(ports)}")
    if settings.container_min_mb > settings.container_max_mb or settings.container_max_mb > settings.nm_memory_mb:
        raise SettingsError(
            f"{path}: need container_min_mb <= container_max_mb <= nm_memory_mb, got "
            f"{settings.container_min_mb}, {settings.container_max_mb}, {settings.nm_memory_mb}"
        )
    return settings


def hdfs_user(env: Mapping[str, str] | None = None) -> str:
    """The user jobs run as: HADOOP_USER_NAME if set (Hadoop honours it in
    simple auth), else the login name."""
    env = os.environ if env is None else env
    return env.get("HADOOP_USER_NAME") or getpass.getuser()
