"""Features: the mel / noise-reduced spectrogram cache."""

import dagster as dg
import polars as pl

from birdpipe.config import PipelineConfig
from birdpipe.features.cache import build_mel_cache

from .meta import cache_metadata
from .resources import Dataset


def cache_partitions(cfg: PipelineConfig) -> dg.StaticPartitionsDefinition | None:
    """With `cache.partitions > 1` the cache is split into shards a backfill fans out over."""
    n = cfg.cache.partitions
    return dg.StaticPartitionsDefinition([str(i) for i in range(n)]) if n > 1 else None


def build(cfg: PipelineConfig) -> list:
    partitions = cache_partitions(cfg)

    @dg.asset(group_name="features", code_version=cfg.stage_version("mel_cache"), partitions_def=partitions, kinds={"parquet"})
    def mel_cache(
        context: dg.AssetExecutionContext, dataset: Dataset, train_metadata: pl.DataFrame, audio_manifest: pl.DataFrame
    ) -> dg.Output[str]:
        """Log-mel windows of every readable recording, incremental; the value is the cache folder.

        Downstream assets depend on it without loading its value: the folder follows from the
        mel parameters, whether the cache is one asset or shard partitions of one.
        """
        readable = audio_manifest.filter(pl.col("readable")).select("filename")
        recordings = train_metadata.join(readable, on="filename", how="semi")
        report = build_mel_cache(
            recordings,
            dataset.layout(cfg.dataset).audio_dir,
            dataset.work.root / "mel_cache",
            cfg.mel,
            cfg.cache,
            partition=(int(context.partition_key), cfg.cache.partitions) if partitions else None,
            log=context.log.info,
        )
        return dg.Output(
            str(report.cache_dir),
            metadata={**cache_metadata(report), "audio_hours": round(report.audio_seconds / 3600, 3)},
            data_version=dg.DataVersion(report.digest),
        )

    return [mel_cache]
