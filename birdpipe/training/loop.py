"""Training of one fold: seeded epochs, validation on held-out windows, checkpoints, resume, MLflow.

`train_fold` runs three steps over one typed context (`FoldRun`): `setup_fold` builds the
samples, model, optimiser and schedule and resumes from `last.pt` when it was written by the
same configuration and data; `run_epoch` trains, validates and checkpoints one epoch;
`finish_fold` keeps the best weights and logs the model.

Every epoch's randomness (crops, order, dropout, augmentations, loader workers) is seeded
from (seed, epoch), not from a stream carried across epochs; so a run killed after epoch k
and restarted from `last.pt` redoes epoch k + 1 exactly as an uninterrupted run would.
`last.pt` is written after every epoch (atomically) with the optimiser, scheduler, scaler,
history and MLflow run id; `best.pt` holds the best-scoring weights.

Under `torchrun` (`training.ddp`) every rank runs `train_fold`: DDP averages the gradients,
each rank trains on its share of the epoch's crops, every rank validates on all windows
(rank 0's score decides), and rank 0 alone writes checkpoints and MLflow runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from birdpipe import tracking as trk
from birdpipe.data.labels import class_weights, target_matrix
from birdpipe.evaluation.metrics import VALIDATION_METRICS
from birdpipe.evaluation.plots import plot_history
from birdpipe.features.reader import CacheReader
from birdpipe.models.predict import predict_batches, select_device
from birdpipe.models.sed import ProbabilityModel, SedModel, build_model, load_model, model_meta, read_checkpoint, save_checkpoint
from birdpipe.paths import list_audio
from birdpipe.schema import version
from birdpipe.training.augment import WaveContext, batch_augment, waveform_augment
from birdpipe.training.config import TrainConfig
from birdpipe.training.distributed import Ranks, current
from birdpipe.training.losses import LossFn, LossParams, make_loss
from birdpipe.training.samples import (
    Batch,
    MelWindows,
    Targets,
    WaveWindows,
    background_filler,
    epoch_crops,
    fold_windows,
    make_loader,
    teacher_rows,
)

#: Background audio, in order of preference, below the dataset root (never the test set).
BACKGROUND_DIRS = ("unlabeled_soundscapes", "train_soundscapes")


@dataclass(frozen=True)
class FoldData:
    """What every fold trains on: the cache, the split, the labels, and the audio for waveform mode."""

    cache: CacheReader
    folds: pl.DataFrame
    metadata: pl.DataFrame
    classes: list[str]
    #: The dataset's audio folder (`train_audio`, 2021's `train_short_audio`); needed only with waveform augmentations.
    audio_root: Path | None = None
    #: The distillation teacher's scores per 5 s window (`filename, window_index, <class>...`).
    teacher: pl.DataFrame | None = None

    @property
    def teacher_digest(self) -> str | None:
        return frame_digest(self.teacher) if self.teacher is not None else None


@dataclass(frozen=True)
class FoldTracking:
    """Where a fold's MLflow run goes and how it is tagged."""

    config: trk.TrackingConfig
    tags: Mapping[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None


@dataclass
class FoldResult:
    fold: int
    best_checkpoint: Path
    last_checkpoint: Path
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    #: The training curve (PNG) beside the checkpoints.
    curve: Path | None = None
    run_id: str | None = None
    model_uri: str | None = None
    model_version: str | None = None


@dataclass
class _State:
    """What `last.pt` carries besides the weights."""

    epoch: int = 0  # epochs completed
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None
    model_uri: str | None = None
    model_version: str | None = None
    done: bool = False


@dataclass
class _WaveSource:
    """Waveform mode: the training recordings and the transforms applied to their crops."""

    paths: list[Path]
    file_of_row: dict[int, int]
    augment: Callable[[np.ndarray], np.ndarray] | None


@dataclass
class FoldRun:
    """Everything one fold's epochs share: built by `setup_fold`, advanced by `run_epoch`."""

    fold: int
    cfg: TrainConfig
    data: FoldData
    out_dir: Path
    device: torch.device
    model: SedModel
    #: What the optimiser steps through: the model, or its DDP wrapper under torchrun.
    net: nn.Module
    ranks: Ranks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: LossFn
    amp_dtype: torch.dtype | None  # None: full precision
    train_windows: pl.DataFrame
    val_windows: pl.DataFrame
    targets: Targets
    val_truth: np.ndarray
    #: Hash of everything that defines this fold's training; `last.pt` of another is not resumed.
    fingerprint: str
    wave: _WaveSource | None
    state: _State
    log: Callable[[str], None]

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    def meta(self, epoch: int, score: float) -> dict[str, Any]:
        return model_meta(self.model, self.data.classes, self.data.cache.mel_config, fold=self.fold, epoch=epoch,
                          score=score, metric=self.cfg.metric, fingerprint=self.fingerprint)  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def frame_digest(df: pl.DataFrame) -> str:
    return hashlib.sha256(str(df.hash_rows().sum()).encode() + str(df.columns).encode()).hexdigest()[:16]


def train_fold(
    data: FoldData,
    fold: int,
    cfg: TrainConfig,
    out_dir: Path,
    tracking: FoldTracking | None = None,
    log: Callable[[str], None] = print,
) -> FoldResult:
    """Train the fold's model on the other folds; resume from `out_dir/last.pt` when it matches.
    Under torchrun, every rank calls it; only rank 0 logs, tracks and writes."""
    ranks = current()
    if not ranks.main:
        tracking, log = None, _quiet
    run = setup_fold(data, fold, cfg, out_dir, log)
    if run.state.done:
        log(f"fold {fold}: already trained ({run.state.epoch} epochs, best {run.state.best_score:.4f}); nothing to do")
        return _result(run)
    run_ctx = (
        trk.stage_run(tracking.config, f"train-fold-{fold}", _run_tags(run, tracking), tracking.parent_run_id, run.state.run_id)
        if tracking
        else contextlib.nullcontext()
    )
    with run_ctx as mlflow_run:
        if tracking and run.state.run_id is None:
            run.state.run_id = mlflow_run.info.run_id
            _log_run_inputs(run)
        log(f"fold {fold}: {run.train_windows['filename'].n_unique()} training recordings, {run.val_windows.height} "
            f"validation windows, device {run.device}" + (f", resuming after epoch {run.state.epoch}" if run.state.epoch else ""))  # fmt: skip
        for epoch in range(run.state.epoch, cfg.epochs):
            run_epoch(run, epoch, log_metrics=tracking is not None)
            if run.state.done:
                break
        result = finish_fold(run, tracking)
    log(f"fold {fold}: best val_{cfg.metric} {run.state.best_score:.4f} at epoch {run.state.best_epoch + 1} of {run.state.epoch}")
    return result


def setup_fold(data: FoldData, fold: int, cfg: TrainConfig, out_dir: Path, log: Callable[[str], None] = print) -> FoldRun:
    """Samples, model, optimiser, schedule and loss of one fold, resumed from `last.pt` if it matches."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache, classes = data.cache, data.classes
    train_w, val_w = fold_windows(cache.windows, data.folds, data.metadata, fold)
    if train_w.is_empty() or val_w.is_empty():
        raise ValueError(f"fold {fold}: {train_w.height} training and {val_w.height} validation windows; need both")
    teacher = None
    if cfg.distill.teacher:
        if data.teacher is None:
            raise ValueError(f"[train.distill] teacher = {cfg.distill.teacher!r}, but no teacher scores were given")
        teacher = teacher_rows(cache.windows, data.teacher, classes, cache.mel_config.window_seconds)
    targets = Targets.build(train_w, cache.windows.height, classes, cfg.secondary_weight, cfg.label_smoothing,
                            cfg.rating_weights, teacher, cfg.distill.weight)  # fmt: skip

    ranks = current()
    device = ranks.device(select_device(cfg.device))
    seed_everything(cfg.seed)
    model = build_model(cfg.model, len(classes)).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(train_w["filename"].n_unique() * (2 if cfg.crop == "both" else 1) / (cfg.batch_size * ranks.world))
    total, warmup = steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.warmup_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, cfg.min_lr / cfg.lr))
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cfg.amp and cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    weights = torch.from_numpy(class_weights(targets.y[train_w["row"].to_numpy()], cfg.class_weight_power))
    loss_fn = make_loss(cfg.loss, LossParams(class_weight=weights, focal_gamma=cfg.focal_gamma))

    run = FoldRun(
        fold=fold, cfg=cfg, data=data, out_dir=out_dir, device=device, model=model, net=model, ranks=ranks, optimizer=optimizer,
        scheduler=scheduler, scaler=scaler, loss_fn=loss_fn, amp_dtype=amp_dtype, train_windows=train_w,
        val_windows=val_w, targets=targets,
        val_truth=target_matrix(val_w["primary_label"].to_list(), [[]] * val_w.height, classes),
        fingerprint=version(cfg, classes, fold, cache.digest, frame_digest(data.folds.select("filename", "fold")),
                            *([data.teacher_digest] if teacher is not None else []), *([ranks.world] if ranks.distributed else [])),
        wave=_wave_source(cfg, train_w, cache.mel_config.sample_rate, data.audio_root) if cfg.augment.uses_waveform else None,
        state=_State(), log=log,
    )  # fmt: skip
    run.state = _resume(run)
    run.net = ranks.wrap(model, device)  # after resuming: DDP starts every rank from rank 0's weights
    return run


def run_epoch(run: FoldRun, epoch: int, log_metrics: bool = False) -> dict[str, float]:
    """Train one epoch, validate, checkpoint (`best.pt` if it improved, `last.pt` always)."""
    cfg, state = run.cfg, run.state
    started = time.perf_counter()
    seed_everything(cfg.seed * 1000 + epoch)
    rng = np.random.default_rng([cfg.seed, epoch])
    train_loss = train_steps(run, epoch_loader(run, epoch, rng), rng)

    val = MelWindows(run.data.cache, run.val_windows["row"].to_numpy(), run.targets)
    val_loader = make_loader(val, cfg.batch_size * 2, cfg.num_workers, cfg.seed)
    probs = predict_batches(run.model, (x for x, _, _ in val_loader), run.device, cfg.model.clip_weight)
    val_loss = float(nn.functional.binary_cross_entropy(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6), torch.from_numpy(run.val_truth)))
    score = run.ranks.from_main(_safe_score(cfg.metric, run.val_truth, probs))

    state.epoch = epoch + 1
    improved = score > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        if run.ranks.main:
            save_checkpoint(run.best_path, run.model, run.meta(epoch, score))
    else:
        state.bad_epochs += 1
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": score,
           "lr": run.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}  # fmt: skip
    state.history.append(row)
    state.done = state.bad_epochs >= cfg.patience or state.epoch >= cfg.epochs
    if log_metrics:
        trk.log_metrics({k: v for k, v in row.items() if k != "epoch"} | {"best_score": state.best_score}, step=epoch)
    if run.ranks.main:
        _save_last(run, run.meta(epoch, score), done=False)
    run.log(f"fold {run.fold} epoch {epoch + 1}/{cfg.epochs}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
            f"val_{cfg.metric} {score:.4f}{' (best)' if improved else ''} [{row['seconds']:.1f}s]")  # fmt: skip
    return row


def finish_fold(run: FoldRun, tracking: FoldTracking | None = None) -> FoldResult:
    """Keep the best weights (the last ones if no score was defined), plot the curve, log the model."""
    state = run.state
    if not run.ranks.main:
        return _result(run)
    if not run.best_path.exists():  # every score was NaN: keep the last weights as "best"
        save_checkpoint(run.best_path, run.model, run.meta(state.epoch - 1, math.nan))
    curve = plot_history(state.history, run.out_dir / "history.png")
    if tracking:
        state.model_uri, state.model_version = _log_best_model(run, tracking, curve)
    _save_last(run, run.meta(state.epoch - 1, state.history[-1]["val_score"]), done=True)
    return _result(run, curve)


def epoch_loader(run: FoldRun, epoch: int, rng: np.random.Generator) -> torch.utils.data.DataLoader:
    """The epoch's training batches: its crops, from the cache or decoded (waveform mode)."""
    cfg, mel = run.cfg, run.data.cache.mel_config
    crops = epoch_crops(run.train_windows, cfg.crop, cfg.first_seconds, mel.window_seconds, run.wave is not None, rng)
    samples = (
        WaveWindows(run.wave.paths, crops, run.wave.file_of_row, run.targets, mel, run.wave.augment)
        if run.wave
        else MelWindows(run.data.cache, crops["row"].to_numpy(), run.targets)
    )
    return make_loader(samples, cfg.batch_size, cfg.num_workers, cfg.seed * 1000 + epoch, pin_memory=run.device.type == "cuda",
                       sampler=run.ranks.sampler(samples))  # fmt: skip


def train_steps(run: FoldRun, loader: Iterable[Batch], rng: np.random.Generator) -> float:
    """One optimiser step per batch of `loader` (batches may already be on the device); returns
    the mean loss. Public so that benchmarks time the very steps `train_fold` runs."""
    cfg, model, device = run.cfg, run.net, run.device
    model.train()
    total, count = 0.0, 0
    for x, y, w in loader:
        x, y, w = (t.to(device, non_blocking=True) for t in (x, y, w))
        x, y, w = batch_augment(x, y, w, cfg.augment, rng)
        x = x.unsqueeze(1)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=run.amp_dtype or torch.bfloat16, enabled=run.amp_dtype is not None):
            clip, frame = model(x)
        loss = run.loss_fn(clip.float(), y, w)
        if cfg.frame_loss_weight:
            loss = loss + cfg.frame_loss_weight * run.loss_fn(frame.float().amax(dim=1), y, w)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.grad_clip:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        total += float(loss.detach()) * len(x)
        count += len(x)
    total, count = run.ranks.sum(total, count)
    return total / max(count, 1)


def _quiet(message: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for the fold."""


def _wave_source(cfg: TrainConfig, train_w: pl.DataFrame, sample_rate: int, audio_root: Path | None) -> _WaveSource:
    """Waveform mode: the recordings to decode and the configured transforms."""
    if audio_root is None:
        raise ValueError("waveform augmentations decode the recordings: pass audio_root (the dataset's audio folder)")
    background = _background_files(cfg, audio_root)
    fill = background_filler(background, sample_rate) if background and cfg.augment.extend_fill == "background" else None
    ctx = WaveContext(sample_rate, background, cfg.augment.background_snr_db, fill)
    files = train_w["filename"].unique(maintain_order=True).to_list()
    index = {f: i for i, f in enumerate(files)}
    return _WaveSource(
        paths=[audio_root / f for f in files],
        file_of_row={r: index[f] for r, f in train_w.select("row", "filename").iter_rows()},
        augment=waveform_augment(cfg.augment, ctx),
    )


def _background_files(cfg: TrainConfig, audio_root: Path) -> list[Path]:
    """Background audio for mixing and time extension; empty when neither uses it."""
    if not cfg.augment.uses_background:
        return []
    folder = _background_dir(cfg.augment.background_dir, audio_root)
    files = list_audio(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no background audio files")
    return files


def _background_dir(configured: str | None, audio_root: Path) -> Path:
    root = audio_root.parent
    if configured:
        return root / configured
    for name in BACKGROUND_DIRS:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no background folder ({', '.join(BACKGROUND_DIRS)}) under {root}")


def _safe_score(metric: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """The validation metric, NaN where undefined (e.g. no species with positives and negatives)."""
    try:
        return float(VALIDATION_METRICS.get(metric)(y_true, probs))
    except ValueError:
        return math.nan


def _save_last(run: FoldRun, meta: dict[str, Any], done: bool) -> None:
    save_checkpoint(
        run.last_path, run.model, meta,
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
        state=dataclasses.asdict(dataclasses.replace(run.state, done=done)),
    )  # fmt: skip


def _resume(run: FoldRun) -> _State:
    """Load `last.pt` into the live objects when it was written by the same configuration."""
    if not run.last_path.exists():
        return _State()
    ckpt = read_checkpoint(run.last_path, run.device)
    if ckpt["meta"].get("fingerprint") != run.fingerprint:
        run.log(f"{run.last_path}: written by another configuration or data; starting afresh")
        return _State()
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    return _State(**ckpt["state"])


def _result(run: FoldRun, curve: Path | None = None) -> FoldResult:
    s = run.state
    curve = curve or (run.out_dir / "history.png" if (run.out_dir / "history.png").exists() else None)
    return FoldResult(
        fold=run.fold, best_checkpoint=run.best_path, last_checkpoint=run.last_path, best_score=s.best_score,
        best_epoch=s.best_epoch, epochs_run=s.epoch, history=s.history, curve=curve, run_id=s.run_id,
        model_uri=s.model_uri, model_version=s.model_version,
    )  # fmt: skip


def _run_tags(run: FoldRun, tracking: FoldTracking) -> dict[str, str]:
    tags = {**tracking.tags, "birdpipe.fold": str(run.fold), "birdpipe.mel_cache_digest": str(run.data.cache.digest)}
    if run.cfg.distill.teacher:
        tags |= {"birdpipe.teacher": run.cfg.distill.teacher, "birdpipe.teacher_digest": str(run.data.teacher_digest)}
    return tags


def _log_run_inputs(run: FoldRun) -> None:
    """Params (every config field) and dataset lineage of a new fold run."""
    cache, folds = run.data.cache, run.data.folds.select("filename", "fold")
    trk.log_params(run.cfg, "train.")
    trk.log_params(cache.mel_config, "mel.")
    trk.log_params({"fold": run.fold, "n_classes": len(run.data.classes), "train_windows": run.train_windows.height,
                    "val_windows": run.val_windows.height, "device": str(run.device)})  # fmt: skip
    source = str(getattr(cache, "cache_dir", "mel-cache"))
    trk.log_dataset(run.train_windows.drop("secondary_labels"), "mel-cache-train", str(cache.digest), source, "training")
    trk.log_dataset(run.val_windows.drop("secondary_labels"), "mel-cache-validation", str(cache.digest), source, "validation")
    trk.log_dataset(folds, "folds", frame_digest(folds), "folds", "training")


def _model_description(run: FoldRun, tracking: FoldTracking) -> str:
    """What a registered fold model was made of: data, folds, score and config version."""
    folds = run.data.folds
    n_folds = folds.filter(pl.col("fold") >= 0)["fold"].n_unique()
    dataset = tracking.tags.get("birdpipe.dataset", str(getattr(run.data.cache, "cache_dir", "the mel cache")))
    config = tracking.tags.get("birdpipe.train_version") or version(run.cfg, run.data.cache.mel_config)
    return (
        f"SED fold model {run.fold} of {n_folds} ({run.cfg.model.backbone}), trained on {dataset}: "
        f"{run.train_windows['filename'].n_unique()} recordings of {folds.height} (the other folds), mel cache "
        f"{str(run.data.cache.digest)[:12]}; best val_{run.cfg.metric} {run.state.best_score:.4f} at epoch "
        f"{run.state.best_epoch + 1}. Config version {config}."
    )


def _log_best_model(run: FoldRun, tracking: FoldTracking, curve: Path) -> tuple[str, str | None]:
    """The best weights as an MLflow model (registered, aliased), plus checkpoint and curve artifacts."""
    model, meta = load_model(run.best_path)
    mel, cfg = run.data.cache.mel_config, tracking.config
    example = np.zeros((1, mel.n_mels, mel.n_frames), np.float32)
    aliases = (cfg.model_alias, f"{cfg.model_alias}-fold{run.fold}") if cfg.model_alias else ()
    tags = {"fold": str(run.fold), "score": f"{run.state.best_score:.6f}",
            **{k: v for k, v in tracking.tags.items() if k.startswith("birdpipe.")}}  # fmt: skip
    uri, model_version = trk.log_torch_model(ProbabilityModel(model, model.cfg.clip_weight).eval(), example, cfg, aliases, tags,
                                             _model_description(run, tracking))  # fmt: skip
    trk.log_artifact(run.best_path, "checkpoint")
    trk.log_artifact(curve, "plots")
    trk.log_dict({"classes": meta["classes"], "model": meta["model"], "mel": meta["mel"]}, "model_meta.json")
    return uri, model_version
