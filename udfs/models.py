"""Trained heads in MLflow: runs, registered model versions, and model URIs.

Train logs one MLflow run (parameters, metrics, the confusion matrix as an
artifact) and registers its model as a new version of a registered model.
The model is an MLflow pyfunc (udfs/mlflow_pyfunc.py) whose artifact
`head` is a directory holding head.safetensors and meta.json (labels,
encoder name and weights version, the SHA-256 of the head's weights, checked
on every load).

Jobs name a model by an MLflow model URI: `models:/name/3`,
`models:/name@champion`, `models:/name/latest`, `runs:/<run id>/model`, or
a local model directory. The project's older `name@N` refs mean
`models:/name/N` (and `name@latest` `models:/name/latest`).

Where the tracking store lives: $MLFLOW_TRACKING_URI, else the config's
mlflow.tracking_uri, else an embedded store that needs no server: SQLite
at <home>/<registry_dir>/mlflow.db with artifacts under
<home>/<registry_dir>/artifacts.

Any other MLflow pyfunc model (one `mlflow.pyfunc.log_model` logged, not
train or register) is the generic `pyfunc` kind (udfs/pyfunc_kind.py):
score runs its own predict, its columns from its signature.

The drivers resolve a URI and download the head's files here; executors
and mrjob tasks receive only those files (or the arrays), never MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WEIGHTS_FILE = "head.safetensors"
META_FILE = "meta.json"
HEAD_ARTIFACT = "head"  # the pyfunc artifact holding the head's directory
TRANSFORMER_ARTIFACT = "transformer"  # the pyfunc artifact of the classifier and embedder kinds
KIND_META_FILE = "aibatch.json"  # their meta (kind, labels, weights version), beside the model's own files
KIND_METADATA_KEY = "aibatch_kind"  # the kind, in the MLmodel file's metadata too
HEAD_KIND = "head"
TRANSFORMER_KINDS = ("classifier", "embedder")
PYFUNC_KIND = "pyfunc"  # any other MLflow pyfunc model (udfs/pyfunc_kind.py)
PYFUNC_ARTIFACT = "pyfunc"  # where download_to keeps such a model's files
KINDS = (HEAD_KIND, *TRANSFORMER_KINDS, PYFUNC_KIND)
MODEL_PATH = "model"  # the model's path inside its run
EXPERIMENT = "aibatch"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_OLD_REF = re.compile(r"^([a-z][a-z0-9_-]*)@([0-9]+|latest)$")


class ModelError(LookupError):
    """A model URI that names no model, a damaged model, or a tracking
    store that cannot be reached; the message says which and what is there."""


def model_ref(name: str, version: int | None) -> str:
    """name@N for a registered version, the bare name for a run's or a dir's model."""
    return f"{name}@{version}" if version is not None else name


@dataclasses.dataclass(frozen=True)
class HeadVersion:
    """A trained head: its arrays and meta, and where it came from."""

    name: str
    version: int | None  # the registered version (None: a run's or a dir's model)
    arrays: Mapping[str, np.ndarray]
    meta: Mapping
    uri: str = ""  # the model URI it was loaded by
    run_id: str = ""  # the MLflow run that trained it

    @property
    def ref(self) -> str:
        return model_ref(self.name, self.version)

    @property
    def weights_sha256(self) -> str:
        return self.meta["weights_sha256"]

    @property
    def labels(self) -> list[str]:
        """The head's classes in its output order (stored at training)."""
        labels = self.meta.get("labels")
        if not labels:
            raise ModelError(f"{self.ref}: no labels recorded with the head ({META_FILE} 'labels')")
        return list(labels)


@dataclasses.dataclass(frozen=True)
class TransformerVersion:
    """A model of the classifier or embedder kind: a Hugging Face model
    directory (its files in model_dir, beside aibatch.json) and where it
    came from."""

    name: str
    version: int | None
    kind: str  # classifier | embedder
    model_dir: Path
    meta: Mapping
    uri: str = ""
    run_id: str = ""

    @property
    def ref(self) -> str:
        return model_ref(self.name, self.version)

    @property
    def weights_version(self) -> str:
        return str(self.meta["weights_version"])

    @property
    def labels(self) -> list[str]:
        """The classifier's classes in its output order (config.json's id2label); none for an embedder."""
        return list(self.meta.get("labels") or [])

    @property
    def normalize(self) -> bool | None:
        value = self.meta.get("normalize")
        return None if value is None else bool(value)


def transformer_meta(model_dir: Path, kind: str, normalize: bool | None = None) -> dict:
    """What registering model_dir as kind records (aibatch.json): the kind,
    the source's name and weights version, the classifier's labels (from
    config.json's id2label, in id order) or the embedder's normalisation
    (normalize, else the directory's own Normalize module). ModelError
    naming the directory where it is not a model of that kind."""
    from . import model as M

    if kind not in TRANSFORMER_KINDS:
        raise ModelError(f"model kind must be one of {TRANSFORMER_KINDS}, got {kind!r}")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{model_dir}: no config.json: not a Hugging Face model directory")
    if not (model_dir / "model.safetensors").is_file():
        raise ModelError(f"{model_dir}: no model.safetensors beside config.json")
    try:
        config = json.loads(config_file.read_text())
        shape = M.encoder_shape(model_dir)
    except ValueError as exc:
        raise ModelError(f"{model_dir}: {exc}") from None
    meta: dict[str, Any] = {"kind": kind, "source": shape.name, "weights_version": M.weights_version(str(model_dir))}
    if kind == "classifier":
        id2label = config.get("id2label") or {}
        try:
            labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (TypeError, ValueError):
            raise ModelError(f"{config_file}: id2label keys are not class ids: {id2label}") from None
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ModelError(f"{config_file}: a classifier needs 2 or more distinct labels in id2label, got {labels}")
        meta["labels"] = labels
    else:
        meta["normalize"] = shape.normalize if normalize is None else normalize
    return meta


def load_transformer_dir(
    d: Path, name: str = "", version: int | None = None, uri: str = "", run_id: str = ""
) -> TransformerVersion:
    """A classifier or embedder from its files (a download, or a copy
    shipped to a task), its weights checked against the version recorded
    when it was registered."""
    from . import model as M

    meta = json.loads((d / KIND_META_FILE).read_text())
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise ModelError(f"{uri or d}: a {meta.get('kind')} model without config.json + model.safetensors in {d}")
    found = M.weights_version(str(d.resolve()))
    if found != meta.get("weights_version"):
        raise ModelError(f"{uri or d}: weights version {found} != recorded {meta.get('weights_version')}")
    version = version if version is not None else meta.get("version")
    return TransformerVersion(
        name or meta.get("name") or d.name,
        version,
        str(meta["kind"]),
        d,
        meta,
        uri or meta.get("model_uri") or str(d),
        run_id or meta.get("run_id", ""),
    )


@dataclasses.dataclass(frozen=True)
class PyfuncVersion:
    """A model of the generic pyfunc kind: an MLflow model directory (its
    MLmodel at the root, with aibatch.json written beside it by download_to)
    and where it came from."""

    name: str
    version: int | None
    model_dir: Path
    meta: Mapping  # kind, loader module, input column, outputs, weights version
    uri: str = ""
    run_id: str = ""
    kind: str = PYFUNC_KIND

    @property
    def ref(self) -> str:
        return model_ref(self.name, self.version)

    @property
    def weights_version(self) -> str:
        """The first 12 hex digits of the SHA-256 over the model's files."""
        return str(self.meta["weights_version"])

    @property
    def loader(self) -> str:
        """What runs it: the pyfunc flavor's loader module (mlflow.pyfunc.model, mlflow.sklearn, ...)."""
        return str(self.meta.get("loader") or "mlflow.pyfunc")

    @property
    def input_column(self) -> str:
        return str(self.meta["input_column"])

    @property
    def outputs(self) -> tuple[tuple[str, str], ...]:
        return tuple((str(name), str(kind)) for name, kind in self.meta["outputs"])


def _mlmodel(model_dir: Path) -> Any:
    """The MLmodel of an MLflow model directory (mlflow.models.Model), or None."""
    if not (model_dir / "MLmodel").is_file():
        return None
    from mlflow.models import Model

    return Model.load(str(model_dir / "MLmodel"))


def _is_ours(flavors: Mapping, metadata: Mapping | None) -> bool:
    """Whether an MLmodel's flavors and metadata are those train or register
    write: the kind in the metadata (register), or one artifact alone, the
    directory artifacts/head (train) or artifacts/transformer; so a damaged
    model of ours is reported as such, not scored as someone else's."""
    if (metadata or {}).get(KIND_METADATA_KEY):
        return True
    artifacts = (flavors.get("python_function") or {}).get("artifacts") or {}
    return any(
        set(artifacts) == {name} and str((artifacts[name] or {}).get("path", "")) == f"artifacts/{name}"
        for name in (HEAD_ARTIFACT, TRANSFORMER_ARTIFACT)
    )


def dir_digest(d: Path, skip: tuple[str, ...] = (KIND_META_FILE,)) -> str:
    """The first 12 hex digits of the SHA-256 over every file in d (relative
    paths and contents, sorted; skip: names at d's top left out; so is
    __pycache__, which loading a model's code may write)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in d.rglob("*") if p.is_file()):
        rel = path.relative_to(d).as_posix()
        if rel in skip or "__pycache__" in path.relative_to(d).parts:
            continue
        digest.update(rel.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def pyfunc_meta(model_dir: Path, ref: str) -> dict:
    """What score records of a generic pyfunc model (aibatch.json): the kind,
    its loader module, the input column and output columns its signature
    gives (udfs.pyfunc_kind's rule), the digest of its files. ModelError
    naming ref where its signature cannot be written."""
    from .pyfunc_kind import signature_columns

    mlmodel = _mlmodel(model_dir)
    if mlmodel is None or "python_function" not in mlmodel.flavors:
        raise ModelError(f"{ref}: {model_dir} holds no MLflow pyfunc model (no MLmodel with a python_function flavor)")
    input_column, outputs = signature_columns(mlmodel.signature, ref)
    return {
        "kind": PYFUNC_KIND,
        "loader": mlmodel.flavors["python_function"].get("loader_module", ""),
        "input_column": input_column,
        "outputs": [list(o) for o in outputs],
        "weights_version": dir_digest(model_dir),
    }


def load_pyfunc_dir(
    d: Path, name: str = "", version: int | None = None, uri: str = "", run_id: str = ""
) -> PyfuncVersion:
    """A generic pyfunc model from its files (a download, or a copy shipped
    to a task), its files checked against the digest recorded by download_to."""
    meta = json.loads((d / KIND_META_FILE).read_text())
    found = dir_digest(d)
    if found != meta.get("weights_version"):
        raise ModelError(f"{uri or d}: files digest {found} != recorded {meta.get('weights_version')}")
    version = version if version is not None else meta.get("version")
    return PyfuncVersion(
        name or meta.get("name") or d.name,
        version,
        d,
        meta,
        uri or meta.get("model_uri") or str(d),
        run_id or meta.get("run_id", ""),
    )


LoadedModel = HeadVersion | TransformerVersion | PyfuncVersion


def weights_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalize_uri(ref: str) -> str:
    """An MLflow model URI for ref: `name@N` -> models:/name/N, `name@latest`
    -> models:/name/latest; a URI or a path unchanged."""
    m = _OLD_REF.match(ref)
    if m:
        return f"models:/{m.group(1)}/{m.group(2)}"
    return ref


# ----- the head's files -------------------------------------------------------


def write_head_dir(d: Path, arrays: Mapping[str, np.ndarray], meta: Mapping) -> dict:
    """head.safetensors and meta.json (with weights_sha256) in d; the meta written."""
    from safetensors.numpy import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(d / WEIGHTS_FILE))
    full = dict(meta, weights_sha256=weights_digest(d / WEIGHTS_FILE))
    (d / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def find_head_dir(model_dir: Path) -> Path:
    """The head's directory inside a downloaded model (or the dir itself
    where it holds the files); ModelError naming what is missing."""
    for d in (model_dir / "artifacts" / HEAD_ARTIFACT, model_dir):
        if (d / META_FILE).is_file() and (d / WEIGHTS_FILE).is_file():
            return d
    if not (model_dir / "MLmodel").is_file():
        raise ModelError(f"{model_dir} is not a model directory (no MLmodel, no {META_FILE} + {WEIGHTS_FILE})")
    raise ModelError(
        f"{model_dir}: an MLflow model without this project's head (artifacts/{HEAD_ARTIFACT}/{META_FILE})"
    )


def find_model_files(model_dir: Path) -> tuple[str, Path]:
    """(kind, the directory of its files) inside a downloaded model or a
    local dir: a head (head.safetensors + meta.json), a classifier or
    embedder (aibatch.json beside the Hugging Face files), or any other
    MLflow pyfunc model (the model directory itself)."""
    for d in (model_dir / "artifacts" / TRANSFORMER_ARTIFACT, model_dir):
        if (d / KIND_META_FILE).is_file():
            return str(json.loads((d / KIND_META_FILE).read_text()).get("kind")), d
    try:
        return HEAD_KIND, find_head_dir(model_dir)
    except ModelError:
        mlmodel = _mlmodel(model_dir)
        if mlmodel is None or _is_ours(mlmodel.flavors, mlmodel.metadata):
            raise  # not a model, or one of ours with its files missing
        if "python_function" not in mlmodel.flavors:
            raise ModelError(
                f"{model_dir}: an MLflow model without a python_function flavor "
                f"(flavors: {', '.join(sorted(mlmodel.flavors))}): score runs pyfunc models"
            ) from None
        return PYFUNC_KIND, model_dir


def load_head_dir(d: Path, name: str = "", version: int | None = None, uri: str = "", run_id: str = "") -> HeadVersion:
    """A head from its files (a download, or a copy shipped to a task), its
    weights checked against the SHA-256 recorded at training."""
    from safetensors.numpy import load_file

    meta = json.loads((d / META_FILE).read_text())
    name = name or meta.get("name") or d.name
    digest = weights_digest(d / WEIGHTS_FILE)
    if digest != meta.get("weights_sha256"):
        raise ModelError(f"{uri or d}: weights hash {digest[:12]} != recorded {str(meta.get('weights_sha256'))[:12]}")
    version = version if version is not None else meta.get("version")
    return HeadVersion(
        name, version, load_file(str(d / WEIGHTS_FILE)), meta, uri or str(d), run_id or meta.get("run_id", "")
    )


# ----- the tracking store -------------------------------------------------------


def tracking_uri(configured: str, store_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else configured (mlflow.tracking_uri), else the
    embedded SQLite store in store_dir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{store_dir.resolve() / 'mlflow.db'}"


def _quiet() -> None:
    # No progress bars (mrjob's inline runner has a bytes stderr), no
    # minutes of retries against a server that is down.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Store:
    """One tracking store (and its model registry), opened by URI."""

    def __init__(self, uri: str, store_dir: Path | None = None):
        _quiet()
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.store_dir = store_dir
        if uri.startswith("sqlite:///") and store_dir is not None:
            store_dir.mkdir(parents=True, exist_ok=True)
        # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into
        # os.environ: the first store opened would then win over every later
        # one in this process (tracking_uri() reads the variable first) and
        # in every process it starts. Keep the environment as it was.
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def check(self) -> None:
        """Reach the store once: ModelError in one line where it cannot be."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # connection refused, DNS, HTTP errors: all the same to the user
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"MLflow tracking store {self.uri} cannot be reached: {first}") from None

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///") and self.store_dir is not None:
            location = (self.store_dir / "artifacts").resolve().as_uri()
        return self.client.create_experiment(EXPERIMENT, artifact_location=location)

    # ----- what the registry holds --------------------------------------

    def known(self) -> str:
        try:
            models = self.client.search_registered_models()
        except Exception:
            return "unknown (the store cannot be listed)"
        parts = []
        for m in sorted(models, key=lambda m: m.name):
            versions = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{m.name}'"))
            aliases = sorted(getattr(m, "aliases", {}) or {})
            extra = f", aliases {', '.join(aliases)}" if aliases else ""
            parts.append(f"{m.name} (versions {', '.join(map(str, versions))}{extra})")
        return "; ".join(parts) or "no registered models (run the train job first)"

    def _unknown(self, uri: str, why: str = "") -> ModelError:
        return ModelError(f"unknown model {uri!r}{why} in MLflow store {self.uri}; registered: {self.known()}")

    def locate(self, uri: str) -> tuple[str, str, int | None, str]:
        """(download URI, name, version, run id) of a model URI; ModelError
        naming what the registry holds where it names no model."""
        from mlflow.exceptions import MlflowException

        if uri.startswith("models:/"):
            rest = uri.removeprefix("models:/")
            name, alias, version = rest, None, None
            if "@" in rest:
                name, alias = rest.split("@", 1)
            elif "/" in rest:
                name, version = rest.split("/", 1)
            try:
                if alias:
                    mv = self.client.get_model_version_by_alias(name, alias)
                elif version == "latest" or version is None:
                    versions = self.client.search_model_versions(f"name='{name}'")
                    if not versions:
                        raise self._unknown(uri)
                    mv = max(versions, key=lambda v: int(v.version))
                elif version.isdigit():
                    mv = self.client.get_model_version(name, version)
                else:
                    raise self._unknown(uri, " (a version is a number, 'latest' or @alias)")
            except MlflowException:
                raise self._unknown(uri) from None
            return f"models:/{name}/{mv.version}", name, int(mv.version), mv.run_id or ""
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").split("/", 1)[0]
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                raise ModelError(f"unknown run in {uri!r} in MLflow store {self.uri}") from None
            return uri, run.data.tags.get("aibatch.model_name", run_id), None, run_id
        raise ModelError(
            f"model {uri!r}: not a model URI (models:/name/N, models:/name@alias, runs:/ID/model) "
            "nor a local model directory"
        )

    def download(self, uri: str, dest: Path) -> tuple[Path, str, int | None, str]:
        """The model's files under dest: (the dir of its files: the head's,
        or the classifier's or embedder's; name, version, run id)."""
        import mlflow

        source, name, version, run_id = self.locate(uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(dest)))
        except Exception as exc:
            raise ModelError(
                f"model {uri!r}: its files cannot be downloaded: {str(exc).splitlines()[0][:300]}"
            ) from None
        return find_model_files(local)[1], name, version, run_id

    # ----- training: one run, one new version ------------------------------

    def log_trained(
        self,
        name: str,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        confusion: Mapping[str, Any],
    ) -> HeadVersion:
        """Log a run (params, metrics, confusion_matrix.json) whose model is
        the head as a pyfunc, and register it as the next version of name."""
        import mlflow

        from . import mlflow_pyfunc

        if not _NAME.match(name):
            raise ModelError(f"model name must match {_NAME.pattern}, got {name!r}")
        experiment = self.experiment_id()
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment) as run:
            head_dir = Path(tmp) / HEAD_ARTIFACT
            full = write_head_dir(head_dir, arrays, dict(meta, name=name, run_id=run.info.run_id))
            mlflow.set_tag("aibatch.model_name", name)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_params({"head_weights_sha256": full["weights_sha256"]})
            mlflow.log_metrics(dict(metrics))
            mlflow.log_dict(dict(confusion), "confusion_matrix.json")
            version = log_quiet_pyfunc(name, mlflow_pyfunc.HeadEncoderModel(), {HEAD_ARTIFACT: str(head_dir)})
        log.info(
            "registered %s version %d (run %s, weights %s)", name, version, run.info.run_id, full["weights_sha256"][:12]
        )
        return HeadVersion(
            name, version, dict(arrays), dict(full, version=version), f"models:/{name}/{version}", run.info.run_id
        )

    def log_pretrained(
        self, name: str, kind: str, model_dir: Path, normalize: bool | None = None
    ) -> TransformerVersion:
        """Register a Hugging Face model directory as kind (classifier or
        embedder): a run (parameters: kind, source, weights version, labels
        or normalisation) whose model is a pyfunc holding a copy of the
        directory's files with aibatch.json, the next version of name.
        ModelError naming the directory where it is not such a model."""
        import mlflow

        from . import mlflow_pyfunc

        if not _NAME.match(name):
            raise ModelError(f"model name must match {_NAME.pattern}, got {name!r}")
        model_dir = model_dir.expanduser().resolve()
        if not model_dir.is_dir():
            raise ModelError(f"{model_dir}: no such model directory")
        meta = transformer_meta(model_dir, kind, normalize)
        experiment = self.experiment_id()
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment) as run:
            files = Path(tmp) / TRANSFORMER_ARTIFACT
            shutil.copytree(model_dir, files, ignore=shutil.ignore_patterns(KIND_META_FILE, ".*"))
            full = dict(meta, name=name, run_id=run.info.run_id)
            (files / KIND_META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
            mlflow.set_tag("aibatch.model_name", name)
            mlflow.set_tag("aibatch.kind", kind)
            mlflow.log_params({"kind": kind, "model_dir": str(model_dir)[:500], "source": meta["source"]})
            mlflow.log_params({"weights_version": meta["weights_version"]})
            if "labels" in meta:
                mlflow.log_params({"labels": ",".join(meta["labels"])[:500], "classes": len(meta["labels"])})
            else:
                mlflow.log_params({"normalize": meta["normalize"]})
            version = log_quiet_pyfunc(
                name,
                mlflow_pyfunc.TransformerKindModel(),
                {TRANSFORMER_ARTIFACT: str(files)},
                metadata={KIND_METADATA_KEY: kind},
            )
        log.info("registered %s version %d as %s (run %s)", name, version, kind, run.info.run_id)
        uri = f"models:/{name}/{version}"
        return TransformerVersion(name, version, kind, model_dir, dict(full, version=version), uri, run.info.run_id)


def log_quiet_pyfunc(name: str, python_model: Any, artifacts: dict[str, str], **extra: Any) -> int:
    """Log python_model as the active run's pyfunc model and register it as
    the next version of name; returns that version. mlflow warns that the
    model class has no type hints (its signature is not inferred: score's
    output schema is ours) and that a Python object is pickled (our own
    class, by design): neither is for the user of train or register."""
    import mlflow

    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Add type hints", category=UserWarning)
            info = mlflow.pyfunc.log_model(
                name=MODEL_PATH,
                python_model=python_model,
                artifacts=artifacts,
                registered_model_name=name,
                pip_requirements=[],  # runs in this project's environment: nothing to infer
                **extra,
            )
    finally:
        pyfunc_log.setLevel(level)
    return int(info.registered_model_version)


def open_store(config: Any, home: Path) -> Store:
    """The store a pipeline config names (mlflow.tracking_uri, registry_dir)."""
    store_dir = config.registry_path(home)
    return Store(tracking_uri(config.mlflow.tracking_uri, store_dir), store_dir)


def is_local(ref: str) -> bool:
    """Whether ref names a local model directory (no MLflow store needed)."""
    uri = normalize_uri(ref)
    return ":/" not in uri and Path(uri).expanduser().is_dir()


def fetch(store: Store | None, ref: str, dest: Path) -> tuple[Path, str, int | None, str, str]:
    """The head's directory for ref (a model URI, `name@N`, or a local dir)
    under dest where downloaded: (head dir, name, version, run id, URI)."""
    uri = normalize_uri(ref)
    if is_local(uri):
        kind, d = find_model_files(Path(uri).expanduser().resolve())
        meta_file = d / (META_FILE if kind == HEAD_KIND else KIND_META_FILE)
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}  # (a pyfunc of someone else's)
        return d, meta.get("name", d.name), meta.get("version"), meta.get("run_id", ""), str(Path(uri).resolve())
    if store is None:
        raise ModelError(f"model {ref!r}: no MLflow store to look it up in")
    store.check()
    head_dir, name, version, run_id = store.download(uri, dest)
    if uri.startswith("models:/") and version is not None:
        # lineage names the version that scored, not an alias or "latest"
        uri = f"models:/{name}/{version}"
    return head_dir, name, version, run_id, uri


def load(store: Store | None, ref: str) -> HeadVersion:
    """The head that ref names, loaded (weights hash checked)."""
    with tempfile.TemporaryDirectory() as tmp:
        d, name, version, run_id, uri = fetch(store, ref, Path(tmp))
        if find_model_files(d)[0] != HEAD_KIND:
            raise ModelError(f"model {ref!r} is not an encoder + head model")
        return load_head_dir(d, name, version, uri, run_id)


def download_to(store: Store | None, ref: str, dest: Path) -> LoadedModel:
    """The model ref names, its files kept in dest (dest/head for a head,
    dest/transformer for a classifier or embedder, dest/pyfunc for another
    pyfunc model, its signature checked), loaded and checked: for the mrjob
    twin, which ships that directory to its tasks, and the Spark job, which
    ships it as an archive."""
    d, name, version, run_id, uri = fetch(store, ref, dest / "download")
    kind, d = find_model_files(d)
    if kind not in KINDS:
        raise ModelError(f"model {ref!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    target = dest / {HEAD_KIND: HEAD_ARTIFACT, PYFUNC_KIND: PYFUNC_ARTIFACT}.get(kind, TRANSFORMER_ARTIFACT)
    if d != target:
        shutil.copytree(d, target, dirs_exist_ok=True)
    # name, version and URI travel with the files: the task knows no MLflow
    meta_file = target / (META_FILE if kind == HEAD_KIND else KIND_META_FILE)
    if kind == PYFUNC_KIND:
        label = f"{name}@{version}" if version is not None else uri
        meta = pyfunc_meta(target, label)  # (recomputed: a local copy's aibatch.json is not trusted)
    else:
        meta = json.loads(meta_file.read_text())
    meta.update(name=name, version=version, run_id=run_id, model_uri=uri)
    meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if kind == HEAD_KIND:
        return load_head_dir(target, name, version, uri, run_id)
    if kind == PYFUNC_KIND:
        return load_pyfunc_dir(target, name, version, uri, run_id)
    return load_transformer_dir(target, name, version, uri, run_id)


def preflight(store: Store | None, ref: str) -> str:
    """What can be known of ref from its MLmodel file alone, without
    downloading its weights: it names a model (ModelError naming what the
    registry holds) and, where it is a generic pyfunc, its signature can be
    written (udfs.pyfunc_kind). Its kind where known (a local dir's, or
    pyfunc), else "". For the mrjob launcher, before Hadoop."""
    uri = normalize_uri(ref)
    if is_local(uri):
        kind, d = find_model_files(Path(uri).expanduser().resolve())
        if kind == PYFUNC_KIND:
            pyfunc_meta(d, str(d))
        return kind
    if store is None:
        raise ModelError(f"model {ref!r}: no MLflow store to look it up in")
    store.check()
    source, name, version, _ = store.locate(uri)
    from mlflow.models import get_model_info

    try:
        info = get_model_info(source)
    except Exception as exc:
        raise ModelError(f"model {ref!r}: its MLmodel cannot be read: {str(exc).splitlines()[0][:300]}") from None
    if "python_function" in info.flavors and not _is_ours(info.flavors, info.metadata):
        from .pyfunc_kind import signature_columns

        signature_columns(info.signature, f"{name}@{version}" if version is not None else uri)
        return PYFUNC_KIND
    return ""
