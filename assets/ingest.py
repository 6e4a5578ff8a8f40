"""Ingest: the class list, validated train metadata, and the audio manifest, from any BirdCLEF
year's layout (`data.layout`), read by the same functions as `birdpipe validate`."""

import dagster as dg
import polars as pl

from birdpipe.config import PipelineConfig
from birdpipe.data.manifest import build_manifest
from birdpipe.data.metadata import load_classes, load_train_metadata
from birdpipe.paths import file_digest

from .meta import md_table
from .resources import Dataset

GROUP = "ingest"


def build(cfg: PipelineConfig) -> list:
    @dg.asset(group_name=GROUP, code_version=cfg.stage_version("taxonomy"), kinds={"polars"})
    def taxonomy(dataset: Dataset) -> dg.Output[pl.DataFrame]:
        """The class list (a taxonomy, sample_submission.csv's columns, or the sorted primary
        labels); its order is the class order of every model and submission."""
        layout = dataset.layout(cfg.dataset)
        classes = load_classes(layout)
        sources = [p for p in (layout.taxonomy, layout.sample_submission, layout.metadata) if p]
        return dg.Output(
            classes.frame,
            metadata={
                "species": classes.frame.height,
                "layout": layout.name,
                "class_source": classes.source,
                "source": dg.MetadataValue.path(str(sources[0])),
                "preview": md_table(classes.frame, 10),
            },
            data_version=dg.DataVersion(file_digest(*sources)),
        )

    @dg.asset(
        group_name=GROUP,
        code_version=cfg.stage_version("train_metadata"),
        kinds={"polars"},
        check_specs=[
            dg.AssetCheckSpec(
                "labels_in_taxonomy",
                asset="train_metadata",
                description="Every primary and secondary label of the metadata is in the taxonomy.",
            )
        ],
    )
    def train_metadata(context: dg.AssetExecutionContext, dataset: Dataset, taxonomy: pl.DataFrame):
        """The recording metadata parsed and validated; untrainable rows are quarantined, not dropped."""
        layout = dataset.layout(cfg.dataset)
        path = layout.metadata
        meta = load_train_metadata(path, taxonomy, label_folders=layout.label_folders)
        if meta.quarantine.height:
            context.log.warning(f"{path}: {meta.quarantine.height} row(s) quarantined")
        df = meta.recordings
        yield dg.Output(
            df,
            metadata={
                "recordings": df.height,
                "species": df["primary_label"].n_unique(),
                "with_secondary_labels": int((df["secondary_labels"].list.len() > 0).sum()),
                "quarantined": meta.quarantine.height,
                "quarantine": md_table(meta.quarantine),
                "unknown_secondary_labels": dg.MetadataValue.json(meta.unknown_secondary),
                "source": dg.MetadataValue.path(str(path)),
            },
            data_version=dg.DataVersion(file_digest(*(p for p in (path, layout.taxonomy, layout.sample_submission) if p))),
        )
        # Unknown labels do not stop the stage (their rows are quarantined, their secondary
        # mentions dropped), but the check makes them visible on the asset.
        yield dg.AssetCheckResult(
            check_name="labels_in_taxonomy",
            passed=not meta.unknown_primary and not meta.unknown_secondary,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "unknown_primary_labels": dg.MetadataValue.json(meta.unknown_primary),
                "unknown_secondary_labels": dg.MetadataValue.json(meta.unknown_secondary),
            },
        )

    @dg.asset(group_name=GROUP, code_version=cfg.stage_version("audio_manifest"), kinds={"polars"})
    def audio_manifest(
        context: dg.AssetExecutionContext, dataset: Dataset, train_metadata: pl.DataFrame
    ) -> dg.Output[pl.DataFrame]:
        """Duration, sample rate and channels of every recording, or why it cannot be read."""
        df = build_manifest(
            train_metadata, dataset.layout(cfg.dataset).audio_dir, workers=cfg.cache.workers, timeout_s=cfg.cache.file_timeout_s
        )
        bad = df.filter(~pl.col("readable"))
        if bad.height:
            context.log.warning(f"{bad.height} recording(s) unreadable; they are left out of the cache")
        fingerprint = df.select("filename", "size_bytes", "mtime").sort("filename").hash_rows().sum()
        return dg.Output(
            df,
            metadata={
                "recordings": df.height,
                "readable": df.height - bad.height,
                "damaged": int(df["damaged"].sum()),
                "audio_hours": round(float(df["duration_s"].fill_null(0).sum()) / 3600, 3),
                "quarantine": md_table(bad.select("filename", "reason")),
                "decoder_notes": md_table(df.filter(pl.col("decoder_notes").is_not_null()).select("filename", "decoder_notes")),
            },
            data_version=dg.DataVersion(str(fingerprint)),
        )

    @dg.asset_check(asset=audio_manifest, description="Every recording in the metadata exists and is readable.")
    def audio_files_exist(audio_manifest: pl.DataFrame) -> dg.AssetCheckResult:
        missing = audio_manifest.filter(~pl.col("exists"))
        unreadable = audio_manifest.filter(pl.col("exists") & ~pl.col("readable"))
        return dg.AssetCheckResult(
            passed=missing.height == 0 and unreadable.height == 0,
            metadata={
                "missing": missing.height,
                "unreadable": unreadable.height,
                "files": md_table(pl.concat([missing, unreadable]).select("filename", "reason")),
            },
        )

    return [taxonomy, train_metadata, audio_manifest, audio_files_exist]
