"""`birdpipe validate`: what a dataset folder holds and what of it can be trained on.

The first command a user runs on a new download: the detected layout, the class list and
its source, the quarantined metadata rows with their reasons, audio files that are missing
or whose header cannot be read, species with few recordings, and secondary labels outside
the class list. The ingest assets read the dataset through the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from birdpipe.data.layout import DatasetLayout
from birdpipe.data.manifest import build_manifest
from birdpipe.data.metadata import Classes, Metadata, load_dataset_metadata

#: Species with fewer trainable recordings are listed (too few to hold out in every fold).
FEW_RECORDINGS = 5


@dataclass(frozen=True)
class ValidationReport:
    layout: DatasetLayout
    classes: Classes
    metadata: Metadata
    #: `data.manifest` rows of the recordings that passed the metadata checks (headers only).
    manifest: pl.DataFrame
    few_below: int = FEW_RECORDINGS

    @property
    def missing(self) -> pl.DataFrame:
        return self.manifest.filter(~pl.col("exists")).select("filename", "reason")

    @property
    def unreadable(self) -> pl.DataFrame:
        return self.manifest.filter(pl.col("exists") & ~pl.col("readable")).select("filename", "reason")

    @property
    def trainable(self) -> pl.DataFrame:
        """Recordings with valid metadata and a readable audio file."""
        readable = self.manifest.filter(pl.col("readable")).select("filename")
        return self.metadata.recordings.join(readable, on="filename", how="semi")

    def species_counts(self) -> pl.DataFrame:
        """Trainable recordings per class, in class order, zero for a class without any."""
        counts = self.trainable.group_by("primary_label").len("recordings")
        return (
            self.classes.frame.select("primary_label")
            .join(counts, on="primary_label", how="left", maintain_order="left")
            .with_columns(pl.col("recordings").fill_null(0).cast(pl.Int64))
        )

    def few_recordings(self) -> pl.DataFrame:
        return self.species_counts().filter(pl.col("recordings") < self.few_below).sort("recordings", "primary_label")

    def to_dict(self) -> dict[str, Any]:
        """Everything the report says, as JSON-ready values."""
        few = self.few_recordings()
        return {
            **self.layout.describe(),
            "root": str(self.layout.root),
            "class_source": self.layout.class_source,
            "classes": self.classes.frame.height,
            "metadata_rows": self.metadata.recordings.height + self.metadata.quarantine.height,
            "recordings": self.trainable.height,
            "quarantined": self.metadata.quarantine.height,
            "quarantine": self.metadata.quarantine.to_dicts(),
            "missing_audio": self.missing.height,
            "unreadable_audio": self.unreadable.height,
            "bad_audio": pl.concat([self.missing, self.unreadable]).to_dicts(),
            "few_recordings_below": self.few_below,
            "few_recordings": dict(zip(few["primary_label"].to_list(), few["recordings"].to_list())),
            "unknown_secondary_labels": self.metadata.unknown_secondary,
            "submission_format": self.layout.submission_format,
        }

    def summary(self, limit: int = 10) -> str:
        """The report for a person: counts first, then up to `limit` examples of each problem."""
        d = self.to_dict()
        lines = [f"dataset {d['root']}: BirdCLEF {d['layout']} layout" if d["layout"] != "birdpipe" else f"dataset {d['root']}: birdpipe layout"]
        lines += [f"  {k:<22} {v}" for k, v in self.layout.describe().items() if k != "layout" and v]
        lines += [
            f"  classes                {d['classes']} (from {d['class_source']})",
            f"  submission format      {d['submission_format']}",
            f"recordings: {d['recordings']} trainable of {d['metadata_rows']} metadata rows",
            f"quarantined rows: {d['quarantined']}",
            *_examples(self.metadata.quarantine.select("row", "filename", "reason").iter_rows(), limit, "    row {}: {} ({})"),
            f"audio missing: {d['missing_audio']}",
            *_examples(self.missing.iter_rows(), limit, "    {} ({})"),
            f"audio unreadable: {d['unreadable_audio']}",
            *_examples(self.unreadable.iter_rows(), limit, "    {} ({})"),
            f"species with fewer than {self.few_below} trainable recordings: {len(d['few_recordings'])}",
            *_examples(d["few_recordings"].items(), limit, "    {}: {}"),
            f"secondary labels outside the class list: {len(d['unknown_secondary_labels'])}",
            *_examples(d["unknown_secondary_labels"].items(), limit, "    {} ({} mentions)"),
        ]
        if not d["recordings"]:
            lines.append("nothing is trainable: fix the problems above")
        return "\n".join(lines)


def validate_dataset(layout: DatasetLayout, workers: int = 0, timeout_s: float | None = None, few_below: int = FEW_RECORDINGS) -> ValidationReport:
    """Read the metadata and class list as the pipeline does, and probe every recording's header in parallel."""
    classes, metadata = load_dataset_metadata(layout)
    manifest = build_manifest(metadata.recordings, layout.audio_dir, workers=workers, timeout_s=timeout_s, decode=False)
    return ValidationReport(layout, classes, metadata, manifest, few_below)


def _examples(rows, limit: int, fmt: str) -> list[str]:
    rows = list(rows)
    return [fmt.format(*r) for r in rows[:limit]] + ([f"    ... and {len(rows) - limit} more"] if len(rows) > limit else [])
