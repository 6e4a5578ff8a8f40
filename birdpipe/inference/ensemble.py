"""Fold ensembles: which model files a reference names, and how their probabilities combine.

Each fold model runs in ONNX Runtime (exported once beside its checkpoint) or torch; the
members' probabilities are combined by a registered rule (`COMBINATIONS`: mean, median, max).

A model reference is a checkpoint file (`best.pt`, or a self-describing `.onnx`), a folder
holding fold folders (`fold-0/best.pt`, ...), or `models:/<name>@<alias>`: the registered
MLflow model version(s) whose runs logged `checkpoint/best.pt` (`birdpipe.training`); when
aliases `<alias>-fold<k>` exist, all of them form the ensemble.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from birdpipe.features.config import MelConfig
from birdpipe.paths import default_work_root
from birdpipe.registry import Registry
from birdpipe.tracking import TrackingConfig, download_checkpoints

#: name -> how members' probabilities `[members, n, C]` combine into `[n, C]`.
COMBINATIONS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("ensemble combination")
COMBINATIONS.register("mean")(lambda p: p.mean(axis=0))
COMBINATIONS.register("median")(lambda p: np.median(p, axis=0))
COMBINATIONS.register("max")(lambda p: p.max(axis=0))


class Predictor(Protocol):
    def predict(self, mels: np.ndarray, batch_size: int) -> np.ndarray: ...


@dataclass
class Ensemble:
    members: list[Predictor]
    classes: list[str]
    #: The mel configuration the models were trained on (from their checkpoints).
    mel: MelConfig
    combine: str = "mean"

    def __post_init__(self):
        self._combine = COMBINATIONS.get(self.combine)

    def predict(self, mels: np.ndarray, batch_size: int) -> np.ndarray:
        """Combined probabilities `[n, C]` of log-mel windows."""
        return self._combine(np.stack([m.predict(mels, batch_size) for m in self.members]))


def load_ensemble(
    ref: str | Path | Sequence[str | Path],
    use_onnx: bool = True,
    combine: str = "mean",
    tracking: TrackingConfig | None = None,
    threads: int | None = None,
) -> Ensemble:
    """The fold models `ref` names (see the module doc); ONNX files are exported when missing."""
    from birdpipe.models.export import OnnxModel
    from birdpipe.models.predict import TorchPredictor
    from birdpipe.models.sed import load_model

    paths = model_files(ref, tracking)
    members, metas = [], []
    for path in paths:
        if path.suffix == ".onnx" or use_onnx:
            member = OnnxModel(path if path.suffix == ".onnx" else onnx_for(path), threads)
            meta = member.meta
        else:
            model, meta = load_model(path)
            member = TorchPredictor(model, meta["model"]["clip_weight"])
        members.append(member)
        metas.append(meta)
    for path, meta in zip(paths, metas):
        if meta.get("classes") != metas[0].get("classes") or meta.get("mel") != metas[0].get("mel"):
            raise ValueError(f"{path}: classes or mel config differ from the other fold models'")
    if not metas[0].get("classes"):
        raise ValueError(f"{ref}: model has no class list in its metadata")
    return Ensemble(members, metas[0]["classes"], MelConfig.from_dict(metas[0]["mel"]), combine)


def model_files(ref: str | Path | Sequence[str | Path], tracking: TrackingConfig | None = None) -> list[Path]:
    """Fold model files: a file (or a list of files) as is; in a folder every `best.pt` (else
    `last.pt`, else `.onnx`); a registered model's checkpoints, downloaded."""
    if isinstance(ref, (list, tuple)):
        return [p for r in ref for p in model_files(r, tracking)]
    if str(ref).startswith("models:/"):
        return download_checkpoints(str(ref), tracking or TrackingConfig(), default_work_root() / "registered-models")
    path = Path(ref)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model file or folder")
    for pattern in ("best.pt", "last.pt", "*.onnx"):
        found = sorted(path.rglob(pattern))
        if found:
            return found
    raise FileNotFoundError(f"{path}: no best.pt, last.pt or .onnx model below it")


def onnx_for(checkpoint: Path) -> Path:
    """`best.onnx` beside `best.pt`, exported if absent or older than the checkpoint.

    A read-only model folder (a Kaggle input) gets its ONNX file in the temp folder instead.
    """
    from birdpipe.models.export import export_onnx
    from birdpipe.models.sed import load_model

    onnx = checkpoint.with_suffix(".onnx")
    if onnx.exists() and onnx.stat().st_mtime >= checkpoint.stat().st_mtime:
        return onnx
    model, meta = load_model(checkpoint)
    mel = MelConfig.from_dict(meta["mel"])
    try:
        return export_onnx(model, onnx, mel.n_mels, mel.n_frames, meta)
    except PermissionError:
        key = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:16]
        fallback = Path(tempfile.gettempdir()) / "birdpipe-onnx" / f"{key}.onnx"
        return export_onnx(model, fallback, mel.n_mels, mel.n_frames, meta)
