"""One fold trained by several processes (DDP): what `torchrun` runs, and how it is told what to train.

The caller (the `trained_model` asset with `[deploy] nproc_per_fold > 1`) writes a `FoldSpec`
(JSON, beside the fold's checkpoints, with the split and metadata as Parquet) and runs
`torchrun --standalone --nproc_per_node=N <entry> spec.json`; every rank calls `train_rank`,
which joins the process group and runs the ordinary `train_fold`. Rank 0 returns the
result (`result_dict` to send it back); the checkpoints, resume and MLflow lineage are those
of single-process training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from birdpipe import tracking as trk
from birdpipe.features.reader import MelCacheReader
from birdpipe.training.config import TrainConfig
from birdpipe.training.distributed import init_process_group
from birdpipe.training.loop import FoldData, FoldResult, FoldTracking, train_fold


@dataclass(frozen=True)
class FoldSpec:
    """Everything a rank needs to rebuild `train_fold`'s arguments from files."""

    fold: int
    out_dir: str
    cache_dir: str
    classes: list[str]
    train: dict[str, Any]
    audio_root: str | None = None
    tracking: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None

    @property
    def folder(self) -> Path:
        return Path(self.out_dir) / "ddp"

    @classmethod
    def write(cls, data: FoldData, fold: int, cfg: TrainConfig, out_dir: Path, tracking: FoldTracking | None) -> Path:
        """The spec of one fold and its inputs, under `out_dir/ddp/`; returns the spec's path."""
        spec = cls(
            fold=fold, out_dir=str(out_dir), cache_dir=str(data.cache.cache_dir), classes=list(data.classes), train=cfg.to_dict(),
            audio_root=str(data.audio_root) if data.audio_root else None,
            tracking=tracking.config.to_dict() if tracking else None, tags=dict(tracking.tags) if tracking else {},
            parent_run_id=tracking.parent_run_id if tracking else None,
        )  # fmt: skip
        spec.folder.mkdir(parents=True, exist_ok=True)
        data.folds.write_parquet(spec.folder / "folds.parquet")
        data.metadata.write_parquet(spec.folder / "metadata.parquet")
        if data.teacher is not None:
            data.teacher.write_parquet(spec.folder / "teacher.parquet")
        path = spec.folder / "spec.json"
        path.write_text(json.dumps(asdict(spec), indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> FoldSpec:
        return cls(**json.loads(Path(path).read_text()))

    def inputs(self) -> tuple[FoldData, TrainConfig, FoldTracking | None]:
        data = FoldData(
            MelCacheReader(Path(self.cache_dir)), pl.read_parquet(self.folder / "folds.parquet"),
            pl.read_parquet(self.folder / "metadata.parquet"), self.classes, Path(self.audio_root) if self.audio_root else None,
            pl.read_parquet(teacher) if (teacher := self.folder / "teacher.parquet").exists() else None,
        )  # fmt: skip
        tracking = FoldTracking(trk.TrackingConfig.from_dict(self.tracking), self.tags, self.parent_run_id) if self.tracking else None
        return data, TrainConfig.from_dict(self.train), tracking


def train_rank(spec_path: str | Path, log: Callable[[str], None] = print) -> FoldResult | None:
    """This rank's part of the fold; rank 0 returns the result, the others None."""
    spec = FoldSpec.read(spec_path)
    data, cfg, tracking = spec.inputs()
    ranks = init_process_group(cfg.device)
    try:
        result = train_fold(data, spec.fold, cfg, Path(spec.out_dir), tracking, log=log)
    finally:
        torch.distributed.destroy_process_group()
    return result if ranks.main else None


def result_dict(result: FoldResult) -> dict[str, Any]:
    """The result as JSON-able values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}


def result_from_dict(values: dict[str, Any]) -> FoldResult:
    """The inverse of `result_dict` (rank 0's result, as it crossed the process boundary)."""
    values = dict(values)
    for key in ("best_checkpoint", "last_checkpoint", "curve"):
        values[key] = Path(values[key]) if values[key] else None
    return FoldResult(**values)
