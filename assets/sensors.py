"""Sensors: rerun ingest and features when the dataset on disk changes."""

import dagster as dg

from birdpipe.config import PipelineConfig

from .resources import Dataset


def build_sensor(cfg: PipelineConfig) -> dg.SensorDefinition:
    @dg.sensor(job_name="prepare_job", minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
    def dataset_changed(context: dg.SensorEvaluationContext, dataset: Dataset) -> dg.SensorResult | dg.SkipReason:
        """New, changed or removed recordings or metadata start the preparation job (cache is incremental)."""
        fingerprint = dataset.layout(cfg.dataset).fingerprint()
        if fingerprint == context.cursor:
            return dg.SkipReason(f"{dataset.root}: unchanged")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=fingerprint)], cursor=fingerprint)

    return dataset_changed
