"""Which files of a local input path a job reads, and whether a compressed
one can be read to its end: the rules Hadoop's FileInputFormat and codecs
apply (and Spark's file sources), for the mrjob twins' inline and local
runners, which read local files themselves and otherwise would read hidden
files (Spark's .crc, _SUCCESS) and stop silently at a truncated .gz."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import zlib
from pathlib import Path


class UnreadableInputError(ValueError):
    """An input file that cannot be read to its end; the message names it."""


def is_hidden(name: str) -> bool:
    """Hadoop and Spark skip files and dirs whose name begins with . or _."""
    return name.startswith((".", "_"))


def visible_files(path: str) -> list[str]:
    """The files under a local path (the path itself if it is a file, even a
    hidden one: it was named), sorted, leaving out any file or dir below it
    whose name begins with . or _."""
    root = Path(path.removeprefix("file://"))
    if not root.is_dir():
        return [path]
    found: list[str] = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found.extend(os.path.join(parent, f) for f in sorted(files) if not is_hidden(f))
    return found


def _open_compressed(local: str) -> io.BufferedIOBase:
    return gzip.open(local, "rb") if local.endswith(".gz") else bz2.open(local, "rb")


def check_compressed(path: str) -> None:
    """Read a .gz or .bz2 file through (nothing kept); UnreadableInputError
    naming it when it is truncated or not of the format its name says.
    Other files pass unread."""
    local = path.removeprefix("file://")
    if local.endswith(".gz"):
        kind = "gzip"
    elif local.endswith(".bz2"):
        kind = "bzip2"
    else:
        return
    try:
        with _open_compressed(local) as stream:
            while stream.read(1 << 20):
                pass
    except EOFError:
        raise UnreadableInputError(f"{path}: truncated {kind} file (it ends before its end-of-stream marker)") from None
    except (OSError, ValueError, zlib.error) as exc:  # BadGzipFile, corrupt deflate data, bz2's "Invalid data stream"
        raise UnreadableInputError(f"{path}: not a readable {kind} file ({exc})") from None
