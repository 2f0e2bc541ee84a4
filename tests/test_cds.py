"""The Spark driver's class-data sharing archive (infra/cds.py): setup built
one this JVM accepts, ./submit.sh's driver maps Spark's classes from it (and
leaves them alone when SPARK_SUBMIT_OPTS says otherwise), and a failed or
truncated build never becomes the archive."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra import cds

ROOT = Path(__file__).resolve().parent.parent
# spark-submit's JVM starts and runs the script's Python; no SparkSession needed.
SCRIPT = 'print("script ran")\n'


def test_setup_built_an_archive_this_jvm_accepts():
    assert cds.ARCHIVE.is_file(), "no var/cds/spark-driver.jsa: run ./scripts/setup.sh"
    assert cds.usable(cds.ARCHIVE)
    assert cds.java_options().startswith(f"-XX:SharedArchiveFile={cds.ARCHIVE} ")
    assert cds.java_options(ROOT / "var" / "cds" / "none.jsa") == ""


def _submit_class_log(tmp_path: Path, opts: str) -> str:
    script, log = tmp_path / "job.py", tmp_path / "classes.log"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SPARK_SUBMIT_OPTS"] = f"{opts} -Xlog:class+load=info:file={log}".strip()
    proc = subprocess.run(
        [str(ROOT / "submit.sh"), str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "script ran" in proc.stdout, proc.stderr[-3000:]
    return next(line for line in log.read_text().splitlines() if " org.apache.spark.deploy.SparkSubmit " in line)


def test_submit_maps_spark_classes_from_the_archive(tmp_path):
    assert cds.ARCHIVE.is_file()
    assert "source: shared objects file (top)" in _submit_class_log(tmp_path, "")
    # An -Xshare of your own in SPARK_SUBMIT_OPTS wins: no archive added.
    assert "shared objects file" not in _submit_class_log(tmp_path, "-Xshare:off")


def test_a_failed_warmup_leaves_no_archive(tmp_path):
    failing = tmp_path / "warmup.py"
    failing.write_text("raise SystemExit('warm-up broke')\n")
    archive = tmp_path / "cds" / "x.jsa"
    with pytest.raises(cds.CdsError, match="warm-up .*warmup.py failed"):
        cds.build(archive, warmup=failing)
    assert list(archive.parent.iterdir()) == []


def test_a_truncated_archive_is_not_usable(tmp_path):
    truncated = tmp_path / "t.jsa"
    with open(cds.ARCHIVE, "rb") as fh:
        truncated.write_bytes(fh.read(1_000_000))
    assert not cds.usable(truncated)
    # and the JVM would crash on it, not just skip it: why build() checks first
    proc = subprocess.run(
        ["java", f"-XX:SharedArchiveFile={truncated}", "-Xlog:cds=off", "-version"],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,  # its hs_err_pid*.log
    )
    assert proc.returncode != 0


def test_your_own_archive_or_xshare_wins(tmp_path):
    own = "-XX:TieredStopAtLevel=1 -Xshare:off"
    assert cds.with_archive(own) == own
    assert cds.with_archive("-XX:SharedArchiveFile=/x.jsa") == "-XX:SharedArchiveFile=/x.jsa"
    assert cds.with_archive("-Xmx1g") == f"-Xmx1g {cds.java_options()}"
    assert cds.with_archive("-Xmx1g", tmp_path / "none.jsa") == "-Xmx1g"
