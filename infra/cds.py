"""Class-data sharing for the Spark driver's JVM: every `./submit.sh` job (and
every SparkSession a Python process starts through spark-submit) spends
seconds of CPU loading and verifying the same few thousand Spark, Scala and
Hadoop classes from their jars. Java's own AppCDS (JDK 13+, JEP 350) writes
the classes one run loaded into an archive (`-XX:ArchiveClassesAtExit`) that
later JVMs map instead (`-XX:SharedArchiveFile`); nothing else changes.

    python -m infra cds [--force]      # scripts/setup.sh runs it

builds `var/cds/spark-driver.jsa` by running `infra/cds_warmup.py` (reads,
Arrow UDFs, a shuffle, a broadcast join, a cache, Parquet and JSON written
and read) under spark-submit, checks that a JVM started with the archive and
`-Xshare:on` accepts it, and only then moves it into place: a truncated
archive crashes the JVM that maps it (SIGBUS), so none is ever left there.
`./submit.sh` adds the archive to `SPARK_SUBMIT_OPTS` when it exists (and
`SPARK_SUBMIT_OPTS` names no archive of its own), with the JVM's CDS
messages off: an archive that no longer matches (another JDK build, other
Spark jars) is then skipped without a word, and the next setup builds it
again. Measured in docs/performance.md."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .settings import REPO_ROOT

ARCHIVE = REPO_ROOT / "var" / "cds" / "spark-driver.jsa"
WARMUP = Path(__file__).resolve().parent / "cds_warmup.py"
# Silence: an archive that does not match this JVM or these jars is skipped.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


class CdsError(RuntimeError):
    pass


def java_options(archive: Path = ARCHIVE) -> str:
    """The driver JVM options that map the archive; empty when there is none."""
    return f"-XX:SharedArchiveFile={archive} {QUIET}" if archive.is_file() else ""


def with_archive(opts: str, archive: Path = ARCHIVE) -> str:
    """SPARK_SUBMIT_OPTS with the archive's options added, unless opts already
    names an archive or an -Xshare option of its own (submit.sh's rule, in
    bash there: it runs before any Python)."""
    if any(own in opts for own in ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare")):
        return opts
    return f"{opts} {java_options(archive)}".strip()


def _spark_env(opts: str) -> dict[str, str]:
    import pyspark

    # Without the Hadoop and YARN conf dirs, which spark-class appends to the
    # class path: the archive then fits every later class path that has them.
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_SUBMIT_OPTS", "HADOOP_CONF_DIR", "YARN_CONF_DIR")}
    env.update(
        SPARK_HOME=os.path.dirname(pyspark.__file__),
        SPARK_SUBMIT_OPTS=opts,
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _spark_submit() -> str:
    return str(Path(sys.executable).parent / "spark-submit")


def usable(archive: Path) -> bool:
    """Whether spark-submit's JVM, with this Spark's class path, maps the archive
    (-Xshare:on makes a JVM that cannot use it fail instead of going on)."""
    if not archive.is_file():
        return False
    with tempfile.TemporaryDirectory(prefix="aibatch-cds-") as work:  # a JVM that crashes writes hs_err_pid*.log here
        proc = subprocess.run(
            [_spark_submit(), "--version"],
            env=_spark_env(f"-Xshare:on -XX:SharedArchiveFile={archive}"),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=work,
        )
    return proc.returncode == 0


def build(archive: Path = ARCHIVE, force: bool = False, warmup: Path = WARMUP) -> bool:
    """Build the archive unless a usable one is there (or force). True when built."""
    if not force and usable(archive):
        return False
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")  # the JVM writes it at exit
    try:
        with tempfile.TemporaryDirectory(prefix="aibatch-cds-") as work:
            proc = subprocess.run(
                [_spark_submit(), "--master", "local[2]", str(warmup), work],
                env=_spark_env(f"-XX:ArchiveClassesAtExit={tmp}"),
                capture_output=True,
                text=True,
                timeout=600,
                cwd=work,
            )
        if proc.returncode != 0:
            raise CdsError(
                f"the class-data sharing warm-up {warmup} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        if not tmp.is_file():
            raise CdsError(f"the JVM wrote no class-data sharing archive at {tmp}:\n{proc.stderr[-2000:]}")
        if not usable(tmp):
            raise CdsError(f"a JVM with -Xshare:on does not accept the archive the warm-up wrote ({tmp})")
        os.replace(tmp, archive)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def main(force: bool = False, out=print) -> int:
    """python -m infra cds [--force]: prints the archive's size and whether it was built."""
    started = time.monotonic()
    try:
        built = build(force=force)
    except (CdsError, subprocess.TimeoutExpired) as exc:
        out(f"class-data sharing archive not built: {exc}", file=sys.stderr)
        return 1
    size = ARCHIVE.stat().st_size / 1e6
    what = f"built in {time.monotonic() - started:.0f} s" if built else "up to date"
    out(f"class-data sharing archive {ARCHIVE}: {size:.0f} MB, {what}")
    return 0
