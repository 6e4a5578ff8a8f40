"""Features: the mel / noise-reduced spectrogram cache."""

import dagster as dg
import polars as pl

from birdpipe.config import PipelineConfig
from birdpipe.features.cache import build_mel_cache, in_partition

from .meta import cache_metadata, png
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
        from birdpipe.evaluation.plots import plot_mel_examples
        from birdpipe.features.examples import species_examples

        readable = audio_manifest.filter(pl.col("readable")).select("filename")
        recordings = train_metadata.join(readable, on="filename", how="semi")
        audio_dir = dataset.layout(cfg.dataset).audio_dir
        shard = (int(context.partition_key), cfg.cache.partitions) if partitions else None
        report = build_mel_cache(
            recordings,
            audio_dir,
            dataset.work.root / "mel_cache",
            cfg.mel,
            cfg.cache,
            partition=shard,
            log=context.log.info,
        )
        pictures = {}
        if cfg.cache.example_species:
            # a shard shows its own recordings' species: shards never decode the same examples
            examples = species_examples(in_partition(recordings, shard), audio_dir, cfg.mel, cfg.cache.example_species)
            suffix = f"-{context.partition_key}" if partitions else ""
            plot = report.cache_dir / f"examples{suffix}.png"
            pictures["example_windows"] = png(plot_mel_examples(examples, cfg.mel, plot))
        return dg.Output(
            str(report.cache_dir),
            metadata={**cache_metadata(report), "audio_hours": round(report.audio_seconds / 3600, 3), **pictures},
            data_version=dg.DataVersion(report.digest),
        )

    return [mel_cache]
