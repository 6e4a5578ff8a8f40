"""Resources every asset may ask for: the dataset, the MLflow store, and the IO manager."""

from pathlib import Path

import dagster as dg

from birdpipe.features.cache import cache_dir_for
from birdpipe.features.config import MelConfig
from birdpipe.data.config import DatasetConfig
from birdpipe.data.layout import DatasetLayout, detect_layout
from birdpipe.paths import WorkLayout, default_data_root, default_work_root
from birdpipe.tracking import TrackingConfig


class Dataset(dg.ConfigurableResource):
    """A dataset root (any BirdCLEF year's layout) and the work folder of its outputs.

    Defaults come from $BIRDPIPE_DATA / $BIRDPIPE_WORK; run config overrides them
    (`resources: {dataset: {config: {root: ...}}}`).
    """

    root: str = str(default_data_root())
    work_root: str = str(default_work_root())

    def layout(self, cfg: DatasetConfig) -> DatasetLayout:
        """The dataset's files as detected, with the config's `[dataset]` overrides."""
        return detect_layout(Path(self.root), cfg)

    @property
    def work(self) -> WorkLayout:
        return WorkLayout.for_dataset(Path(self.root), Path(self.work_root))

    def birdnet_dir(self, version: str) -> Path:
        """The BirdNET embeddings cache of a featurizer version (every shard partition writes into it)."""
        return self.work.root / "birdnet_embeddings" / f"birdnet-{version}"

    def birdnet_scores(self, version: str) -> Path:
        """BirdNET's zero-shot scores per 5 s window: an ensemble member and the distillation teacher."""
        return self.work.stage("birdnet_scores", version) / "scores.parquet"

    def soundscape_birdnet_dir(self, version: str) -> Path:
        """The BirdNET embeddings cache of the unlabeled soundscapes (pseudo-labelling's input)."""
        return self.work.root / "soundscape_embeddings" / f"birdnet-{version}"

    def mel_cache_dir(self, mel: MelConfig) -> Path:
        """The cache folder of these mel parameters (every shard partition writes into it)."""
        return cache_dir_for(self.work.root / "mel_cache", mel)


class Tracking(dg.ConfigurableResource):
    """The MLflow store and experiment; defaults from the config's `[tracking]` section."""

    tracking_uri: str | None = None
    experiment: str = TrackingConfig().experiment
    registered_model: str = TrackingConfig().registered_model
    blend_model: str = TrackingConfig().blend_model
    model_alias: str = TrackingConfig().model_alias
    connect_timeout_s: float = TrackingConfig().connect_timeout_s
    http_retries: int = TrackingConfig().http_retries
    http_timeout_s: float = TrackingConfig().http_timeout_s
    ui_url: str | None = None
    dagster_url: str | None = None

    @classmethod
    def from_config(cls, cfg: TrackingConfig) -> "Tracking":
        return cls(**cfg.to_dict())

    def config_for(self, dataset: Dataset, model: str = "sed") -> TrackingConfig:
        """The store and experiment, with one registered model per dataset (and kind, "sed" or
        "blend"): models of other species lists never become versions of one another."""
        name = self.registered_model if model == "sed" else self.blend_model
        fields = {f: getattr(self, f) for f in TrackingConfig.model_fields}
        return TrackingConfig(**fields | {"registered_model": f"{name}-{Path(dataset.root).resolve().name}"})


def lineage_tags(context: dg.AssetExecutionContext, dataset: Dataset) -> dict[str, str]:
    """Tags tying an MLflow run back to the dataset, and the Dagster run, asset and partition that made it."""
    tags = {
        "birdpipe.dataset": str(Path(dataset.root).resolve()),
        "dagster.run_id": context.run.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
        "dagster.code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
    }
    if context.has_partition_key:
        tags["dagster.partition"] = context.partition_key
    return tags


def dataset_io_manager_at(io_root: str | None = None) -> dg.IOManagerDefinition:
    """Asset values (small frames, paths, scores) stored per dataset: under its work folder, or
    under `io_root` (`[deploy] io_root`, an fsspec URL such as s3://bucket/prefix, which workers
    on other machines read through universal-pathlib).

    One Dagster instance can then serve several datasets: switching the data root, also by
    run config, never feeds one dataset's upstream values into another's downstream assets.
    """

    @dg.io_manager(required_resource_keys={"dataset"})
    def dataset_io_manager(context: dg.InitResourceContext) -> dg.IOManager:
        work = context.resources.dataset.work.root
        base = f"{io_root.rstrip('/')}/{work.name}/dagster_io" if io_root else str(work / "dagster_io")
        return dg.FilesystemIOManager(base_dir=base).create_io_manager(context)

    return dataset_io_manager


dataset_io_manager = dataset_io_manager_at()
