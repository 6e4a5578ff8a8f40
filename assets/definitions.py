"""The birdpipe code location: `defs = build_defs(load_config())`.

`build_defs` builds every asset, check, job, sensor and resource from one validated config,
so tests and scripts make definitions for any config in process. The config is read when the
location loads (from $BIRDPIPE_CONFIG, else defaults): code versions derive from it, and a
bad config fails the load with the file, key and value named on the code-location page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from birdpipe.config import ConfigError, PipelineConfig, load_config

from . import deploy, evaluation, features, ingest, pretrained, submission, training
from .resources import Dataset, Tracking, dataset_io_manager_at
from .sensors import build_sensor


def build_defs(config: PipelineConfig, resources: Mapping[str, Any] | None = None) -> dg.Definitions:
    """Definitions for `config`; `resources` replace the defaults (dataset and MLflow store from the environment)."""
    birdnet = pretrained.birdnet_files(config)
    if config.train.distill.teacher and not birdnet:
        raise ConfigError(f"[train.distill] teacher = {config.train.distill.teacher!r} needs BirdNET, which is "
                          f"{'switched off ([birdnet] enabled = false)' if config.birdnet.enabled is False else 'not installed (make birdnet)'}")  # fmt: skip
    teacher = pretrained.birdnet_scores_version(config, birdnet) if config.train.distill.teacher else None
    assets = [a for module in (ingest, features) for a in module.build(config)] + training.build(config, teacher)
    assets += evaluation.build(config, blended=bool(birdnet)) + submission.build(config, blended=bool(birdnet))
    #: BirdNET's stages join the graph when its weights are installed (or required by the config).
    pretrained_assets = pretrained.build(config, birdnet) if birdnet else []
    caches = ["mel_cache"] + (["birdnet_embeddings"] if birdnet else [])
    pseudo = ["soundscape_embeddings", "pseudo_labels"] if config.pseudo.rounds else []
    #: BirdNET's scores come before training when the SED distils from them, else with the blend.
    teacher_keys = ["birdnet_scores"] if teacher else []
    blend = [k for k in ["birdnet_scores", "embedding_heads", *pseudo, "ensemble"] if birdnet and k not in teacher_keys]
    shards = features.cache_partitions(config)
    ingest_keys = ["taxonomy", "train_metadata", "audio_manifest"]
    jobs = [
        #: Everything before training: ingest, the caches and the folds (ingest only when the caches are sharded).
        dg.define_asset_job("prepare_job", selection=ingest_keys + ([] if shards else [*caches, *teacher_keys, "folds"])),
        #: One fold's training per run; backfill all partitions to train every fold.
        dg.define_asset_job("train_job", selection=["trained_model"]),
        #: Out-of-fold scores, embedding heads, the blend, thresholds, the submission and the soundscape validation, after every fold is trained.
        dg.define_asset_job("evaluate_job", selection=["oof_predictions", *blend, "thresholds", "submission", "soundscape_validation"]),
    ]
    if shards:
        #: Sharded caches: one run per shard partition, then the folds over all shards.
        jobs += [
            dg.define_asset_job("cache_job", selection=caches),
            dg.define_asset_job("folds_job", selection=["folds", *teacher_keys]),
        ]
    assets += pretrained_assets
    defaults = {"dataset": Dataset(), "tracking": Tracking.from_config(config.tracking), "io_manager": dataset_io_manager_at(config.deploy.io_root)}
    return dg.Definitions(
        assets=[a for a in assets if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in assets if isinstance(a, dg.AssetChecksDefinition)],
        jobs=jobs,
        sensors=[build_sensor(config)],
        resources={**defaults, **(resources or {})},
        executor=deploy.executor(config.deploy),
    )


defs = build_defs(load_config())
