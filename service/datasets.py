"""A run's output as an agent may see it: its schema and its first few rows,
with secrets kept out. A dataset here is a directory a job wrote (Spark's
part files, Parquet or JSON Lines), local or on HDFS through WebHDFS.

Secrets: a column whose name says it holds one (api_key, secret, password,
authorization, credential) is dropped from a sample, and any text that holds
the value of a secret-looking environment variable (…KEY, …TOKEN, …SECRET,
…PASSWORD) or one of the service's API keys is masked. Outputs should hold
no secret in the first place; this is the belt to that pair of braces.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

SECRET_COLUMN = re.compile(r"(api_?key|secret|passw(or)?d|authori[sz]ation|credential|bearer)", re.IGNORECASE)
SECRET_ENV = re.compile(r"(KEY|KEYS|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$")
MASK = "[redacted]"
MAX_HDFS_FILE_BYTES = 256 << 20  # a Parquet part file is read whole from WebHDFS (its footer is at the end)


class DatasetError(ValueError):
    """A dataset that cannot be read (missing, empty, not Parquet or JSON Lines)."""


def secret_values(environ: Mapping[str, str], extra: Iterable[str] = ()) -> list[str]:
    """The values to mask: secret-looking environment variables' (each of a
    comma-separated list) and `extra`; longest first, so a key that holds
    another is masked whole. Values under 8 characters are left alone: they
    would mask ordinary words."""
    found = set(extra)
    for name, value in environ.items():
        if SECRET_ENV.search(name.upper()):
            found.update(v.strip() for v in value.split(","))
            found.update(v.partition(":")[2] for v in value.split(","))  # NAME:KEY items of the keys variable
    return sorted((v for v in found if len(v) >= 8), key=len, reverse=True)


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: _mask(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, secrets) for v in value]
    return value


def _part_files(path: str) -> list[tuple[str, str]]:
    """(name, location) of the dataset's data files, in name order; hidden
    files (_SUCCESS, .crc) left out."""
    if urlsplit(path).scheme == "hdfs":
        from jobs.commit import WebHdfsFileSystem, hdfs_user, webhdfs_url

        fs = WebHdfsFileSystem(webhdfs_url(path), hdfs_user())
        base = WebHdfsFileSystem.path(path)
        status = fs.client.status(base, strict=False)
        if status is None:
            raise DatasetError(f"{path} does not exist")
        names = [base.rsplit("/", 1)[-1]] if status["type"] == "FILE" else fs.client.list(base)
        located = [(n, base if status["type"] == "FILE" else f"{base.rstrip('/')}/{n}") for n in names]
    else:
        local = Path(urlsplit(path).path if path.startswith("file:") else path)
        if not local.exists():
            raise DatasetError(f"{path} does not exist")
        files = [local] if local.is_file() else sorted(p for p in local.iterdir() if p.is_file())
        located = [(p.name, str(p)) for p in files]
    return [(n, loc) for n, loc in sorted(located) if not n.startswith(("_", "."))]


def _open(path: str, location: str) -> Any:
    """A readable binary file for one part file."""
    if urlsplit(path).scheme == "hdfs":
        from jobs.commit import WebHdfsFileSystem, hdfs_user, webhdfs_url

        fs = WebHdfsFileSystem(webhdfs_url(path), hdfs_user())
        size = fs.client.status(location)["length"]
        if size > MAX_HDFS_FILE_BYTES:
            raise DatasetError(f"{location}: {size} bytes, more than this reader takes from WebHDFS")
        with fs.client.read(location) as reader:
            return io.BytesIO(reader.read())
    return open(location, "rb")


def _first_file(path: str) -> tuple[str, str, str]:
    """(format, name, location) of the dataset's first non-empty data file."""
    for name, location in _part_files(path):
        with _open(path, location) as fh:
            head = fh.read(4)
        if head == b"PAR1":
            return "parquet", name, location
        if head:
            return "jsonl", name, location
    raise DatasetError(f"{path} holds no data file")


def _jsonl_rows(path: str, location: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with _open(path, location) as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
                if len(rows) >= limit:
                    break
    return rows


def schema(path: str) -> dict[str, Any]:
    """The dataset's format and columns (name, Arrow type, nullable). JSON
    Lines has no stored schema: its columns are inferred from its first rows,
    as Spark would read them."""
    fmt, name, location = _first_file(path)
    if fmt == "parquet":
        with _open(path, location) as fh:
            arrow = pq.read_schema(fh)
    else:
        rows = _jsonl_rows(path, location, 1000)
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        arrow = pa_json.read_json(io.BytesIO(data)).schema
    columns = [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in arrow]
    return {"path": path, "format": fmt, "file": name, "columns": columns}


def sample(path: str, rows: int, secrets: list[str]) -> dict[str, Any]:
    """The first `rows` rows of the dataset's first data file, secret columns
    dropped and secret values masked."""
    fmt, name, location = _first_file(path)
    if fmt == "parquet":
        with _open(path, location) as fh:
            batches = pq.ParquetFile(fh).iter_batches(batch_size=rows)
            batch = next(batches, None)
            table = pa.Table.from_batches([batch]) if batch is not None else pa.table({})
            records = table.slice(0, rows).to_pylist()
    else:
        records = _jsonl_rows(path, location, rows)
    dropped = sorted({c for r in records for c in r if SECRET_COLUMN.search(c)})
    cleaned = [{k: _mask(_plain(v), secrets) for k, v in r.items() if k not in dropped} for r in records]
    return {"path": path, "format": fmt, "file": name, "rows": cleaned, "dropped_columns": dropped}


def _plain(value: Any) -> Any:
    """A value JSON can hold (Parquet gives dates, decimals, bytes)."""
    return json.loads(json.dumps(value, default=str))


def service_keys(keys_env: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The service's API keys (NAME:KEY items: the KEY) from its keys variable."""
    env = os.environ if environ is None else environ
    items = [k.strip() for k in env.get(keys_env, "").split(",") if k.strip()]
    return [item.partition(":")[2] or item for item in items] + items
