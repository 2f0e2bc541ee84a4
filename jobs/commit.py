"""Outputs committed, never destroyed first: the one place both engines
write their outputs through (Spark jobs via jobs.spark.common, the mrjob
twins via jobs.mapreduce.launch).

    with committed({"records": out, "rejects": rej}, overwrite=False, inputs=[inp]) as staging:
        ...write to staging["records"] and staging["rejects"]...

Before any work: an output that is an input, inside one, or holding one is
refused, and so is an existing output unless overwrite is given (it is then
replaced, never merged into). The body writes to hidden staging dirs beside
each output (`.NAME.staging-RUN`, which Spark and Hadoop skip when reading
the parent dir). Only when the body returns are the outputs put in place, one
rename each, after an existing output was renamed aside; if a later rename
fails, the ones done are rolled back and the previous outputs restored. If
the body fails, the staging dirs are removed and the previous outputs are
untouched; the exception carries a note saying so. Every committed output
holds a `_SUCCESS` marker. put_file adds one whole file to a committed
output afterwards (a job's `_report.html`), by a rename too. A driver that
writes a staging dir itself (the enrich twin splitting its results) streams
lines in and out with FileSystem.lines and FileSystem.open_write.

Local paths are renamed with os.rename. hdfs:// paths go through WebHDFS
(HdfsCLI): PySpark has no public API to Hadoop's FileSystem (only the
private JVM gateway, which STYLE.md rules out), pyarrow's HDFS needs libhdfs,
which nothing here ships, and a `hadoop fs -mv` per rename costs a JVM start
and a Hadoop install on the driver. A WebHDFS RENAME is one atomic NameNode
operation, like FileSystem.rename. The NameNode's HTTP address is found by
webhdfs_url()."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import posixpath
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
HADOOP_DEFAULT_HTTP_PORT = 9870  # dfs.namenode.http-address's default port in Hadoop 3


class OutputError(ValueError):
    """An output the run must not write (exists without overwrite, is or
    holds an input): a usage error, found before any work."""


class Unreachable(OutputError):
    """The NameNode an hdfs:// path names does not answer."""


class CommitError(RuntimeError):
    """The outputs could not be put in place; the previous ones were restored."""


class FileSystem(Protocol):
    def exists(self, path: str) -> bool: ...
    def rename(self, src: str, dst: str) -> None: ...
    def delete(self, path: str) -> None: ...
    def touch(self, path: str) -> None: ...
    def write(self, path: str, data: bytes) -> None: ...
    def lines(self, path: str) -> Iterator[bytes]: ...
    def open_write(self, path: str) -> contextlib.AbstractContextManager[BinaryIO]: ...


def _data_file(name: str) -> bool:
    """Not a marker (`_SUCCESS`) nor hidden: what Spark and Hadoop read of a dir."""
    return not name.startswith(("_", "."))


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (each ending in a newline) from byte chunks, holding one partial line at most."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if rest:
        yield rest + b"\n"


class LocalFileSystem:
    """Plain paths and file:// URLs."""

    @staticmethod
    def local(path: str) -> str:
        return urlsplit(path).path if path.startswith("file:") else path

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.local(path))

    def rename(self, src: str, dst: str) -> None:
        dst_local = self.local(dst)
        if os.path.lexists(dst_local):  # os.rename would replace an empty dir silently
            raise FileExistsError(f"rename target exists: {dst}")
        os.makedirs(os.path.dirname(os.path.abspath(dst_local)), exist_ok=True)
        os.rename(self.local(src), dst_local)

    def delete(self, path: str) -> None:
        local = self.local(path)
        if os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local)
        elif os.path.lexists(local):
            os.remove(local)

    def touch(self, path: str) -> None:
        Path(self.local(path)).touch()

    def write(self, path: str, data: bytes) -> None:
        Path(self.local(path)).write_bytes(data)

    def lines(self, path: str) -> Iterator[bytes]:
        """Every line of a file, or of a dir's data files in name order, streamed."""
        local = Path(self.local(path))
        files = [local] if local.is_file() else sorted(f for f in local.iterdir() if _data_file(f.name))
        for f in files:
            with open(f, "rb") as fh:
                yield from _split_lines(fh)

    def open_write(self, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A new file (never over an existing one), its dir made if missing."""
        local = Path(self.local(path))
        local.parent.mkdir(parents=True, exist_ok=True)
        return open(local, "xb")


class WebHdfsFileSystem:
    """hdfs:// URLs through the NameNode's WebHDFS REST API."""

    def __init__(self, http_url: str, user: str):
        from hdfs import InsecureClient

        self.http_url = http_url
        self.client = InsecureClient(http_url, user=user)

    @staticmethod
    def path(url: str) -> str:
        return urlsplit(url).path or "/"

    def exists(self, path: str) -> bool:
        import requests

        try:
            return self.client.status(self.path(path), strict=False) is not None
        except requests.exceptions.ConnectionError:
            raise Unreachable(
                f"cannot reach HDFS for {path} (WebHDFS {self.http_url} does not answer): "
                "start it (./scripts/hdfs.sh start) or fix the address (HADOOP_CONF_DIR, conf/hdfs.toml)"
            ) from None

    def rename(self, src: str, dst: str) -> None:
        # WebHDFS moves src *into* dst when dst is a dir: refuse instead.
        if self.exists(dst):
            raise FileExistsError(f"rename target exists: {dst}")
        self.client.makedirs(posixpath.dirname(self.path(dst)))
        self.client.rename(self.path(src), self.path(dst))

    def delete(self, path: str) -> None:
        self.client.delete(self.path(path), recursive=True)

    def touch(self, path: str) -> None:
        self.client.write(self.path(path), data=b"", overwrite=True)

    def write(self, path: str, data: bytes) -> None:
        self.client.write(self.path(path), data=data, overwrite=True)

    def lines(self, path: str) -> Iterator[bytes]:
        """Every line of a file, or of a dir's data files in name order, streamed."""
        top = self.path(path)
        if self.client.status(top)["type"] == "FILE":
            files = [top]
        else:
            files = [posixpath.join(top, n) for n in sorted(self.client.list(top)) if _data_file(n)]
        for f in files:
            with self.client.read(f, chunk_size=1 << 16) as reader:
                yield from _split_lines(reader)

    def open_write(self, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A new file, streamed to the DataNodes as it is written (HdfsCLI's writer)."""
        return self.client.write(self.path(path), overwrite=False)


WEBHDFS_ENV = "AIBATCH_WEBHDFS"


def declared_webhdfs() -> dict[str, str]:
    """$AIBATCH_WEBHDFS: `hdfs://HOST:PORT=http://HOST:HTTP_PORT`, comma
    separated: NameNodes whose WebHDFS address is found no other way (tests'
    private HDFS sets it for its own subprocesses too)."""
    found = {}
    for item in filter(None, (p.strip() for p in os.environ.get(WEBHDFS_ENV, "").split(","))):
        hdfs_url, sep, http_url = item.partition("=")
        if not sep or not hdfs_url.startswith("hdfs://") or not http_url.startswith("http"):
            raise OutputError(f"{WEBHDFS_ENV}: expected hdfs://HOST:PORT=http://HOST:PORT pairs, got {item!r}")
        found[urlsplit(hdfs_url).netloc] = http_url.rstrip("/")
    return found


def _site_properties(conf_dir: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for name in ("core-site.xml", "hdfs-site.xml"):
        path = conf_dir / name
        if path.is_file():
            for prop in ET.parse(path).getroot().iter("property"):
                key, value = prop.findtext("name"), prop.findtext("value")
                if key and value is not None:
                    props[key.strip()] = value.strip()
    return props


def _project_namenode() -> tuple[str, str] | None:
    """(host:port, http://host:http_port) of the project's own HDFS
    (conf/hdfs.toml and its AIBATCH_HDFS_* overrides), if readable. Read
    here with tomllib rather than infra.settings, which is not in the code
    zip that submit.sh ships (and runs its checks from)."""
    import tomllib

    home = Path(os.environ.get("AIBATCH_HOME") or Path(__file__).resolve().parent.parent)
    try:
        conf = tomllib.loads((home / "conf" / "hdfs.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None

    def value(key: str, default: object) -> str:
        return str(os.environ.get(f"AIBATCH_HDFS_{key.upper()}") or conf.get(key, default))

    host = value("host", "127.0.0.1")
    return f"{host}:{value('namenode_port', 19820)}", f"http://{host}:{value('namenode_http_port', 19870)}"


def webhdfs_url(url: str) -> str:
    """The WebHDFS address of the NameNode an hdfs:// URL names: one
    declared in $AIBATCH_WEBHDFS, else dfs.namenode.http-address in
    $HADOOP_CONF_DIR (an empty host:port meaning its fs.defaultFS), else the
    project's HDFS (conf/hdfs.toml) when the port is its NameNode's, else
    Hadoop's default HTTP port 9870 on the same host."""
    return known_webhdfs_url(url, guess=True) or ""


def known_webhdfs_url(url: str, guess: bool = False) -> str | None:
    """webhdfs_url, or None where it would only guess the default port."""
    netloc = urlsplit(url).netloc
    declared = declared_webhdfs()
    if netloc in declared:
        return declared[netloc]
    conf_dir = os.environ.get("HADOOP_CONF_DIR")
    if conf_dir:
        props = _site_properties(Path(conf_dir))
        default_netloc = urlsplit(props.get("fs.defaultFS", "")).netloc
        own = {props.get("dfs.namenode.rpc-address", ""), default_netloc} - {""}
        if (not netloc or netloc in own) and props.get("dfs.namenode.http-address"):
            return "http://" + props["dfs.namenode.http-address"]
        netloc = netloc or default_netloc
    project = _project_namenode()
    if project and (not netloc or netloc == project[0]):
        return project[1]
    if not netloc:
        raise OutputError(f"{url} names no NameNode and no fs.defaultFS is known: write hdfs://HOST:PORT/...")
    return f"http://{netloc.rsplit(':', 1)[0]}:{HADOOP_DEFAULT_HTTP_PORT}" if guess else None


def hdfs_user() -> str:
    """The user Hadoop's simple auth sees: HADOOP_USER_NAME, else the login name."""
    return os.environ.get("HADOOP_USER_NAME") or getpass.getuser()


def filesystem(path: str) -> FileSystem:
    scheme = urlsplit(path).scheme
    if scheme == "hdfs":
        return WebHdfsFileSystem(webhdfs_url(path), hdfs_user())
    if scheme in ("", "file"):
        return LocalFileSystem()
    raise OutputError(f"{path}: outputs can be local paths or hdfs:// URLs, not {scheme}://")


def _key(path: str) -> tuple[str, str, str]:
    """(scheme, netloc, normalised path) to compare paths by."""
    parts = urlsplit(path)
    if parts.scheme in ("", "file"):
        local = parts.path if parts.scheme else path
        return "file", "", os.path.realpath(local)
    return parts.scheme, parts.netloc, posixpath.normpath(parts.path or "/")


def _within(inner: tuple[str, str, str], outer: tuple[str, str, str]) -> bool:
    if inner[:2] != outer[:2]:
        return False
    return inner[2] == outer[2] or inner[2].startswith(outer[2].rstrip("/") + "/")


def check_outputs(outputs: Mapping[str, str], inputs: Iterable[str] = (), overwrite: bool = False) -> None:
    """Refuse, naming the path and what to do: an output that is an input,
    inside one or holding one, two outputs in one place, and an existing
    output without overwrite. Raises OutputError."""
    keys = {name: _key(path) for name, path in outputs.items()}
    for name, path in outputs.items():
        for inp in inputs:
            if _within(keys[name], _key(inp)):
                raise OutputError(f"output {path} is the input {inp} or inside it: choose an output outside the input")
            if _within(_key(inp), keys[name]):
                raise OutputError(f"output {path} holds the input {inp}: choose an output that does not contain it")
        for other, other_path in outputs.items():
            if other != name and _within(keys[name], keys[other]):
                raise OutputError(f"outputs {path} and {other_path} overlap: give each its own dir")
    if not overwrite:
        for path in outputs.values():
            if filesystem(path).exists(path):
                raise OutputError(f"output {path} exists: pass --overwrite to replace it, or choose a new path")


def _sibling(path: str, tag: str, run: str) -> str:
    """A hidden path beside path: PARENT/.NAME.TAG-RUN."""
    stripped = path.rstrip("/")
    parent, name = stripped.rsplit("/", 1) if "/" in stripped else ("", stripped)
    return f"{parent}/.{name}.{tag}-{run}" if parent or stripped.startswith("/") else f".{name}.{tag}-{run}"


def scratch_path(path: str, tag: str) -> str:
    """A new hidden path beside path (PARENT/.NAME.TAG-RUN), which readers of PARENT skip:
    for a driver's intermediate results, removed by the driver."""
    return _sibling(path, tag, uuid.uuid4().hex[:12])


def _quietly(what: str, action, *args) -> None:
    try:
        action(*args)
    except Exception:
        log.warning("could not %s %s", what, args[0], exc_info=True)


def commit(outputs: Mapping[str, str], staging: Mapping[str, str], run: str) -> None:
    """Put each staging dir in place of its output; all or none."""
    done: list[tuple[str, str | None]] = []  # (output, where its previous version went)
    try:
        for name, final in outputs.items():
            fs = filesystem(final)
            if not fs.exists(f"{staging[name].rstrip('/')}/{SUCCESS}"):
                fs.touch(f"{staging[name].rstrip('/')}/{SUCCESS}")
            backup = None
            if fs.exists(final):
                backup = _sibling(final, "previous", run)
                fs.rename(final, backup)
            try:
                fs.rename(staging[name], final)
            except Exception:
                if backup:
                    fs.rename(backup, final)
                raise
            done.append((final, backup))
    except Exception as exc:
        for final, backup in reversed(done):
            fs = filesystem(final)
            fs.delete(final)
            if backup:
                fs.rename(backup, final)
        for path in staging.values():
            _quietly("remove staging dir", filesystem(path).delete, path)
        raise CommitError(
            f"could not put the outputs in place ({exc}); previous outputs restored: {', '.join(outputs.values())}"
        ) from exc
    for _, backup in done:
        if backup:
            _quietly("remove previous output", filesystem(backup).delete, backup)


@contextlib.contextmanager
def committed(
    outputs: Mapping[str, str], *, overwrite: bool = False, inputs: Iterable[str] = ()
) -> Iterator[dict[str, str]]:
    """Staging paths for outputs (same keys); they are committed together when
    the block returns, discarded when it raises (see the module docstring)."""
    inputs = list(inputs)
    check_outputs(outputs, inputs, overwrite)
    run = uuid.uuid4().hex[:12]
    staging = {name: _sibling(path, "staging", run) for name, path in outputs.items()}
    try:
        yield staging
    except BaseException as exc:
        for path in staging.values():
            _quietly("remove staging dir", filesystem(path).delete, path)
        exc.add_note(f"outputs not replaced: {_describe(outputs.values())}")
        raise
    try:
        if not overwrite:  # someone wrote one meanwhile: never merge into it
            check_outputs(outputs, inputs, overwrite)
    except OutputError:
        for path in staging.values():
            _quietly("remove staging dir", filesystem(path).delete, path)
        raise
    commit(outputs, staging, run)


def put_file(path: str, data: bytes) -> None:
    """A whole file into a committed output dir (the run's report): written
    to a hidden sibling first, then renamed into place, so a reader never
    sees half of it. Local paths and hdfs:// alike."""
    fs = filesystem(path)
    stripped = path.rstrip("/")
    tmp = _sibling(stripped, "writing", uuid.uuid4().hex[:12])
    fs.write(tmp, data)
    try:
        if fs.exists(stripped):
            fs.delete(stripped)
        fs.rename(tmp, stripped)
    except BaseException:
        _quietly("remove the partly written file", fs.delete, tmp)
        raise


def _describe(paths: Iterable[str]) -> str:
    """'previous output left intact: A; no previous output at B' (best effort)."""
    parts = []
    for path in paths:
        try:
            there = filesystem(path).exists(path)
        except Exception:
            parts.append(f"{path} untouched")
            continue
        parts.append(f"previous output left intact at {path}" if there else f"nothing written to {path}")
    return "; ".join(parts)
