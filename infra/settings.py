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


def _coerce(key: str, raw, where: str, base: Path):
    field = {f.name: f for f in dataclasses.fields(HdfsSettings)}.get(key)
    if field is None:
        known = ", ".join(f.name for f in dataclasses.fields(HdfsSettings))
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
        if key == "local_map_tasks" and value < 1:
            raise SettingsError(f"{where}: '{key}' must be at least 1, got {value}")
        return value
    if not isinstance(raw, str) or not raw:
        raise SettingsError(f"{where}: '{key}' must be a non-empty string, got {raw!r}")
    if isinstance(default, Path):
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (base / path)
    return raw


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> HdfsSettings:
    """Read the TOML file, then the AIBATCH_HDFS_* environment overrides."""
    path = Path(path) if path else DEFAULT_CONFIG
    env = os.environ if env is None else env
    values: dict = {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"HDFS config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    given_by: dict[str, str] = {}
    for key, raw in data.items():
        values[key] = _coerce(key, raw, str(path), REPO_ROOT)
        given_by[key] = str(path)
    for name, raw in env.items():
        if name.startswith("AIBATCH_HDFS_"):
            key = name[len("AIBATCH_HDFS_") :].lower()
            values[key] = _coerce(key, raw, f"environment variable {name}", Path.cwd())
            given_by[key] = f"environment variable {name}"
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


def hdfs_user(env: Mapping[str, str] | None = None) -> str:
    """The user jobs run as: HADOOP_USER_NAME if set (Hadoop honours it in
    simple auth), else the login name."""
    env = os.environ if env is None else env
    return env.get("HADOOP_USER_NAME") or getpass.getuser()
