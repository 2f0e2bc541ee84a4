"""infra/java's NioLocalFs, the local YARN NodeManager's local file system:
it sets permissions without starting a process, where Hadoop's own (without
its native library) starts a chmod per file. Run here with no chmod on PATH,
so that only a process-free setPermission can succeed."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from infra.hdfs import check_java
from infra.settings import DEFAULT_HADOOP_HOME
from infra.yarn import NIO_LOCAL_FS, hadoop_jars, nio_local_fs_classes

JARS = hadoop_jars(DEFAULT_HADOOP_HOME)


@pytest.fixture(scope="module")
def set_mode(tmp_path_factory):
    """set_mode(impl, mode, *paths): Hadoop's FileContext.setPermission with
    impl as fs.AbstractFileSystem.file.impl ("-": Hadoop's LocalFs)."""
    java = check_java()
    classes = nio_local_fs_classes(DEFAULT_HADOOP_HOME, java)
    assert classes is not None, "javac could not compile infra/java (see the warning above)"

    def run(impl: str, mode: str, *paths) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.realpath(java), "-XX:TieredStopAtLevel=1", "-cp", f"{classes}:{JARS}/*"]
            + [NIO_LOCAL_FS, impl, mode, *map(str, paths)],
            env={"PATH": "/nonexistent"},  # no chmod to start
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sets_file_and_directory_modes_without_a_process(set_mode, tmp_path):
    f, d = tmp_path / "f", tmp_path / "d"
    f.write_text("x")
    d.mkdir()
    os.chmod(f, 0o600)
    os.chmod(d, 0o700)
    proc = set_mode(NIO_LOCAL_FS, "555", f)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = set_mode(NIO_LOCAL_FS, "755", d)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (mode_of(f), mode_of(d)) == (0o555, 0o755)
    proc = set_mode(NIO_LOCAL_FS, "500", f)
    assert proc.returncode == 0 and mode_of(f) == 0o500, proc.stderr[-2000:]


def test_hadoop_local_fs_needs_a_chmod_process(set_mode, tmp_path):
    """What the NodeManager did before, per localised file."""
    f = tmp_path / "f"
    f.write_text("x")
    os.chmod(f, 0o600)
    proc = set_mode("-", "555", f)
    assert proc.returncode != 0 and 'Cannot run program "chmod"' in proc.stderr, proc.stderr[-2000:]
    assert mode_of(f) == 0o600


def test_sticky_bit_falls_back_to_hadoop(set_mode, tmp_path):
    """java.nio cannot set the sticky bit: Hadoop's own path does."""
    d = tmp_path / "d"
    d.mkdir()
    proc = set_mode(NIO_LOCAL_FS, "1777", d)
    assert proc.returncode != 0 and 'Cannot run program "chmod"' in proc.stderr, proc.stderr[-2000:]


def test_classes_are_compiled_once(tmp_path):
    java = check_java()
    first = nio_local_fs_classes(DEFAULT_HADOOP_HOME, java)
    assert first is not None and (first / "aibatch" / "hadoop" / "NioLocalFs.class").exists()
    assert nio_local_fs_classes(DEFAULT_HADOOP_HOME, java) == first
    assert not list(first.parent.glob("*.tmp-*"))
