"""Dagster metadata from birdpipe results: tables as Markdown, paths, plots."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from birdpipe import tracking as mlf


def md_table(df: pl.DataFrame, limit: int = 20) -> dg.MetadataValue:
    """A frame as a Markdown table (first `limit` rows, with a count of the rest)."""
    head = df.head(limit)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in head.iter_rows()]
    if df.height > limit:
        lines.append(f"\n... {df.height - limit} more rows")
    return dg.MetadataValue.md("\n".join(lines))


def cache_metadata(report) -> dict[str, dg.MetadataValue | int | float | str]:
    """What every window cache (mels, BirdNET embeddings) reports on its asset."""
    return {
        "cache_dir": dg.MetadataValue.path(str(report.cache_dir)),
        "recordings": report.files,
        "windows": report.windows,
        "recomputed": report.recomputed,
        "reused": report.reused,
        "removed": report.removed,
        "quarantined": report.quarantined.height,
        "quarantine": md_table(report.quarantined.select("filename", "reason")),
        "damaged": report.damaged.height,
        "damaged_files": md_table(report.damaged),
        "audio_seconds_per_second": round(report.throughput, 1),
        "digest": report.digest,
    }


def mlflow_links(
    cfg: mlf.TrackingConfig, run_id: str | None, experiment_id: str, version: str | None = None
) -> dict[str, dg.MetadataValue | str]:
    """Clickable links to the asset's MLflow run and, when it registered one, its model version."""
    if not run_id:
        return {}
    links: dict[str, dg.MetadataValue | str] = {
        "mlflow_run": dg.MetadataValue.url(mlf.run_url(cfg, run_id, experiment_id)), "mlflow_run_id": run_id,
    }  # fmt: skip
    if version:
        links["registered_model"] = f"models:/{cfg.registered_model}/{version}"
        links["registered_model_version"] = dg.MetadataValue.url(mlf.model_version_url(cfg, cfg.registered_model, version))
    return links


def run_list(runs: dict[str, str]) -> dg.MetadataValue:
    """Links to the several MLflow runs of one asset (a run per fold or round), as a Markdown list."""
    return dg.MetadataValue.md("\n".join(f"- [{name}]({url})" for name, url in runs.items()) or "no runs")


def png(path: Path) -> dg.MetadataValue:
    """An inline plot: the PNG as Markdown with a data URI, so the UI shows it without a server."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{Path(path).name}](data:image/png;base64,{data})")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")
