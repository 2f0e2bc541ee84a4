"""mrjob's Hadoop runner, without a JVM for what Python does in a millisecond.

mrjob's `-r hadoop` runner sends every filesystem call to `hadoop fs`: a new
JVM (1 to 2 s of start-up, more on a busy machine) for each `-ls`, `-mkdir`,
`-put` and `-rm`, including those on `file:///` URIs, and one more for
`hadoop version`. A twin on Hadoop's LocalJobRunner (conf/mrjob.conf) keeps
its job files in a `file://` scratch dir, so a two-step job started nine such
JVMs before its first step (measured with `strace -f -e trace=execve` on
`tests/mapreduce/test_mr_runners.py::test_stats_tables[hadoop]`: 21 s of its
28 s before the first `hadoop jar`). Here:

- `file:///` URIs and local paths go to mrjob's own local filesystem (plain
  Python), before `hadoop fs`; `hdfs://` and every other scheme still go to
  `hadoop fs`, as before;
- the Hadoop version is read from the name of the `hadoop-common` jar of the
  `hadoop` command's distribution when it is there (else `hadoop version`, as before);
- an `hdfs://` input is checked through WebHDFS (jobs.commit, the address the
  jobs commit their outputs through) when that address is known, else with
  `hadoop fs -ls` as before.

What Hadoop itself does (`hadoop jar` per step, the tasks, the job's
outputs) is unchanged."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mrjob.fs.composite import CompositeFilesystem
from mrjob.fs.hadoop import HadoopFilesystem
from mrjob.fs.local import LocalFilesystem
from mrjob.hadoop import HadoopJobRunner

log = logging.getLogger(__name__)

GLOB = re.compile(r"[*?\[{]")


class LocalFirstFilesystem(CompositeFilesystem):
    """mrjob's local filesystem first (file:/// URIs and plain paths), then
    `hadoop fs` for the rest. `.hadoop` and `.local` as in mrjob's."""

    def __init__(self, hadoop_bin):
        super().__init__()
        self.add_fs("local", LocalFilesystem())
        self.add_fs("hadoop", HadoopFilesystem(hadoop_bin))


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


def webhdfs_exists(path: str) -> bool | None:
    """Whether an hdfs:// path (no glob) exists, by WebHDFS when its address
    is declared ($AIBATCH_WEBHDFS) or in $HADOOP_CONF_DIR; None when unknown
    or unreachable (the caller asks `hadoop fs`)."""
    from urllib.parse import urlsplit

    from jobs import commit

    if not path.startswith("hdfs://") or GLOB.search(path):
        return None
    if urlsplit(path).netloc not in commit._declared() and not os.environ.get("HADOOP_CONF_DIR"):
        return None
    try:
        return commit.filesystem(path).exists(path)
    except Exception as exc:  # unreachable, refused, a bad address: hadoop fs decides
        log.debug("WebHDFS check of %s failed (%s): asking hadoop fs", path, exc)
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

    def _check_input_path(self, path):
        if webhdfs_exists(path):
            return
        super()._check_input_path(path)
