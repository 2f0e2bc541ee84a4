"""infra/bin/gzip, first on the PATH of the local clusters' daemons and of
./submit.sh's driver: Hadoop's `gzip -dc ARCHIVE | tar -x` decompresses
through igzip where installed, and the same bytes come out; every other
call, and every call without igzip, runs the system's gzip."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.daemons import GZIP_DIR, with_fast_gunzip

SHIM = GZIP_DIR / "gzip"
DATA = b"".join(b"line %d of the packed environment\n" % i for i in range(20_000))


def logged_path(tmp_path: Path, with_igzip: bool) -> str:
    """A PATH of the shim's dir, then a dir whose gzip (and igzip, if
    with_igzip) log their arguments to tmp_path/calls before running the
    real ones."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gzip", "igzip") if with_igzip else ("gzip",):
        real = shutil.which(tool, path=os.defpath + ":/usr/bin:/bin")
        assert real, f"{tool} is not installed (./scripts/setup.sh installs Debian's isal)"
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    # and the shell and tar, linked alone (their own dir may hold igzip)
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sh", "bash", "tar"):
        real = shutil.which(tool)
        assert real, tool
        (tools / tool).symlink_to(real)
    return os.pathsep.join([str(GZIP_DIR), str(bin_dir), str(tools)])


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


@pytest.mark.parametrize("with_igzip", [True, False])
def test_hadoop_untar_pipeline_decompresses_through_igzip_when_installed(tmp_path, with_igzip):
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "data.txt").write_bytes(DATA)
    (src / "run").write_text("#!/bin/sh\n")
    (src / "run").chmod(0o755)
    archive = tmp_path / "env.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(src), "."], check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    # what org.apache.hadoop.fs.FileUtil.unTarUsingTar runs for a .tar.gz
    command = f"gzip -dc '{archive}' | (cd '{dest}' && tar -x )"
    env = {"PATH": logged_path(tmp_path, with_igzip)}
    subprocess.run(["bash", "-c", command], env=env, check=True)
    assert (dest / "lib" / "data.txt").read_bytes() == DATA
    assert os.access(dest / "run", os.X_OK)
    assert calls(tmp_path) == ([f"igzip -dc {archive}"] if with_igzip else [f"gzip -dc {archive}"])


def test_compression_and_other_flags_run_the_system_gzip(tmp_path):
    env = {"PATH": logged_path(tmp_path, True)}
    packed = subprocess.run([str(SHIM), "-c"], input=DATA, env=env, capture_output=True, check=True).stdout
    assert gzip.decompress(packed) == DATA
    out = subprocess.run([str(SHIM), "-dcv"], input=packed, env=env, capture_output=True, check=True).stdout
    assert out == DATA
    out = subprocess.run(
        [str(SHIM), "--decompress", "--stdout"], input=packed, env=env, capture_output=True, check=True
    )
    assert out.stdout == DATA
    assert calls(tmp_path) == ["gzip -c", "gzip -dcv", "igzip --decompress --stdout"]


def test_without_any_other_gzip_it_says_so(tmp_path):
    proc = subprocess.run([str(SHIM), "-dc"], input=b"", env={"PATH": str(GZIP_DIR)}, capture_output=True)
    assert proc.returncode == 127
    assert f"gzip: no gzip on PATH besides {GZIP_DIR}/gzip" in proc.stderr.decode()


def test_daemons_get_the_shim_first_once():
    env = with_fast_gunzip({"PATH": f"/usr/bin:{GZIP_DIR}:/bin", "X": "1"})
    assert env == {"PATH": f"{GZIP_DIR}:/usr/bin:/bin", "X": "1"}
    assert with_fast_gunzip(env) == env
