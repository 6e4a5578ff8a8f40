"""Dagster metadata from birdpipe results: tables as Markdown, paths, plots."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl


def md_table(df: pl.DataFrame, limit: int = 20) -> dg.MetadataValue:
    """A frame as a Markdown table (first `limit` rows, with a count of the rest)."""
    head = df.head(limit)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in head.iter_rows()]
    if df.height > limit:
        lines.append(f"\n... {df.height - limit} more rows")
    return dg.MetadataValue.md("\n".join(lines))


def png(path: Path) -> dg.MetadataValue:
    """An inline plot: the PNG as Markdown with a data URI, so the UI shows it without a server."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{Path(path).name}](data:image/png;base64,{data})")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")
