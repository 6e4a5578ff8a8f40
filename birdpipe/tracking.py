"""MLflow tracking: where runs go and how each stage's run is tagged.

The default backend is a SQLite file under the project's `data/` (MLflow 3 deprecates the
plain file store); artifacts go beside it. Every run carries the tags that tie it back to
the Dagster run, asset and partition that made it, and to the code (git commit).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from birdpipe.paths import PROJECT_ROOT
from birdpipe.schema import HttpUrl, NonNegativeInt, PositiveFloat, Section, flatten

DEFAULT_DB = PROJECT_ROOT / "data" / "mlflow.db"
MODEL_URI = re.compile(r"models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


class TrackingConfig(Section):
    #: Default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/data/mlflow.db.
    tracking_uri: str | None = None
    experiment: str = "birdpipe"
    #: The Dagster assets register `<registered_model>-<dataset folder name>` (the SED fold
    #: models) and `<blend_model>-<dataset folder name>` (the tuned blend, with BirdNET).
    registered_model: str = "birdpipe-sed"
    blend_model: str = "birdpipe-blend"
    model_alias: str = "candidate"
    #: Seconds a tracking server gets to answer the check at the start of a stage; an
    #: unreachable server then fails the stage at once, naming the URI and the reason.
    connect_timeout_s: PositiveFloat = 10.0
    #: MLflow's retries of a failed request (MLFLOW_HTTP_REQUEST_MAX_RETRIES; its default of 7
    #: with exponential backoff waits about 4 minutes on a server that went away).
    http_retries: NonNegativeInt = 3
    #: Seconds one MLflow request may take (MLFLOW_HTTP_REQUEST_TIMEOUT; MLflow's default is 120).
    http_timeout_s: PositiveFloat = 60.0
    #: The MLflow UI that asset metadata and printed links point at. Default: the tracking URI
    #: when it is a server (http/https), else `make ui`'s http://127.0.0.1:5000.
    ui_url: HttpUrl | None = None
    #: The Dagster UI each MLflow run links back to (tags and description). Default:
    #: $BIRDPIPE_DAGSTER_URL, else `make ui`'s http://127.0.0.1:3000.
    dagster_url: HttpUrl | None = None


#: MLflow 3 opens an experiment on the view of its kind; this one is the training runs' view
#: (the UI's "custom_model_development"), not the GenAI traces overview it infers for new ones.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"


def ui_url(cfg: TrackingConfig) -> str:
    """The MLflow UI's base URL (see `TrackingConfig.ui_url`)."""
    uri = tracking_uri(cfg)
    server = uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return (cfg.ui_url or server).rstrip("/")


def dagster_url(cfg: TrackingConfig) -> str:
    """The Dagster UI's base URL (see `TrackingConfig.dagster_url`)."""
    return (cfg.dagster_url or os.environ.get("BIRDPIPE_DAGSTER_URL") or "http://127.0.0.1:3000").rstrip("/")


#: MLflow 3's UI shows the GenAI side (traces) unless the page asks for the training side; its
#: own default comes from the browser's last choice, so every link asks.
TRAINING_VIEW = "?workflowType=machine_learning"


def run_url(cfg: TrackingConfig, run_id: str, experiment_id: str) -> str:
    """An MLflow run's page, in the training view."""
    return f"{ui_url(cfg)}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def model_version_url(cfg: TrackingConfig, name: str, version: str) -> str:
    """A registered model version's page, in the training view."""
    return f"{ui_url(cfg)}/#/models/{quote(name)}/versions/{version}{TRAINING_VIEW}"


def dagster_links(cfg: TrackingConfig, tags: Mapping[str, str]) -> dict[str, str]:
    """Tags and description (`mlflow.note.content`, shown on the run page) linking back to the
    Dagster run and asset named by `tags` (`dagster.run_id`, `dagster.asset_key`); none without them."""
    run_id, key = tags.get("dagster.run_id"), tags.get("dagster.asset_key")
    if not run_id or not key:
        return {}
    run = f"{dagster_url(cfg)}/runs/{run_id}"
    asset = f"{dagster_url(cfg)}/assets/{quote(key)}"
    partition = f", partition {tags['dagster.partition']}" if tags.get("dagster.partition") else ""
    note = f"Made by Dagster run [{run_id[:8]}]({run}) materializing asset [{key}]({asset}){partition}."
    return {"dagster.run_url": run, "dagster.asset_url": asset, "mlflow.note.content": note}


def check_store(cfg: TrackingConfig) -> str:
    """Point MLflow's HTTP retry budget at the config's and, for a tracking server, ask its
    `/health` once with a short timeout; ConnectionError naming the URI and the reason when it
    does not answer (instead of MLflow retrying silently for minutes). Returns the URI."""
    import urllib.error
    import urllib.request

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(cfg.http_timeout_s))
    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return uri
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=cfg.connect_timeout_s) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        raise ConnectionError(f"MLflow tracking server {uri} answered /health with HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"MLflow tracking server {uri} is unreachable: {reason} (no answer within {cfg.connect_timeout_s:g} s; "
            "set [tracking] tracking_uri or $MLFLOW_TRACKING_URI)"
        ) from None
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite database (`mlflow.db` -> `mlartifacts/`); server stores choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow

    uri = check_store(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return mlflow.create_experiment(cfg.experiment, artifact_location=artifact_root(uri), tags=EXPERIMENT_KIND)
    if not set(EXPERIMENT_KIND) <= set(experiment.tags):  # made before birdpipe set its kind
        for key, value in EXPERIMENT_KIND.items():
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@contextlib.contextmanager
def stage_run(
    cfg: TrackingConfig,
    name: str,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one pipeline stage, tagged with its lineage, the git commit and links
    back to Dagster; named `<dataset folder>/<name>` when the tags name the dataset.

    `run_id` reopens an existing run (a resumed training continues its own run).
    """
    import mlflow

    experiment_id = configure(cfg)
    tags = dict(tags or {})
    all_tags = {"birdpipe.stage": name, "mlflow.source.git.commit": git_commit(), **tags, **dagster_links(cfg, tags)}
    name = run_name(name, tags)
    if run_id is not None:
        with mlflow.start_run(run_id=run_id, nested=parent_run_id is not None) as run:
            mlflow.set_tags(all_tags)
            yield run
        return
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=name,
        tags=all_tags,
        parent_run_id=parent_run_id,
        nested=parent_run_id is not None,
    ) as run:
        yield run


def run_name(stage: str, tags: Mapping[str, str]) -> str:
    """`<dataset folder>/<stage>` (e.g. `demo/train-fold-0`): the runs list says what each run is of."""
    dataset = tags.get("birdpipe.dataset")
    return f"{Path(dataset).name}/{stage}" if dataset else stage


def log_params(params: Any, prefix: str = "") -> None:
    """A config section's fields (or a dict) as flat params (`train.model.backbone`)."""
    import mlflow

    mlflow.log_params({k: ("" if v is None else v) for k, v in flatten(params, prefix).items()})


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import math

    import mlflow

    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    mlflow.log_metrics(finite, step=step)


def log_artifacts(folder: Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifacts(str(folder), artifact_path)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def log_dict(data: dict[str, Any], name: str) -> None:
    import mlflow

    mlflow.log_dict(data, name)


def log_dataset(frame: Any, name: str, digest: str, source: str, context: str = "training") -> None:
    """Record a dataset the run read (`mlflow.log_input`), identified by our own content digest.

    `frame` (polars or pandas) gives the schema and profile MLflow shows; large frames are fine,
    only their summary is stored.
    """
    import mlflow

    df = frame.to_pandas() if hasattr(frame, "to_pandas") else frame
    with warnings.catch_warnings():
        # A local path resolves to the same source class twice, and MLflow's hint about
        # integer columns concerns serving schemas, not a lineage record: both are noise here.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(df, source=source, name=name, digest=digest[:36])
        mlflow.log_input(dataset, context=context)


def log_torch_model(
    model: Any, example: Any, cfg: TrackingConfig, aliases: tuple[str, ...] = (), tags: Mapping[str, str] | None = None,
    description: str = "",
) -> tuple[str, str | None]:
    """Log a torch module with the signature of `example -> model(example)`; register it (described
    by `description`) and point `aliases` at the new version when `cfg.registered_model` is set.
    Returns (model_uri, version).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.as_tensor(example)).cpu().numpy()
    # Pickled, not "pt2": torch.export would freeze the example's batch size.
    info = mlflow.pytorch.log_model(
        model, name="model", signature=infer_signature(example, output), input_example=example,
        serialization_format="pickle", pip_requirements=_requirements(),
    )  # fmt: skip
    return _register(info.model_uri, cfg, aliases, tags, description)


def _requirements() -> list[str]:
    """The serving environment, stated rather than inferred (inference reloads the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "timm", "numpy")]


def parent_run(cfg: TrackingConfig, key: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """The run that groups every fold of one training, found by `key` or created.

    Fold trainings are separate Dagster runs (one per partition, maybe on several machines),
    so the parent cannot be an open context: it is looked up by a tag instead.
    """
    from mlflow.tracking import MlflowClient

    experiment_id = configure(cfg)
    client = MlflowClient()
    found = client.search_runs([experiment_id], f"tags.`birdpipe.parent_key` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = dict(tags or {})
    run = client.create_run(
        experiment_id,
        run_name=run_name(name, tags),
        tags={"birdpipe.parent_key": key, "birdpipe.stage": name, "mlflow.source.git.commit": git_commit(), **tags,
              **dagster_links(cfg, tags)},  # fmt: skip
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def download_checkpoints(uri: str, cfg: TrackingConfig, dst_root: Path) -> list[Path]:
    """The `checkpoint/best.pt` artifact of the run behind each registered version `uri` names.

    `models:/<name>@<alias>` takes every `<alias>-fold<k>` alias when there are such (the
    fold ensemble), else the alias itself; `models:/<name>/<version>` one version.
    """
    import mlflow

    m = MODEL_URI.fullmatch(uri)
    if not m:
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    store = check_store(cfg)
    client = mlflow.MlflowClient(store)
    name = m["name"]
    try:
        if m["version"]:
            versions = [client.get_model_version(name, m["version"])]
        else:
            aliases = client.get_registered_model(name).aliases
            folds = sorted(a for a in aliases if re.fullmatch(rf"{re.escape(m['alias'])}-fold\d+", a))
            versions = [client.get_model_version_by_alias(name, a) for a in folds or [m["alias"]]]
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"{uri}: {exc.message} (tracking store {store})") from None
    paths = []
    for v in versions:
        # keyed by run too: a recreated registry reuses version numbers for other models
        dst = dst_root / f"{name}-v{v.version}-{v.run_id[:8]}"
        ckpt = dst / "checkpoint" / "best.pt"
        if not ckpt.exists():
            dst.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(run_id=v.run_id, artifact_path="checkpoint", dst_path=str(dst), tracking_uri=store)
        paths.append(ckpt)
    return paths


def log_folder_model(
    folder: Path, loader: str, cfg: TrackingConfig, aliases: tuple[str, ...] = (), tags: Mapping[str, str] | None = None,
    description: str = "",
) -> tuple[str, str | None]:
    """Log a model folder as an MLflow pyfunc model (input: a frame with a `path` column of
    audio files; output: per-window probabilities), register it and point `aliases` at the new
    version. `loader` ("module:function") turns the folder into an object with
    `predict_file(path)`; it is imported by name, so tracking stays below the code it serves.
    `description` goes to the registry (see `_register`). Returns (model_uri, version)."""
    import importlib

    import mlflow

    class FolderModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            module, function = loader.split(":")
            self.model = getattr(importlib.import_module(module), function)(Path(context.artifacts["folder"]))

        def predict(self, context, model_input, params=None):
            import polars as pl

            return pl.concat([self.model.predict_file(Path(p)) for p in model_input["path"]]).to_pandas()

    info = mlflow.pyfunc.log_model(name="model", python_model=FolderModel(), artifacts={"folder": str(folder)},
                                   pip_requirements=_requirements())  # fmt: skip
    return _register(info.model_uri, cfg, aliases, tags, description)


def _register(
    model_uri: str, cfg: TrackingConfig, aliases: tuple[str, ...], tags: Mapping[str, str] | None, description: str
) -> tuple[str, str | None]:
    """Register `model_uri` as a new version described by `description` (plus the git commit),
    which also becomes the registered model's description: the registry page says what its
    latest version was made of."""
    import mlflow

    if not cfg.registered_model:
        return model_uri, None
    text = f"{description} Code: git commit {git_commit()}."
    version = mlflow.register_model(model_uri, cfg.registered_model, tags=dict(tags or {})).version
    client = mlflow.MlflowClient()
    client.update_model_version(cfg.registered_model, version, description=text)
    client.update_registered_model(cfg.registered_model, description=text)
    for alias in aliases:
        client.set_registered_model_alias(cfg.registered_model, alias, version)
    return model_uri, str(version)


def download_blend(uri: str, cfg: TrackingConfig, dst_root: Path) -> Path | None:
    """The blend folder of a registered blend model (`models:/name@alias` or `/version`), or None
    when `uri` names another kind of model."""
    import mlflow

    m = MODEL_URI.fullmatch(uri)
    if not m:
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    store = check_store(cfg)
    client = mlflow.MlflowClient(store)
    try:
        v = client.get_model_version(m["name"], m["version"]) if m["version"] else client.get_model_version_by_alias(m["name"], m["alias"])
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"{uri}: {exc.message} (tracking store {store})") from None
    dst = dst_root / f"{m['name']}-v{v.version}-{(v.run_id or 'run')[:8]}"
    if not any(dst.rglob("blend.json")):
        dst.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{m['name']}/{v.version}", dst_path=str(dst), tracking_uri=store)
    found = sorted(dst.rglob("blend.json"))
    return found[0].parent if found else None
