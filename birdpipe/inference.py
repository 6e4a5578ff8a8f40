"""Fold-ensemble inference on soundscapes of any length, with or without Dagster.

Every 5 s window of a recording gets a row, the last partial one zero-padded (as a BirdCLEF
submission needs); windows are computed in bounded-memory chunks, each fold model (ONNX
Runtime when available, else torch) scores them, the folds are combined (mean, median or
max) and optionally smoothed across neighbouring windows.

A model reference is a checkpoint file (`best.pt`, or a self-describing `.onnx`), a folder
holding fold folders (`fold-0/best.pt`, ...), or `models:/<name>@<alias>`: the registered
MLflow model version(s) whose runs logged `checkpoint/best.pt` (`birdpipe.training`); when
aliases `<alias>-fold<k>` exist, all of them form the ensemble.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from birdpipe.config import MelConfig, SubmissionConfig, TrackingConfig, from_dict

#: How the fold models' probabilities are combined (over axis 0).
COMBINE = {
    "mean": lambda p: p.mean(axis=0),
    "median": lambda p: np.median(p, axis=0),
    "max": lambda p: p.max(axis=0),
}
MODEL_URI = re.compile(r"models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


class Predictor(Protocol):
    def predict(self, mels: np.ndarray, batch_size: int) -> np.ndarray: ...


@dataclass
class TorchPredictor:
    """A torch fold model behind the same `predict` as `export.OnnxModel`."""

    model: object
    clip_weight: float
    device: str = "cpu"

    def predict(self, mels: np.ndarray, batch_size: int) -> np.ndarray:
        from birdpipe.training import predict_windows

        return predict_windows(self.model, mels, batch_size, self.device, self.clip_weight)


@dataclass
class Ensemble:
    members: list[Predictor]
    classes: list[str]
    #: The mel configuration the models were trained on (from their checkpoints).
    mel: MelConfig
    combine: str = "mean"

    def __post_init__(self):
        if self.combine not in COMBINE:
            raise ValueError(f"unknown ensemble combination {self.combine!r}; known: {', '.join(COMBINE)}")

    def predict(self, mels: np.ndarray, batch_size: int) -> np.ndarray:
        """Combined probabilities `[n, C]` of log-mel windows."""
        return COMBINE[self.combine](np.stack([m.predict(mels, batch_size) for m in self.members]))


def load_ensemble(
    ref: str | Path | Sequence[str | Path],
    use_onnx: bool = True,
    combine: str = "mean",
    tracking: TrackingConfig | None = None,
    threads: int | None = None,
) -> Ensemble:
    """The fold models `ref` names (see the module doc); ONNX files are exported when missing."""
    from birdpipe.export import OnnxModel
    from birdpipe.models import load_model

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
    return Ensemble(members, metas[0]["classes"], from_dict(MelConfig, metas[0]["mel"]), combine)


def model_files(ref: str | Path | Sequence[str | Path], tracking: TrackingConfig | None = None) -> list[Path]:
    """Fold model files: a file (or a list of files) as is; in a folder every `best.pt` (else
    `last.pt`, else `.onnx`); a registered model's checkpoints, downloaded."""
    if isinstance(ref, (list, tuple)):
        return [p for r in ref for p in model_files(r, tracking)]
    if str(ref).startswith("models:/"):
        return _download_registered(str(ref), tracking or TrackingConfig())
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
    from birdpipe.export import export_onnx
    from birdpipe.models import load_model

    onnx = checkpoint.with_suffix(".onnx")
    if onnx.exists() and onnx.stat().st_mtime >= checkpoint.stat().st_mtime:
        return onnx
    model, meta = load_model(checkpoint)
    mel = from_dict(MelConfig, meta["mel"])
    try:
        return export_onnx(model, onnx, mel.n_mels, mel.n_frames, meta)
    except PermissionError:
        key = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:16]
        fallback = Path(tempfile.gettempdir()) / "birdpipe-onnx" / f"{key}.onnx"
        return export_onnx(model, fallback, mel.n_mels, mel.n_frames, meta)


def _download_registered(uri: str, tracking: TrackingConfig) -> list[Path]:
    """The `checkpoint/best.pt` artifact of the run behind each registered version `uri` names."""
    import mlflow

    from birdpipe.paths import default_work_root
    from birdpipe.tracking import tracking_uri

    m = MODEL_URI.fullmatch(uri)
    if not m:
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    uri_store = tracking_uri(tracking)
    client = mlflow.MlflowClient(uri_store)
    name = m["name"]
    try:
        if m["version"]:
            versions = [client.get_model_version(name, m["version"])]
        else:
            aliases = client.get_registered_model(name).aliases
            folds = sorted(a for a in aliases if re.fullmatch(rf"{re.escape(m['alias'])}-fold\d+", a))
            versions = [client.get_model_version_by_alias(name, a) for a in folds or [m["alias"]]]
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"{uri}: {exc.message} (tracking store {uri_store})") from None
    paths = []
    for v in versions:
        # keyed by run too: a recreated registry reuses version numbers for other models
        dst = default_work_root() / "registered-models" / f"{name}-v{v.version}-{v.run_id[:8]}"
        ckpt = dst / "checkpoint" / "best.pt"
        if not ckpt.exists():
            dst.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(
                run_id=v.run_id, artifact_path="checkpoint", dst_path=str(dst), tracking_uri=uri_store
            )
        paths.append(ckpt)
    return paths


def soundscape_mel_config(mel: MelConfig) -> MelConfig:
    """The model's mel config with the submission's window rule: back-to-back windows, and a
    row for any trailing partial window, however short."""
    return dataclasses.replace(mel, stride_seconds=mel.window_seconds, min_tail_seconds=1.0 / mel.sample_rate)


def smooth(probs: np.ndarray, kernel: Sequence[float]) -> np.ndarray:
    """Weighted mean over neighbouring windows (`kernel[i]` weighs offset `i - len // 2`);
    at the ends the weights of the missing neighbours are left out, not zero-filled."""
    if not kernel:
        return probs
    k = np.asarray(kernel, dtype=np.float64)
    if len(k) % 2 == 0 or (k < 0).any() or k.sum() <= 0:
        raise ValueError(f"smoothing kernel must have odd length and non-negative weights, got {list(kernel)}")
    half, n = len(k) // 2, len(probs)
    padded = np.pad(probs.astype(np.float64), ((half, half), (0, 0)))
    present = np.pad(np.ones(n), half)
    total = sum(w * padded[i : i + n] for i, w in enumerate(k))
    norm = sum(w * present[i : i + n] for i, w in enumerate(k))
    return (total / norm[:, None]).astype(np.float32)


def predict_file(ensemble: Ensemble, path: Path, mel_cfg: MelConfig, sub_cfg: SubmissionConfig) -> pl.DataFrame:
    """Window rows of one recording: soundscape_id, end_seconds and one probability column per class."""
    from birdpipe.audio import iter_blocks
    from birdpipe.features import stream_log_mel_windows

    cfg = soundscape_mel_config(mel_cfg)
    probs, starts = [], []
    for mels, start in stream_log_mel_windows(iter_blocks(path, cfg.sample_rate), cfg):
        probs.append(ensemble.predict(mels, sub_cfg.batch_size))
        starts.append(start)
    matrix = smooth(np.concatenate(probs), sub_cfg.smoothing)
    ends = np.rint(np.concatenate(starts) + cfg.window_seconds).astype(np.int64)
    keys = pl.DataFrame({"soundscape_id": [path.stem] * len(ends), "end_seconds": ends})
    return keys.hstack(pl.DataFrame(matrix, schema=ensemble.classes))


def predict_soundscapes(
    ensemble: Ensemble,
    files: Sequence[Path],
    mel_cfg: MelConfig,
    sub_cfg: SubmissionConfig,
    progress: bool = True,
    skip_errors: bool = False,
) -> pl.DataFrame:
    """row_id, soundscape_id, end_seconds and one column per class, for every window of `files`.

    `skip_errors`: an unreadable file is reported on stderr and left out instead of raising.
    """
    from tqdm import tqdm

    from birdpipe.audio import AudioError
    from birdpipe.submission import window_row_id

    parts = []
    bar = tqdm(files, desc="predict", unit="file", disable=not progress, file=sys.stderr)
    windows = 0
    for path in bar:
        try:
            part = predict_file(ensemble, Path(path), mel_cfg, sub_cfg)
        except AudioError as exc:
            if not skip_errors:
                raise
            bar.write(f"skipped {path}: {exc}")
            continue
        parts.append(part)
        windows += part.height
        bar.set_postfix(windows=windows)
    schema = {"soundscape_id": pl.String, "end_seconds": pl.Int64} | dict.fromkeys(ensemble.classes, pl.Float32)
    frame = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    return frame.select(window_row_id(), pl.all())


def predict_cli(
    model: str,
    audio: Path,
    out: Path,
    fmt: str | None,
    submission: SubmissionConfig,
    tracking: TrackingConfig,
    batch_size: int,
    use_onnx: bool,
    thresholds: Path | None = None,
    raven: Path | None = None,
) -> int:
    """`birdpipe predict`: a submission-format CSV for an audio file or every file below a folder."""
    from birdpipe.paths import list_audio
    from birdpipe.submission import check_format, load_scored_birds, raven_tables, write_submission
    from birdpipe.thresholds import Thresholds

    check_format(fmt or submission.format)
    files = [audio] if audio.is_file() else list_audio(audio) if audio.is_dir() else None
    if files is None:
        raise FileNotFoundError(f"{audio}: no such audio file or folder")
    if not files:
        raise ValueError(f"{audio}: no audio files below it")
    sub_cfg = dataclasses.replace(submission, format=fmt or submission.format, batch_size=batch_size)
    ensemble = load_ensemble(model, use_onnx=use_onnx, combine=sub_cfg.ensemble, tracking=tracking)
    th = Thresholds.from_json(thresholds) if thresholds else None
    if th is None and sub_cfg.format in ("2021", "2022"):
        print("no --thresholds given: deciding at 0.5 for every species", file=sys.stderr)
    preds = predict_soundscapes(ensemble, files, ensemble.mel, sub_cfg, skip_errors=True)
    scored = load_scored_birds(sub_cfg.scored_birds) if sub_cfg.format == "2022" and sub_cfg.scored_birds else None
    write_submission(preds, ensemble.classes, th, sub_cfg, out, scored_birds=scored)
    if raven:
        raven_tables(preds, ensemble.classes, th, raven, ensemble.mel)
    backend = "onnxruntime" if use_onnx else "torch"
    print(
        f"{preds['soundscape_id'].n_unique()} files, {preds.height} windows, {len(ensemble.members)} "
        f"fold model(s) ({backend}) -> {out} (format {sub_cfg.format})"
    )
    return 0
