"""Features: the mel / noise-reduced spectrogram cache."""

from typing import Any

import dagster as dg
import polars as pl

from birdpipe.cache import build_mel_cache, cache_version

from .meta import md_table
from .resources import CONFIG, Dataset

#: With `cache.partitions > 1` the cache is split into shards a backfill fans out over.
CACHE_PARTITIONS = (
    dg.StaticPartitionsDefinition([str(i) for i in range(CONFIG.cache.partitions)])
    if CONFIG.cache.partitions > 1
    else None
)


@dg.asset(
    group_name="features",
    code_version=cache_version(CONFIG.mel),
    partitions_def=CACHE_PARTITIONS,
    kinds={"parquet"},
)
def mel_cache(
    context: dg.AssetExecutionContext,
    dataset: Dataset,
    train_metadata: pl.DataFrame,
    audio_manifest: pl.DataFrame,
) -> dg.Output[str]:
    """Log-mel windows of every readable recording, incremental; the value is the cache folder."""
    readable = audio_manifest.filter(pl.col("readable")).select("filename")
    recordings = train_metadata.join(readable, on="filename", how="semi")
    partition = (int(context.partition_key), CONFIG.cache.partitions) if CACHE_PARTITIONS else None
    report = build_mel_cache(
        recordings,
        dataset.layout.train_audio,
        dataset.work.root / "mel_cache",
        CONFIG.mel,
        CONFIG.cache,
        partition=partition,
        log=context.log.info,
    )
    return dg.Output(
        str(report.cache_dir),
        metadata={
            "cache_dir": dg.MetadataValue.path(str(report.cache_dir)),
            "recordings": report.files,
            "windows": report.windows,
            "audio_hours": round(report.audio_seconds / 3600, 3),
            "recomputed": report.recomputed,
            "reused": report.reused,
            "removed": report.removed,
            "quarantined": report.quarantined.height,
            "quarantine": md_table(report.quarantined.select("filename", "reason")),
            "audio_seconds_per_second": round(report.audio_seconds / max(report.wall_seconds, 1e-9), 1),
            "digest": report.digest,
        },
        data_version=dg.DataVersion(report.digest),
    )


def cache_dir(mel_cache: Any) -> str:
    """The cache folder, whether the cache came as one asset or as its shard partitions."""
    return next(iter(mel_cache.values())) if isinstance(mel_cache, dict) else mel_cache
