"""Every picture the pipeline shows: PNGs that the Dagster assets inline in their metadata and
the MLflow runs keep as artifacts. matplotlib (Agg) is imported only when a plot is drawn."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from birdpipe.evaluation.thresholds import Thresholds
    from birdpipe.features.config import MelConfig
    from birdpipe.features.examples import MelExample


@contextlib.contextmanager
def figure(path: str | Path, figsize: tuple[float, float], dpi: int = 100, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """(figure, axes) of a new plot, saved to `path` (folders made) and closed on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(figsize=figsize, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_history(history: list[dict[str, float]], path: str | Path) -> Path:
    """Training curve: losses on the left axis, the validation score on the right."""
    epochs = [h["epoch"] for h in history]
    with figure(path, (6, 3.5)) as (fig, ax):
        for key in ("train_loss", "val_loss"):
            ax.plot(epochs, [h.get(key, math.nan) for h in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        score = ax.twinx()
        score.plot(epochs, [h.get("val_score", math.nan) for h in history], color="tab:green", marker="s", label="val_score")
        score.set_ylabel("validation score")
        fig.legend(loc="upper center", ncol=3, fontsize="small")
    return Path(path)


def plot_threshold_curve(thresholds: Thresholds, path: str | Path) -> Path:
    """The objective against the global threshold, with the per-species thresholds as ticks."""
    with figure(path, (6.5, 4), dpi=110) as (_, ax):
        ax.plot(thresholds.curve["threshold"], thresholds.curve["metric"], color="C0", label="global threshold")
        ax.axvline(thresholds.global_threshold, color="C1", linestyle="--",
                   label=f"best {thresholds.global_threshold:.3f}: {thresholds.global_score:.4f}")  # fmt: skip
        ax.plot(list(thresholds.per_species.values()), np.zeros(len(thresholds.per_species)), "|",
                color="C2", markersize=14, transform=ax.get_xaxis_transform(),
                label=f"per species: {thresholds.per_species_score:.4f}")  # fmt: skip
        ax.set(xlabel="threshold", ylabel=thresholds.objective, xlim=(0, 1),
               title=f"Out-of-fold {thresholds.objective} against threshold")  # fmt: skip
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    return Path(path)


def plot_mel_examples(examples: Sequence[MelExample], cfg: MelConfig, path: str | Path) -> Path:
    """One row per species: its example log-mel window without and (when on) with noise reduction."""
    cols = 2 if any(e.reduced is not None for e in examples) else 1
    rows = max(len(examples), 1)
    extent = (0.0, cfg.window_seconds, 0.0, float(cfg.n_mels))
    with figure(path, (4.2 * cols, 1.9 * rows), squeeze=False, nrows=rows, ncols=cols) as (fig, axes):
        for ax_row, e in zip(axes, examples):
            panels = [("no noise reduction", e.raw), (f"noise reduced ({cfg.noise_mode})", e.reduced)][:cols]
            scale = {"vmin": float(e.raw.min()), "vmax": float(e.raw.max())}  # one scale per row: black is the floor
            for ax, (title, mel) in zip(ax_row, panels):
                ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=extent, **scale)
                ax.set_title(f"{e.species} @ {e.start_seconds:g} s: {title}", fontsize="small")
                ax.set_ylabel("mel band", fontsize="x-small")
                ax.tick_params(labelsize="x-small")
        for ax in axes[-1]:
            ax.set_xlabel("seconds", fontsize="x-small")
        if not examples:
            axes[0][0].text(0.5, 0.5, "no decodable recording", ha="center", va="center")
    return Path(path)


def plot_species_scores(table: pl.DataFrame, path: str | Path) -> Path:
    """Per-species out-of-fold ROC-AUC and AP as horizontal bars, worst ROC-AUC at the top."""
    scored = table.filter(pl.col("auc").is_not_null() | pl.col("ap").is_not_null()).sort("auc", nulls_last=False)
    y = np.arange(scored.height)
    with figure(path, (6.5, 1.2 + 0.22 * max(scored.height, 1))) as (_, ax):
        ax.barh(y - 0.2, scored["auc"].fill_null(0.0), height=0.4, label="ROC-AUC", color="C0")
        ax.barh(y + 0.2, scored["ap"].fill_null(0.0), height=0.4, label="AP", color="C1")
        ax.set_yticks(y, [f"{s} ({p})" for s, p in scored.select("species", "positives").iter_rows()], fontsize="x-small")
        ax.axvline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="out-of-fold score; species (positive windows)", title="Per species, worst ROC-AUC first")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return Path(path)


def plot_members(table: pl.DataFrame, path: str | Path) -> Path:
    """Ensemble members and the blend side by side: one group of bars per score."""
    metrics = [c for c in table.columns if c != "member"]
    members = table["member"].to_list()
    x = np.arange(len(metrics))
    width = 0.8 / max(len(members), 1)
    with figure(path, (2.2 + 1.6 * len(metrics), 3.8)) as (_, ax):
        for i, row in enumerate(table.iter_rows(named=True)):
            ax.bar(x + (i - (len(members) - 1) / 2) * width, [row[m] for m in metrics], width, label=row["member"])
        ax.set_xticks(x, metrics, fontsize="small")
        ax.set(ylim=(0, 1), ylabel="out of fold, per recording", title="Ensemble members and the blend")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    return Path(path)
