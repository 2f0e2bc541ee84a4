"""The generic pyfunc model kind (issue 19 §3): any MLflow pyfunc model that
is not one of the project's own kinds (a team's PyTorch module, a
scikit-learn pipeline, anything `mlflow.pyfunc.load_model` loads), scored
by its own predict over the engine's pandas batches, as
`mlflow.pyfunc.spark_udf` does, with score's columns taken from the model's
signature. Plain Python over batches: the Spark UDF (udfs.spark.pyfunc_udf)
and the mrjob mapper both call predict_frame.

The signature rule (docs/models.md, "The generic pyfunc kind"):

- input: no input schema, or one column of type string (any name); the
  record's text goes to the model under that name (`text` without a schema);
- outputs: each named output column becomes a score column of that name
  and type (SPARK_TYPES: string, boolean, integer, long, float, double, an
  Array of one of them, or a Map from strings to one of them); a single
  unnamed output (a column without a name, or a one-dimensional tensor)
  becomes the column `predicted`;
- refused, naming the model and what to change: no signature, no output
  schema, another type (binary, datetime, Object, Any), a tensor of more
  dimensions, several unnamed outputs, a name that is not a plain
  identifier, or a name score writes already (the records' and lineage
  columns).

Rows whose text is null or empty are not given to the model; their
outputs are null, as for the other kinds. NaN outputs are written as null.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .lineage import LINEAGE_COLUMNS
from .models import ModelError
from .records import RECORD_FIELDS

log = logging.getLogger(__name__)

# mlflow DataType name -> the Spark SQL type score writes
SPARK_TYPES = {
    "string": "string",
    "boolean": "boolean",
    "integer": "int",
    "long": "bigint",
    "float": "float",
    "double": "double",
}
UNNAMED_OUTPUT = "predicted"  # where a single unnamed output goes
DEFAULT_INPUT = "text"  # the input column of a model without an input schema
RESERVED = frozenset((*RECORD_FIELDS, *LINEAGE_COLUMNS, "_score"))
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# numpy dtype kind (+ item size) of a one-dimensional tensor output -> Spark SQL type
_TENSOR_TYPES = {("f", 4): "float", ("f", 8): "double", ("i", 4): "int", ("i", 8): "bigint", ("b", 1): "boolean"}


class PyfuncError(RuntimeError):
    """A pyfunc model's predict failed on a batch, or returned something its
    signature does not declare; the message names the model and the batch."""


@dataclasses.dataclass(frozen=True)
class PyfuncSettings:
    """Plain values an executor needs to score with a pyfunc model (picklable)."""

    model_dir: str  # the MLflow model directory (MLmodel at its root)
    model_ref: str  # name@N (or the URI): for error messages
    input_column: str
    outputs: tuple[tuple[str, str], ...]  # (column, Spark SQL type), the signature's order


def _spark_type(spec: Any, where: str) -> str:
    from mlflow.types.schema import Array, DataType, Map

    if isinstance(spec, DataType) and spec.name in SPARK_TYPES:
        return SPARK_TYPES[spec.name]
    if isinstance(spec, Array) and isinstance(spec.dtype, DataType) and spec.dtype.name in SPARK_TYPES:
        return f"array<{SPARK_TYPES[spec.dtype.name]}>"
    if isinstance(spec, Map) and isinstance(spec.value_type, DataType) and spec.value_type.name in SPARK_TYPES:
        return f"map<string, {SPARK_TYPES[spec.value_type.name]}>"
    raise ModelError(
        f"{where} has type {spec!r}, which score cannot write: use {', '.join(SPARK_TYPES)}, "
        "an Array or a Map (string keys) of one of them"
    )


def _tensor_type(spec: Any, where: str) -> str:
    dtype = np.dtype(spec.type)
    if len(spec.shape) != 1:
        raise ModelError(f"{where} is a tensor of shape {spec.shape}: score writes one value per row (shape (-1,))")
    if dtype.kind in "UO":
        return "string"
    found = _TENSOR_TYPES.get((dtype.kind, dtype.itemsize))
    if found is None:
        raise ModelError(f"{where} is a tensor of {dtype}, which score cannot write")
    return found


def signature_columns(signature: Any, ref: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(input column, ((output column, Spark SQL type), ...)) of a pyfunc
    model's signature by the module's rule; ModelError naming ref and what
    to change where the signature cannot be written."""
    if signature is None or signature.outputs is None:
        raise ModelError(
            f"pyfunc model {ref} has no output signature: log it with signature=infer_signature(texts, outputs) "
            "so score knows its columns"
        )
    inputs = signature.inputs
    input_column = DEFAULT_INPUT
    if inputs is not None:
        specs = list(inputs.inputs)
        if inputs.is_tensor_spec() or len(specs) != 1 or str(getattr(specs[0].type, "name", "")) != "string":
            raise ModelError(
                f"pyfunc model {ref}: its input signature is {inputs}; score gives a model one string "
                "column (the record's text)"
            )
        input_column = specs[0].name or DEFAULT_INPUT
    outputs = list(signature.outputs.inputs)
    columns: list[tuple[str, str]] = []
    if signature.outputs.is_tensor_spec():
        if len(outputs) != 1 or outputs[0].name:
            raise ModelError(
                f"pyfunc model {ref}: its outputs are tensors {signature.outputs}; score writes "
                "named columns or one unnamed output"
            )
        columns.append((UNNAMED_OUTPUT, _tensor_type(outputs[0], f"pyfunc model {ref}: its output")))
    else:
        unnamed = [spec for spec in outputs if not spec.name]
        if unnamed and len(outputs) > 1:
            raise ModelError(f"pyfunc model {ref}: {len(unnamed)} of its {len(outputs)} outputs have no name")
        for spec in outputs:
            name = spec.name or UNNAMED_OUTPUT
            where = f"pyfunc model {ref}: output {name!r}"
            if not _IDENTIFIER.match(name):
                raise ModelError(f"{where}: a column name must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
            if name in RESERVED:
                raise ModelError(f"{where}: score writes a column of that name already ({', '.join(sorted(RESERVED))})")
            columns.append((name, _spark_type(spec.type, where)))
    return input_column, tuple(columns)


# ----- on the executors and the mrjob tasks -------------------------------------


def _log_warning(message: Any, category: Any, filename: str, lineno: int, *_: Any, **__: Any) -> None:
    log.info("%s:%d: %s: %s", filename, lineno, getattr(category, "__name__", category), message)


@contextlib.contextmanager
def _warnings_to_log() -> Iterator[None]:
    """Warnings raised meanwhile go to this module's log (INFO), not to
    stderr: mlflow resets the warning filters inside load_model (its "Add
    type hints" notice), and under mrjob's inline runner sys.stderr takes
    bytes, so a warning printed there fails the task."""
    with warnings.catch_warnings():
        warnings.showwarning = _log_warning
        yield


@functools.lru_cache(maxsize=2)
def load_model(model_dir: str) -> Any:
    """The pyfunc model in model_dir (a local MLflow model directory), loaded
    once per Python worker."""
    import mlflow.pyfunc

    for noisy in ("mlflow", "mlflow.pyfunc", "mlflow.models"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with _warnings_to_log():
        return mlflow.pyfunc.load_model(model_dir)


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value))


def _convert(value: Any, sql_type: str) -> Any:
    """value as the plain Python value of sql_type (for Arrow and JSON alike)."""
    if _is_null(value):
        return None
    if sql_type.startswith("array<"):
        inner = sql_type[len("array<") : -1]
        return [_convert(v, inner) for v in value]
    if sql_type.startswith("map<"):
        inner = sql_type[len("map<string, ") : -1]
        return {str(k): _convert(v, inner) for k, v in dict(value).items()}
    if sql_type == "string":
        return str(value)
    if sql_type == "boolean":
        return bool(value)
    if sql_type in ("int", "bigint"):
        return int(value)
    return float(value)


def _columns_of(result: Any, settings: PyfuncSettings, n: int, batch: str) -> dict[str, list]:
    """The declared output columns of what predict returned (a DataFrame, or
    for a single output a Series, an array or a list; a dict of columns)."""
    names = [name for name, _ in settings.outputs]
    if isinstance(result, dict):
        result = pd.DataFrame(result)
    if isinstance(result, pd.DataFrame):
        frame = result
        if len(names) == 1 and names[0] not in frame.columns and len(frame.columns) == 1:
            frame = frame.set_axis(names, axis=1)  # a single unnamed output
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise PyfuncError(
                f"pyfunc model {settings.model_ref} on {batch}: predict returned columns "
                f"{[str(c) for c in frame.columns]}, its signature declares {names} (missing {missing})"
            )
        found = {name: list(frame[name]) for name in names}
    elif len(names) == 1 and isinstance(result, pd.Series | np.ndarray | list | tuple):
        found = {names[0]: list(result)}
    else:
        raise PyfuncError(
            f"pyfunc model {settings.model_ref} on {batch}: predict returned a {type(result).__name__}, "
            f"its signature declares the columns {names}"
        )
    for name, values in found.items():
        if len(values) != n:
            raise PyfuncError(
                f"pyfunc model {settings.model_ref} on {batch}: predict returned {len(values)} values "
                f"of {name!r} for {n} rows"
            )
    return found


def predict_frame(ids: Sequence[Any], texts: Sequence[str | None], settings: PyfuncSettings) -> pd.DataFrame:
    """One row per text, in input order, with the signature's output columns
    (settings.outputs); rows without text get nulls. The model sees the
    texts as a DataFrame of one column (settings.input_column). A predict
    that raises, or returns other columns or another row count, is a
    PyfuncError naming the model and the batch (its first row id and size)."""
    present = [i for i, t in enumerate(texts) if isinstance(t, str) and t]
    out: dict[str, list] = {name: [None] * len(texts) for name, _ in settings.outputs}
    if present:
        batch = f"the batch of {len(texts)} rows from id {ids[0] if len(ids) else '?'}"
        model = load_model(settings.model_dir)
        frame = pd.DataFrame({settings.input_column: [texts[i] for i in present]})
        try:
            with _warnings_to_log():
                result = model.predict(frame)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise PyfuncError(
                f"pyfunc model {settings.model_ref} failed on {batch}: {type(exc).__name__}: {first}"
            ) from exc
        found = _columns_of(result, settings, len(present), batch)
        for name, sql_type in settings.outputs:
            column = out[name]
            for i, value in zip(present, found[name], strict=True):
                column[i] = _convert(value, sql_type)
    # object columns: the plain values as converted (an int column with nulls stays ints)
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in out.items()})
