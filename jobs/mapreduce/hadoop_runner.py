"""mrjob's Hadoop runner, without a JVM for what Python does in a millisecond.

mrjob's `-r hadoop` runner sends every filesystem call to `hadoop fs`: a new
JVM (1 to 2 s of start-up, more on a busy machine) for each `-ls`, `-mkdir`,
`-put` and `-rm`, including those on `file:///` URIs, and one more for
`hadoop version`. A twin on Hadoop's LocalJobRunner (conf/mrjob.conf) keeps
its job files in a `file://` scratch dir, so a two-step job started eleven
such JVMs before its first step and one after it (counted with
`strace -f -e trace=execve` on
`tests/mapreduce/test_mr_runners.py::test_stats_tables[hadoop]`: 21 s of its
28 s went by before the first `hadoop jar`; docs/mapreduce.md). Here:

- `file:///` URIs and local paths go to mrjob's own local filesystem (plain
  Python), before `hadoop fs`;
- `hdfs://` paths (no glob) go to the NameNode's WebHDFS REST API when its
  address is known (declared in $AIBATCH_WEBHDFS or in $HADOOP_CONF_DIR's
  hdfs-site.xml, as the jobs find it to commit their outputs: jobs.commit),
  so on YARN, where the job's scratch dir is on HDFS, its uploads (the code
  zip, the job script, the model archives) and the clean-up make no JVM
  either; an unreachable WebHDFS hands them back to `hadoop fs`; globs and
  every other scheme go to `hadoop fs`, as before;
- the Hadoop version is read from the name of the `hadoop-common` jar of the
  `hadoop` command's distribution when it is there (else `hadoop version`, as before);

What Hadoop itself does (`hadoop jar` per step, the tasks, the job's
outputs) is unchanged."""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path

from mrjob.cat import decompress
from mrjob.fs.base import Filesystem
from mrjob.fs.composite import CompositeFilesystem
from mrjob.fs.hadoop import HadoopFilesystem
from mrjob.fs.local import LocalFilesystem
from mrjob.hadoop import HadoopJobRunner

log = logging.getLogger(__name__)

GLOB = re.compile(r"[*?\[{]")
TIMEOUT_S = 120  # per WebHDFS request (connect and each read)


def webhdfs_known(path: str) -> bool:
    """An hdfs:// path without a glob whose NameNode's WebHDFS address is
    known (jobs.commit.known_webhdfs_url: declared, in $HADOOP_CONF_DIR, or
    the project's HDFS; never a guess)."""
    from jobs import commit

    if not path.startswith("hdfs://") or GLOB.search(path):
        return False
    try:
        return commit.known_webhdfs_url(path) is not None
    except commit.OutputError:  # no NameNode named and none configured
        return False


def _unreachable(exc: Exception) -> bool:
    import requests

    from jobs import commit

    return isinstance(exc, requests.exceptions.ConnectionError | commit.OutputError)


class WebHdfsFilesystem(Filesystem):
    """mrjob's filesystem calls on hdfs:// paths through WebHDFS (the `hdfs`
    package's client), for the paths webhdfs_known accepts."""

    def __init__(self):
        self._clients: dict[str, object] = {}

    def can_handle_path(self, path):
        return webhdfs_known(path)

    def _client(self, path: str):
        from hdfs import InsecureClient

        from jobs import commit

        url = commit.webhdfs_url(path)
        if url not in self._clients:
            self._clients[url] = InsecureClient(url, user=commit.hdfs_user(), timeout=TIMEOUT_S)
        return self._clients[url]

    @staticmethod
    def _path(path: str) -> str:
        from jobs import commit

        return commit.WebHdfsFileSystem.path(path)

    @staticmethod
    def _prefix(path: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(path)
        return f"{parts.scheme}://{parts.netloc}"

    def exists(self, path_glob):
        return self._client(path_glob).status(self._path(path_glob), strict=False) is not None

    def ls(self, path_glob):
        client, path = self._client(path_glob), self._path(path_glob)
        status = client.status(path, strict=False)
        if status is None:
            return
        if status["type"] == "FILE":
            yield path_glob
            return
        prefix = self._prefix(path_glob)
        for dirpath, _, files in client.walk(path):
            for name in files:
                yield prefix + posixpath.join(dirpath, name)

    def _cat_file(self, path):
        with self._client(path).read(self._path(path)) as reader:
            yield from decompress(reader, path)

    def du(self, path_glob):
        summary = self._client(path_glob).content(self._path(path_glob), strict=False)
        return int(summary["length"]) if summary else 0

    def mkdir(self, path):
        self._client(path).makedirs(self._path(path))

    def put(self, src, path):
        if path.endswith("/"):
            raise ValueError("put() destination may not be a directory")
        self._client(path).upload(self._path(path), src, permission="600" if owner_only(src) else None)

    def rm(self, path_glob):
        self._client(path_glob).delete(self._path(path_glob), recursive=True)

    def touchz(self, path):
        if self.du(path):
            raise OSError(f"Non-empty file {path!r} already exists!")
        self._client(path).write(self._path(path), data=b"", overwrite=True)


def owner_only(src: str) -> bool:
    """A local file no one but its owner may read (the enrich twin's API key
    file): its HDFS copy is made 0600 too, so YARN localises it privately."""
    return os.stat(src).st_mode & 0o077 == 0


class PrivateAwareHadoopFilesystem(HadoopFilesystem):
    """mrjob's `hadoop fs`, whose put creates an owner-only file's copy
    owner-only from the start (umask 077) instead of the cluster's umask."""

    def put(self, src, path):
        if path.endswith("/"):
            raise ValueError("put() destination may not be a directory")
        umask = ["-D", "fs.permissions.umask-mode=077"] if owner_only(src) else []
        self.invoke_hadoop(["fs", *umask, "-put", src, path])


class LocalFirstFilesystem(CompositeFilesystem):
    """mrjob's local filesystem first (file:/// URIs and plain paths), then
    WebHDFS (hdfs:// where its address is known; switched off for the run
    when it cannot be reached), then `hadoop fs` for the rest. `.hadoop`
    and `.local` as in mrjob's."""

    def __init__(self, hadoop_bin):
        super().__init__()
        self.add_fs("local", LocalFilesystem())
        self.add_fs("webhdfs", WebHdfsFilesystem(), disable_if=_unreachable)
        self.add_fs("hadoop", PrivateAwareHadoopFilesystem(hadoop_bin))


def jar_version(hadoop_bin: list[str] | None) -> str | None:
    """The version in share/hadoop/common/[lib/]hadoop-common-V.jar beside
    the hadoop command (bin/hadoop), or None."""
    if not hadoop_bin:
        return None
    home = Path(hadoop_bin[0]).resolve().parent.parent
    common = home / "share" / "hadoop" / "common"
    for jar in sorted([*common.glob("hadoop-common-*.jar"), *common.glob("lib/hadoop-common-*.jar")]):
        found = re.fullmatch(r"hadoop-common-(\d+(?:\.\d+)+)\.jar", jar.name)
        if found:
            return found[1]
    return None


class HadoopRunner(HadoopJobRunner):
    """`-r hadoop` for the twins (jobs.mapreduce.configured.ConfiguredJob)."""

    @property
    def fs(self):
        if self._fs is None:
            # [] means: no hadoop until set_hadoop_bin() (mrjob's own rule)
            self._fs = LocalFirstFilesystem(self._opts["hadoop_bin"] or None)
        return self._fs

    def get_hadoop_version(self):
        hadoop = self.fs.hadoop
        if not hadoop._hadoop_version:
            version = jar_version(hadoop.get_hadoop_bin())
            if version:
                hadoop._hadoop_version = version
                log.info("Using Hadoop version %s (hadoop-common jar)", version)
        return hadoop.get_hadoop_version()
