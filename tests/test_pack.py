"""infra.pack on a small virtual environment of its own: the archive is a
gzip-compressed tar that unpacks to the venv (the interpreter as a file, not
a link outside it), its unpacked size is recorded beside it, it is reused
while the lock files are unchanged, and packed again when its sizes are
missing; igzip, where installed, compresses the same tar stream that zlib
does without it, and its failure is named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib

import pytest

from infra import pack


@pytest.fixture(scope="module")
def small_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack-root")
    for name in pack.LOCK_FILES:
        (root / name).write_text("# nothing pinned\n")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    (site / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB that gzip shrinks
    return root, venv


def tar_stream(path) -> bytes:
    """The archive's decompressed bytes (the tar stream)."""
    with open(path, "rb") as fh:
        return zlib.decompress(fh.read(), wbits=31)


@pytest.mark.parametrize("igzip", ["igzip", None])
def test_pack_records_sizes_and_reuses(small_env, tmp_path, monkeypatch, igzip):
    root, venv = small_env
    if igzip is None:
        monkeypatch.setattr(pack, "IGZIP", "no-such-igzip")
    else:
        assert shutil.which(igzip), "scripts/setup.sh installs igzip (Debian's isal)"
    packer = pack.Packer(venv=venv, cache_dir=tmp_path / "cache", root=root)
    path, packed = packer.pack()
    assert packed and path.name.startswith("aibatch-env-") and path.name.endswith(".tar.gz")
    with open(path, "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"  # gzip
    sizes = json.loads(pack.sizes_path(path).read_text())
    assert sizes["archive_bytes"] == path.stat().st_size
    assert sizes["compressor"] == ("igzip -1" if igzip else "zlib level 1") == pack.compressor(path)
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
    # From the files packed; venv-pack writes its own bin/activate (1 kB more).
    assert abs(sizes["unpacked_bytes"] - sum(m.size for m in members)) < 16384
    assert pack.unpacked_bytes(path) == sizes["unpacked_bytes"]
    assert path.stat().st_size < sizes["unpacked_bytes"]  # compressed, not stored
    python = next(m for m in members if m.name == "bin/python3" or m.name.startswith("bin/python3."))
    assert python.isfile() or (python.issym() and not os.path.isabs(python.linkname)), python
    assert any(m.name.endswith("site-packages/big.bin") for m in members)

    again, packed_again = packer.pack()
    assert again == path and not packed_again

    pack.sizes_path(path).unlink()  # an archive whose sizes are lost is packed again
    with pytest.raises(pack.PackError, match="no sizes recorded beside"):
        pack.unpacked_bytes(path)
    third, packed_third = packer.pack()
    assert third == path and packed_third and pack.unpacked_bytes(path) == sizes["unpacked_bytes"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, pack.sizes_path(path).name]


def test_igzip_and_zlib_compress_the_same_tar(small_env, tmp_path, monkeypatch):
    root, venv = small_env
    by_igzip, _ = pack.Packer(venv=venv, cache_dir=tmp_path / "igzip", root=root).pack()
    monkeypatch.setattr(pack, "IGZIP", "no-such-igzip")
    by_zlib, _ = pack.Packer(venv=venv, cache_dir=tmp_path / "zlib", root=root).pack()
    assert (pack.compressor(by_igzip), pack.compressor(by_zlib)) == ("igzip -1", "zlib level 1")
    assert tar_stream(by_igzip) == tar_stream(by_zlib)


def test_a_failing_igzip_is_named_and_leaves_no_archive(small_env, tmp_path, monkeypatch):
    root, venv = small_env
    monkeypatch.setattr(pack, "IGZIP", "false")  # exits 1 at once, reading nothing
    packer = pack.Packer(venv=venv, cache_dir=tmp_path / "cache", root=root)
    with pytest.raises(pack.PackError, match=r"false -1 -c exited with 1 while packing aibatch-env-"):
        packer.pack()
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_file_that_cannot_be_read_stops_igzip_too(small_env, tmp_path, monkeypatch):
    """A failure while writing the tar stream ends igzip's input, so the pack
    fails at once instead of waiting on igzip, and leaves no archive."""
    root, venv = small_env
    packer = pack.Packer(venv=venv, cache_dir=tmp_path / "cache", root=root)
    real_open = tarfile.bltn_open  # what TarFile.add opens files with

    def failing_open(path, *args, **kwargs):
        if str(path).endswith("big.bin"):
            raise PermissionError(f"cannot read {path}")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(tarfile, "bltn_open", failing_open)
    with pytest.raises(PermissionError, match="big.bin"):
        packer.pack()
    assert list((tmp_path / "cache").iterdir()) == []


# Modules the tasks' code may import although the archive leaves them out:
# (module, the only file that imports it, why no task does).
DRIVER_ONLY = {("plotly", "jobs/report.py")}  # the run report, drawn by the driver on the submitting machine


def third_party_imports(root) -> dict[str, set[str]]:
    """Top-level modules imported anywhere (functions included) in the .py
    files under root's udfs/ and jobs/, each with the files importing it."""
    import ast

    found: dict[str, set[str]] = {}
    for path in [*sorted((root / "udfs").rglob("*.py")), *sorted((root / "jobs").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(root)))
    return found


def test_the_archive_keeps_every_package_the_tasks_import():
    """Executors and MapReduce tasks run udfs/ and jobs/ from the packed
    environment: no package they import may match a pattern the archive
    leaves out (the enrich dialects' openai and anthropic once did)."""
    import fnmatch
    import importlib.util
    from pathlib import Path

    root = Path(pack.__file__).resolve().parent.parent
    site = Path(sys.prefix) / pack.SITE
    imports = third_party_imports(root)
    assert {"torch", "openai", "anthropic", "pyspark", "mrjob"} <= set(imports)  # the scan sees them
    left_out = []
    for module, files in sorted(imports.items()):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.startswith(str(site)):
            continue  # the project's own code or the standard library
        rel = str(Path(spec.origin).relative_to(sys.prefix))
        if any(fnmatch.fnmatch(rel, pattern) for pattern in pack.EXCLUDE):
            if not all((module, f) in DRIVER_ONLY for f in files):
                left_out.append(f"{module} ({rel}), imported by {sorted(files)}")
    assert not left_out, f"packages the tasks import but the archive leaves out: {left_out}"
