"""Training: fold splits and one model per fold."""

import sys

import dagster as dg
import polars as pl

from birdpipe import tracking as mlf
from birdpipe.config import PipelineConfig
from birdpipe.paths import PROJECT_ROOT
from birdpipe.data.folds import always_train_species, assign_folds, fold_summary
from birdpipe.features.reader import MelCacheReader
from birdpipe.schema import version

from .deploy import gpu_step_tags
from .meta import md_table, mlflow_links, png
from .resources import Dataset, Tracking, lineage_tags

GROUP = "training"


def fold_partitions(cfg: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([str(k) for k in range(cfg.folds.n_folds)])


def build(cfg: PipelineConfig, teacher_scores: str | None = None) -> list:
    """`teacher_scores`: the `birdnet_scores` version the SED distils from (`[train.distill]`)."""
    folds_version = cfg.stage_version("folds")
    #: Training folders are keyed by everything that defines a fold model's inputs, so a
    #: resumed run never continues a checkpoint trained on other features or splits.
    train_version = cfg.stage_version("trained_model")

    @dg.asset(group_name=GROUP, code_version=folds_version, deps=["mel_cache"], kinds={"polars"})
    def folds(context: dg.AssetExecutionContext, dataset: Dataset, train_metadata: pl.DataFrame) -> dg.Output[pl.DataFrame]:
        """Stratified folds over the recordings that made it into the cache (quarantined ones did not);
        species rarer than `always_train_below` (default: the number of folds) are in every training set (fold -1)."""
        cached = MelCacheReader(dataset.mel_cache_dir(cfg.mel)).windows.select("filename").unique()
        df = assign_folds(train_metadata.join(cached, on="filename", how="semi"), cfg.folds)
        path = dataset.work.stage("folds", folds_version) / "folds.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path)
        always = always_train_species(df)
        if always.height:
            context.log.info(
                f"{always.height} species with fewer than {cfg.folds.always_train_threshold} recordings stay in every "
                f"training set (no out-of-fold score): {', '.join(always['primary_label'])}"
            )
        return dg.Output(
            df,
            metadata={
                "recordings": df.height,
                "per_fold": md_table(fold_summary(df)),
                "always_train_species": always.height,
                "always_train": md_table(always, limit=max(always.height, 1)),  # every one named
                "folds_parquet": dg.MetadataValue.path(str(path)),
            },
            data_version=dg.DataVersion(str(df.hash_rows().sum())),
        )

    @dg.asset(
        group_name=GROUP,
        code_version=train_version,
        partitions_def=fold_partitions(cfg),
        pool="gpu",
        op_tags=gpu_step_tags(cfg.deploy),
        deps=["mel_cache"] + (["birdnet_scores"] if teacher_scores else []),
        kinds={"pytorch", "mlflow"},
    )
    def trained_model(
        context: dg.AssetExecutionContext,
        dataset: Dataset,
        tracking: Tracking,
        folds: pl.DataFrame,
        train_metadata: pl.DataFrame,
        taxonomy: pl.DataFrame,
    ) -> dg.Output[dict]:
        """The fold's SED model, trained on the other folds; the value holds checkpoint paths and scores."""
        from birdpipe.training.loop import FoldData, FoldTracking, frame_digest, train_fold

        fold = int(context.partition_key)
        cache = MelCacheReader(dataset.mel_cache_dir(cfg.mel))
        trk = tracking.config_for(dataset)
        tags = lineage_tags(context, dataset) | {"birdpipe.train_version": train_version}
        # One parent per training of all folds: the backfill when there is one, else the inputs.
        parent_key = context.run.tags.get("dagster/backfill") or version(train_version, cache.digest, frame_digest(folds))
        parent = mlf.parent_run(trk, parent_key, "trained_model", {"birdpipe.train_version": train_version})
        experiment = mlf.configure(trk)
        teacher = pl.read_parquet(dataset.birdnet_scores(teacher_scores)) if teacher_scores else None
        data = FoldData(cache, folds, train_metadata, taxonomy["primary_label"].to_list(), dataset.layout(cfg.dataset).audio_dir, teacher)
        out_dir = dataset.work.stage("trained_model", train_version) / f"fold-{fold}"
        if cfg.deploy.nproc_per_fold > 1:
            result = train_ddp(context, data, fold, out_dir, FoldTracking(trk, tags, parent))
        else:
            result = train_fold(data, fold, cfg.train, out_dir, FoldTracking(trk, tags, parent), log=context.log.info)
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
                "metric": cfg.train.metric,
                **mlflow_links(trk, result.run_id, experiment, result.model_version),
                "mlflow_parent_run": dg.MetadataValue.url(mlf.run_url(trk, parent, experiment)),
                "mlflow_parent_run_id": parent,
                "checkpoint": dg.MetadataValue.path(str(result.best_checkpoint)),
                **({"training_curve": png(result.curve)} if result.curve else {}),
            },
        )

    def train_ddp(context: dg.AssetExecutionContext, data, fold: int, out_dir, tracking):
        """`torchrun --standalone --nproc_per_node=N` on this machine, through Dagster Pipes: rank 0's
        log lines stream into the run's log, and its result comes back as a Pipes message."""
        from birdpipe.training.ddp import FoldSpec, result_from_dict

        spec = FoldSpec.write(data, fold, cfg.train, out_dir, tracking)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.deploy.nproc_per_fold}",
                   "-m", "assets.ddp_fold", str(spec)]  # fmt: skip
        context.log.info(f"fold {fold}: DDP over {cfg.deploy.nproc_per_fold} processes: {' '.join(command[1:])}")
        messages = dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT)).run(command=command, context=context).get_custom_messages()
        if not messages:
            raise RuntimeError(f"fold {fold}: torchrun ended without rank 0's result (its log is above)")
        return result_from_dict(messages[-1])

    return [folds, trained_model]
