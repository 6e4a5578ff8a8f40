"""Ingest: taxonomy, validated train metadata, and the audio manifest."""

import dagster as dg
import polars as pl

from birdpipe.config import version
from birdpipe.manifest import build_manifest
from birdpipe.metadata import load_taxonomy, load_train_metadata
from birdpipe.paths import file_digest

from .meta import md_table
from .resources import CONFIG, Dataset

GROUP = "ingest"


@dg.asset(group_name=GROUP, code_version=version("taxonomy"), kinds={"polars"})
def taxonomy(dataset: Dataset) -> dg.Output[pl.DataFrame]:
    """The species list; its order is the class order of every model and submission."""
    path = dataset.layout.taxonomy
    df = load_taxonomy(path)
    return dg.Output(
        df,
        metadata={"species": df.height, "source": dg.MetadataValue.path(str(path)), "preview": md_table(df, 10)},
        data_version=dg.DataVersion(file_digest(path)),
    )


@dg.asset(group_name=GROUP, code_version=version("train_metadata"), kinds={"polars"})
def train_metadata(
    context: dg.AssetExecutionContext, dataset: Dataset, taxonomy: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """`train_metadata.csv` parsed and validated; untrainable rows are quarantined, not dropped."""
    path = dataset.layout.train_metadata
    meta = load_train_metadata(path, taxonomy)
    if meta.quarantine.height:
        context.log.warning(f"{path}: {meta.quarantine.height} row(s) quarantined")
    df = meta.recordings
    return dg.Output(
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
        data_version=dg.DataVersion(file_digest(path, dataset.layout.taxonomy)),
    )


@dg.asset(group_name=GROUP, code_version=version("audio_manifest"), kinds={"polars"})
def audio_manifest(
    context: dg.AssetExecutionContext, dataset: Dataset, train_metadata: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """Duration, sample rate and channels of every recording, or why it cannot be read."""
    df = build_manifest(train_metadata, dataset.layout.train_audio, workers=CONFIG.cache.workers)
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
        },
        data_version=dg.DataVersion(str(fingerprint)),
    )


@dg.asset_check(
    asset=train_metadata,
    additional_ins={"taxonomy": dg.AssetIn("taxonomy")},
    description="Every primary and secondary label is in the taxonomy.",
)
def labels_in_taxonomy(train_metadata: pl.DataFrame, taxonomy: pl.DataFrame) -> dg.AssetCheckResult:
    classes = taxonomy["primary_label"].implode()
    labels = pl.concat([train_metadata["primary_label"], train_metadata["secondary_labels"].explode().drop_nulls()])
    unknown = sorted(set(labels.filter(~labels.is_in(classes)).to_list()))
    return dg.AssetCheckResult(passed=not unknown, metadata={"unknown_labels": dg.MetadataValue.json(unknown)})


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
