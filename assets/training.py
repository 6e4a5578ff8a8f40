"""Training: fold splits and one model per fold."""

from typing import Any

import dagster as dg
import polars as pl

from birdpipe.cache import MelCacheReader
from birdpipe.config import version
from birdpipe.folds import assign_folds, fold_summary
from birdpipe import tracking as mlf
from birdpipe.training import frame_digest, plot_history, train_fold

from .features import cache_dir
from .meta import md_table, png
from .resources import CONFIG, Dataset, Tracking, lineage_tags

GROUP = "training"
FOLD_PARTITIONS = dg.StaticPartitionsDefinition([str(k) for k in range(CONFIG.folds.n_folds)])
#: Training folders are keyed by everything that defines a fold model's inputs, so a resumed
#: run never continues a checkpoint trained on other features or splits.
TRAIN_VERSION = version(CONFIG.train, CONFIG.mel, CONFIG.folds)


@dg.asset(group_name=GROUP, code_version=version(CONFIG.folds), kinds={"polars"})
def folds(dataset: Dataset, mel_cache: Any, train_metadata: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """Stratified folds over the recordings that made it into the cache (quarantined ones did not)."""
    cached = MelCacheReader(cache_dir(mel_cache)).windows.select("filename").unique()
    df = assign_folds(train_metadata.join(cached, on="filename", how="semi"), CONFIG.folds)
    path = dataset.work.stage("folds", version(CONFIG.folds)) / "folds.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)
    return dg.Output(
        df,
        metadata={"recordings": df.height, "per_fold": md_table(fold_summary(df)), "folds_parquet": dg.MetadataValue.path(str(path))},
        data_version=dg.DataVersion(str(df.hash_rows().sum())),
    )


@dg.asset(
    group_name=GROUP,
    code_version=version(CONFIG.train),
    partitions_def=FOLD_PARTITIONS,
    pool="gpu",
    kinds={"pytorch", "mlflow"},
)
def trained_model(
    context: dg.AssetExecutionContext,
    dataset: Dataset,
    tracking: Tracking,
    mel_cache: Any,
    folds: pl.DataFrame,
    train_metadata: pl.DataFrame,
    taxonomy: pl.DataFrame,
) -> dg.Output[dict]:
    """The fold's SED model, trained on the other folds; the value holds checkpoint paths and scores."""
    fold = int(context.partition_key)
    cache = MelCacheReader(cache_dir(mel_cache))
    out_dir = dataset.work.stage("trained_model", TRAIN_VERSION) / f"fold-{fold}"
    trk = tracking.config_for(dataset)
    tags = lineage_tags(context, dataset) | {"birdpipe.mel_cache_digest": cache.digest}
    # One parent per training of all folds: the backfill when there is one, else the inputs.
    parent_key = context.run.tags.get("dagster/backfill") or version(TRAIN_VERSION, cache.digest, frame_digest(folds))
    parent = mlf.parent_run(trk, parent_key, "trained_model", {"birdpipe.train_version": TRAIN_VERSION})
    result = train_fold(
        cache, folds, train_metadata, taxonomy["primary_label"].to_list(), fold, CONFIG.train, out_dir,
        tracking=trk, tags=tags, parent_run_id=parent, log=context.log.info,
        audio_root=dataset.layout.train_audio,
    )
    curve = plot_history(result.history, out_dir / "history.png")
    return dg.Output(
        {
            "fold": fold,
            "best_checkpoint": str(result.best_checkpoint),
            "last_checkpoint": str(result.last_checkpoint),
            "best_score": result.best_score,
            "run_id": result.run_id,
            "model_uri": result.model_uri,
        },
        metadata={
            "best_score": result.best_score,
            "best_epoch": result.best_epoch,
            "epochs": result.epochs_run,
            "metric": CONFIG.train.metric,
            "mlflow_run_id": result.run_id or "",
            "mlflow_parent_run_id": parent,
            "registered_model": f"models:/{trk.registered_model}/{result.model_version}" if result.model_version else "",
            "checkpoint": dg.MetadataValue.path(str(result.best_checkpoint)),
            "training_curve": png(curve),
        },
    )
