"""The birdpipe code location: every asset, check, resource, job and sensor."""

from __future__ import annotations

import dagster as dg

from . import evaluation, features, ingest, submission, training
from .resources import Dataset, Tracking, dataset_io_manager
from .sensors import dataset_changed

ALL_ASSETS = dg.load_assets_from_modules([ingest, features, training, evaluation, submission])
ALL_CHECKS = dg.load_asset_checks_from_modules([ingest, features, training, evaluation, submission])

SHARDED = features.CACHE_PARTITIONS is not None
_ingest = [ingest.taxonomy, ingest.train_metadata, ingest.audio_manifest]

#: Everything before training: ingest, the cache and the folds (ingest only when the cache is sharded).
prepare_job = dg.define_asset_job(
    "prepare_job",
    selection=dg.AssetSelection.assets(*_ingest, *([] if SHARDED else [features.mel_cache, training.folds])),
)
#: A sharded cache: one run per shard partition, then the folds over all shards.
cache_job = dg.define_asset_job(
    "cache_job", selection=dg.AssetSelection.assets(features.mel_cache), partitions_def=features.CACHE_PARTITIONS
)
folds_job = dg.define_asset_job("folds_job", selection=dg.AssetSelection.assets(training.folds))
#: One fold's training per run; backfill all partitions to train every fold.
train_job = dg.define_asset_job(
    "train_job", selection=dg.AssetSelection.assets(training.trained_model), partitions_def=training.FOLD_PARTITIONS
)
#: Out-of-fold scores, thresholds and the submission, after every fold is trained.
evaluate_job = dg.define_asset_job(
    "evaluate_job",
    selection=dg.AssetSelection.assets(evaluation.oof_predictions, evaluation.thresholds, submission.submission),
)

JOBS = [prepare_job, train_job, evaluate_job] + ([cache_job, folds_job] if SHARDED else [])

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=JOBS,
    sensors=[dataset_changed],
    resources={"dataset": Dataset(), "tracking": Tracking(), "io_manager": dataset_io_manager},
)
