"""Resources and the pipeline config every asset reads.

The config is loaded once, when Dagster loads this code location (from $BIRDPIPE_CONFIG,
else defaults), because each asset's `code_version` is derived from it: edit the TOML and
reload the location, and the assets whose parameters changed show as unsynced.
"""

from dataclasses import replace
from pathlib import Path

import dagster as dg

from birdpipe.config import PipelineConfig, TrackingConfig, load_config
from birdpipe.paths import DatasetLayout, WorkLayout, default_data_root, default_work_root

CONFIG: PipelineConfig = load_config()


class Dataset(dg.ConfigurableResource):
    """A BirdCLEF-layout dataset root and the work folder of its outputs.

    Defaults come from $BIRDPIPE_DATA / $BIRDPIPE_WORK; run config overrides them
    (`resources: {dataset: {config: {root: ...}}}`).
    """

    root: str = str(default_data_root())
    work_root: str = str(default_work_root())

    @property
    def layout(self) -> DatasetLayout:
        return DatasetLayout(Path(self.root))

    @property
    def work(self) -> WorkLayout:
        return WorkLayout.for_dataset(Path(self.root), Path(self.work_root))


class Tracking(dg.ConfigurableResource):
    """MLflow store; default sqlite:///data/mlflow.db (or $MLFLOW_TRACKING_URI)."""

    tracking_uri: str | None = CONFIG.tracking.tracking_uri
    experiment: str = CONFIG.tracking.experiment

    def config_for(self, dataset: Dataset) -> TrackingConfig:
        """The store and experiment, with one registered model per dataset: models of other
        species lists never become versions of one another."""
        return replace(
            CONFIG.tracking,
            tracking_uri=self.tracking_uri,
            experiment=self.experiment,
            registered_model=f"{CONFIG.tracking.registered_model}-{Path(dataset.root).resolve().name}",
        )


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


@dg.io_manager(required_resource_keys={"dataset"})
def dataset_io_manager(context: dg.InitResourceContext) -> dg.IOManager:
    """Asset values (small frames, paths, scores) stored under the dataset's own work folder.

    One Dagster instance can then serve several datasets: switching the data root, also by
    run config, never feeds one dataset's upstream values into another's downstream assets.
    """
    dataset: Dataset = context.resources.dataset
    return dg.FilesystemIOManager(base_dir=str(dataset.work.root / "dagster_io")).create_io_manager(context)
