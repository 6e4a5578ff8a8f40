"""Training of one fold: seeded epochs, validation on held-out windows, checkpoints, resume, MLflow.

Every epoch's randomness (crops, order, dropout, augmentations, loader workers) is seeded
from (seed, epoch), not from a stream carried across epochs; so a run killed after epoch k
and restarted from `last.pt` redoes epoch k + 1 exactly as an uninterrupted run would.
`last.pt` is written after every epoch (atomically) with the optimiser, scheduler, scaler,
history and MLflow run id; `best.pt` holds the best-scoring weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from birdpipe import metrics, tracking as trk
from birdpipe.augment import batch_augment, uses_waveform, waveform_augment
from birdpipe.config import TrackingConfig, TrainConfig, version
from birdpipe.dataset import MelWindows, Targets, WaveWindows, background_filler, epoch_crops, fold_windows, make_loader
from birdpipe.labels import class_weights, target_matrix
from birdpipe.losses import make_loss
from birdpipe.models import SedModel, build_model, model_meta, probabilities, read_checkpoint, save_checkpoint
from birdpipe.paths import list_audio

#: Background audio, in order of preference, below the dataset root (never the test set).
BACKGROUND_DIRS = ("unlabeled_soundscapes", "train_soundscapes")


@dataclass
class FoldResult:
    fold: int
    best_checkpoint: Path
    last_checkpoint: Path
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
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


def select_device(pref: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; an explicit choice is taken as is."""
    if pref != "auto":
        return torch.device(pref)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def score_fn(metric: str) -> Callable[[np.ndarray, np.ndarray], float]:
    return {"roc_auc": metrics.macro_auc, "cmap": metrics.padded_cmap}[metric]


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device, clip_weight: float) -> np.ndarray:
    """Blended probabilities `[n, C]` of mel batches, in eval mode (the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    out = []
    for x in batches:
        clip, frame = model(x.to(device, non_blocking=True))
        out.append(probabilities(clip.float(), frame.float(), clip_weight).cpu().numpy())
    model.train(was_training)
    n_classes = getattr(model, "n_classes", 0)
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def predict_windows(model: nn.Module, mels: np.ndarray, batch_size: int, device: torch.device | str, clip_weight: float) -> np.ndarray:
    """Probabilities `[n, C]` of in-memory mels `[n, n_mels, T]` (out-of-fold predictions)."""
    device = torch.device(device)
    batches = (torch.from_numpy(np.asarray(mels[i : i + batch_size], np.float32)) for i in range(0, len(mels), batch_size))
    return predict_batches(model.to(device), batches, device, clip_weight)


def plot_history(history: list[dict[str, float]], path: str | Path) -> Path:
    """Training curve PNG: losses on the left axis, the validation score on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("train_loss", "val_loss"):
        ax.plot(epochs, [h.get(key, math.nan) for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    score = ax.twinx()
    score.plot(epochs, [h.get("val_score", math.nan) for h in history], color="tab:green", marker="s", label="val_score")
    score.set_ylabel("validation score")
    fig.legend(loc="upper center", ncol=3, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _background_files(cfg: TrainConfig, audio_root: Path | None) -> list[Path]:
    """Background audio for mixing and time extension; empty when neither uses it."""
    aug = cfg.augment
    if not (aug.background_p > 0 or (aug.time_extend_p > 0 and aug.extend_fill == "background")):
        return []
    folder = _background_dir(aug.background_dir, audio_root)
    files = list_audio(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no background audio files")
    return files


def _background_dir(configured: str | None, audio_root: Path | None) -> Path:
    root = audio_root.parent if audio_root else Path(".")
    if configured:
        return root / configured
    for name in BACKGROUND_DIRS:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no background folder ({', '.join(BACKGROUND_DIRS)}) under {root}")


def train_fold(
    cache: Any,
    folds: pl.DataFrame,
    metadata: pl.DataFrame,
    classes: list[str],
    fold: int,
    cfg: TrainConfig,
    out_dir: Path,
    tracking: TrackingConfig | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    log: Callable[[str], None] = print,
    audio_root: Path | None = None,
) -> FoldResult:
    """Train the fold's model on the other folds; resume from `out_dir/last.pt` when it matches.

    `audio_root` (the dataset's `train_audio`) is needed only with waveform augmentations.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    device = select_device(cfg.device)
    mel = cache.mel_config
    fingerprint = version(cfg, classes, fold, cache.digest, frame_digest(folds.select("filename", "fold")))

    train_w, val_w = fold_windows(cache.windows, folds, metadata, fold)
    if train_w.is_empty() or val_w.is_empty():
        raise ValueError(f"fold {fold}: {train_w.height} training and {val_w.height} validation windows; need both")
    n_rows = cache.windows.height
    targets = Targets.build(train_w, n_rows, classes, cfg.secondary_weight, cfg.label_smoothing, cfg.rating_weights)
    val_rows = val_w["row"].to_numpy()
    val_y = target_matrix(val_w["primary_label"].to_list(), [[]] * val_w.height, classes)

    seed_everything(cfg.seed)
    model = build_model(cfg.model, len(classes)).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_recordings = train_w["filename"].n_unique()
    steps_per_epoch = math.ceil(n_recordings * (2 if cfg.crop == "both" else 1) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = steps_per_epoch * cfg.warmup_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.min_lr / cfg.lr)
    )
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    use_amp = cfg.amp and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    loss_fn = make_loss(
        cfg.loss, cfg.focal_gamma, torch.from_numpy(class_weights(targets.y[train_w["row"].to_numpy()], cfg.class_weight_power))
    )

    state = _resume(last_path, fingerprint, model, optimizer, scheduler, scaler, device, log)
    if state.done:
        log(f"fold {fold}: already trained ({state.epoch} epochs, best {state.best_score:.4f}); nothing to do")
        return _result(fold, best_path, last_path, state)

    wave_mode = uses_waveform(cfg.augment)
    if wave_mode:
        if audio_root is None:
            raise ValueError("waveform augmentations decode the recordings: pass audio_root (the train_audio folder)")
        background = _background_files(cfg, audio_root)
        wave_aug = waveform_augment(cfg.augment, mel.sample_rate, background)
        files = train_w["filename"].unique(maintain_order=True).to_list()
        file_index = {f: i for i, f in enumerate(files)}
        file_of_row = {r: file_index[f] for r, f in train_w.select("row", "filename").iter_rows()}
        fill = background_filler(background, mel.sample_rate) if cfg.augment.extend_fill == "background" else None

    def meta(epoch: int, score: float) -> dict[str, Any]:
        return model_meta(model, classes, mel, fold=fold, epoch=epoch, score=score, metric=cfg.metric, fingerprint=fingerprint)

    run_tags = {**(tags or {}), "birdpipe.fold": str(fold), "birdpipe.train_version": version(cfg), "birdpipe.mel_cache_digest": str(cache.digest)}
    run_ctx = (
        trk.stage_run(tracking, f"train-fold-{fold}", run_tags, parent_run_id=parent_run_id, run_id=state.run_id)
        if tracking
        else contextlib.nullcontext()
    )
    with run_ctx as run:
        if tracking and state.run_id is None:
            state.run_id = run.info.run_id
            _log_run_inputs(cfg, mel, cache, folds, train_w, val_w, fold, device, classes)
        log(f"fold {fold}: {n_recordings} training recordings, {val_w.height} validation windows, device {device}"
            + (f", resuming after epoch {state.epoch}" if state.epoch else ""))  # fmt: skip

        for epoch in range(state.epoch, cfg.epochs):
            started = time.perf_counter()
            seed_everything(cfg.seed * 1000 + epoch)
            rng = np.random.default_rng([cfg.seed, epoch])
            crops = epoch_crops(train_w, cfg.crop, cfg.first_seconds, mel.window_seconds, wave_mode, rng)
            dataset = (
                WaveWindows([audio_root / f for f in files], crops, file_of_row, targets, mel, wave_aug, cfg.augment.time_extend_p, fill)
                if wave_mode
                else MelWindows(cache, crops["row"].to_numpy(), targets)
            )
            loader = make_loader(dataset, cfg.batch_size, cfg.num_workers, cfg.seed * 1000 + epoch, pin_memory=cuda)
            train_loss = _train_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, cfg, rng, device, use_amp, amp_dtype)

            val_loader = make_loader(MelWindows(cache, val_rows, targets), cfg.batch_size * 2, cfg.num_workers, cfg.seed)
            probs = predict_batches(model, (x for x, _, _ in val_loader), device, cfg.model.clip_weight)
            val_loss = float(nn.functional.binary_cross_entropy(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6), torch.from_numpy(val_y)))
            score = _safe_score(cfg.metric, val_y, probs)

            state.epoch = epoch + 1
            improved = score > state.best_score
            if improved:
                state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
                save_checkpoint(best_path, model, meta(epoch, score))
            else:
                state.bad_epochs += 1
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": score,
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}  # fmt: skip
            state.history.append(row)
            state.done = state.bad_epochs >= cfg.patience or state.epoch >= cfg.epochs
            if tracking:
                trk.log_metrics({k: v for k, v in row.items() if k != "epoch"} | {"best_score": state.best_score}, step=epoch)
            _save_last(last_path, model, meta(epoch, score), optimizer, scheduler, scaler, state, done=False)
            log(f"fold {fold} epoch {epoch + 1}/{cfg.epochs}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
                f"val_{cfg.metric} {score:.4f}{' (best)' if improved else ''} [{row['seconds']:.1f}s]")  # fmt: skip
            if state.done:
                break

        if not best_path.exists():  # every score was NaN: keep the last weights as "best"
            save_checkpoint(best_path, model, meta(state.epoch - 1, math.nan))
        if tracking:
            state.model_uri, state.model_version = _log_best_model(best_path, out_dir, state, tracking, fold, mel, run_tags)
        _save_last(last_path, model, meta(state.epoch - 1, state.history[-1]["val_score"]), optimizer, scheduler, scaler, state, done=True)
    log(f"fold {fold}: best val_{cfg.metric} {state.best_score:.4f} at epoch {state.best_epoch + 1} of {state.epoch}")
    return _result(fold, best_path, last_path, state)


def _train_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, cfg: TrainConfig, rng, device, use_amp, amp_dtype) -> float:
    """One pass over `loader`; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for x, y, w in loader:
        x, y, w = (t.to(device, non_blocking=True) for t in (x, y, w))
        x, y, w = batch_augment(x, y, w, cfg.augment, rng)
        x = x.unsqueeze(1)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            clip, frame = model(x)
        loss = loss_fn(clip.float(), y, w)
        if cfg.frame_loss_weight:
            loss = loss + cfg.frame_loss_weight * loss_fn(frame.float().amax(dim=1), y, w)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += float(loss.detach()) * len(x)
        count += len(x)
    return total / max(count, 1)


def _safe_score(metric: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """The validation metric, NaN where undefined (e.g. no species with positives and negatives)."""
    try:
        return float(score_fn(metric)(y_true, probs))
    except ValueError:
        return math.nan


def _save_last(path, model, meta, optimizer, scheduler, scaler, state: _State, done: bool) -> None:
    save_checkpoint(
        path, model, meta,
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
        state=dataclasses.asdict(dataclasses.replace(state, done=done)),
    )  # fmt: skip


def _resume(path: Path, fingerprint: str, model, optimizer, scheduler, scaler, device, log) -> _State:
    """Load `last.pt` into the live objects when it was written by the same configuration."""
    if not path.exists():
        return _State()
    ckpt = read_checkpoint(path, device)
    if ckpt["meta"].get("fingerprint") != fingerprint:
        log(f"{path}: written by another configuration or data; starting afresh")
        return _State()
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    return _State(**ckpt["state"])


def _result(fold: int, best: Path, last: Path, state: _State) -> FoldResult:
    return FoldResult(
        fold=fold, best_checkpoint=best, last_checkpoint=last, best_score=state.best_score, best_epoch=state.best_epoch,
        epochs_run=state.epoch, history=state.history, run_id=state.run_id, model_uri=state.model_uri,
        model_version=state.model_version,
    )  # fmt: skip


def _log_run_inputs(cfg, mel, cache, folds, train_w, val_w, fold, device, classes) -> None:
    """Params (every config field) and dataset lineage of a new fold run."""
    import mlflow

    trk.log_params(cfg, "train.")
    trk.log_params(mel, "mel.")
    mlflow.log_params({"fold": fold, "n_classes": len(classes), "train_windows": train_w.height,
                       "val_windows": val_w.height, "device": str(device)})  # fmt: skip
    source = str(getattr(cache, "cache_dir", "mel-cache"))
    trk.log_dataset(train_w.drop("secondary_labels"), "mel-cache-train", str(cache.digest), source, "training")
    trk.log_dataset(val_w.drop("secondary_labels"), "mel-cache-validation", str(cache.digest), source, "validation")
    trk.log_dataset(folds.select("filename", "fold"), "folds", frame_digest(folds.select("filename", "fold")), "folds", "training")


class _ProbabilityModel(nn.Module):
    """What MLflow serves: mels `[B, n_mels, T]` -> blended probabilities `[B, C]`."""

    def __init__(self, model: SedModel, clip_weight: float):
        super().__init__()
        self.model, self.clip_weight = model, clip_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(*self.model(x), self.clip_weight)


def _log_best_model(best_path, out_dir, state: _State, tracking: TrackingConfig, fold, mel, tags) -> tuple[str, str | None]:
    """The best weights as an MLflow model (registered, aliased), plus checkpoint and curve artifacts."""
    import mlflow

    from birdpipe.models import load_model

    model, meta = load_model(best_path)
    example = np.zeros((1, mel.n_mels, mel.n_frames), np.float32)
    aliases = (tracking.model_alias, f"{tracking.model_alias}-fold{fold}") if tracking.model_alias else ()
    uri, model_version = trk.log_torch_model(
        _ProbabilityModel(model, model.cfg.clip_weight).eval(), example, tracking, aliases,
        tags={"fold": str(fold), "score": f"{state.best_score:.6f}", **{k: v for k, v in tags.items() if k.startswith("birdpipe.")}},
    )  # fmt: skip
    mlflow.log_artifact(str(best_path), artifact_path="checkpoint")
    mlflow.log_artifact(str(plot_history(state.history, Path(out_dir) / "history.png")), artifact_path="plots")
    mlflow.log_dict({"classes": meta["classes"], "model": meta["model"], "mel": meta["mel"]}, "model_meta.json")
    return uri, model_version
