"""Typed configuration of every pipeline stage.

One dataclass per stage, all in this module so that a user finds every parameter in one
place. A `PipelineConfig` is read from a TOML file (sections named like the fields below);
each stage's `version(...)` hash becomes the Dagster `code_version` of its asset and the
name of its output folder, so a changed parameter marks that asset and everything after it
as unsynced, and two parameter sets coexist on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Bumped when the meaning of a cached artefact changes without a parameter change.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MelConfig:
    """Log-mel spectrogram of fixed windows, with optional spectral-gating noise reduction."""

    sample_rate: int = 32000
    window_seconds: float = 5.0
    stride_seconds: float = 5.0
    #: A trailing part shorter than this is dropped; a recording shorter than one window
    #: always yields one zero-padded window.
    min_tail_seconds: float = 1.0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 40.0
    fmax: float = 15000.0
    #: Dynamic range kept below each window's peak, in dB.
    top_db: float = 80.0
    #: "minmax": each window scaled to [0, 1]; "none": raw dB.
    normalize: Literal["minmax", "none"] = "minmax"
    noise_reduce: bool = True
    noise_mode: Literal["stationary", "nonstationary"] = "stationary"
    #: Gate threshold: mean + n_std * std of the noise statistics per band.
    noise_n_std: float = 1.5
    noise_prop_decrease: float = 1.0
    #: Non-stationary mode: length of the running noise estimate.
    noise_time_constant_s: float = 2.0
    #: Noise statistics are estimated over chunks of this length (bounded memory).
    noise_chunk_seconds: float = 60.0
    #: Soft-mask smoothing across frequency and time (noisereduce's defaults).
    noise_freq_smooth_hz: float = 500.0
    noise_time_smooth_ms: float = 50.0
    #: Non-stationary mode: gate opens this many times above the running estimate...
    noise_thresh_n_mult: float = 2.0
    #: ...with this sigmoid slope.
    noise_sigmoid_slope: float = 10.0
    dtype: Literal["float16", "float32"] = "float16"

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def stride_samples(self) -> int:
        return int(round(self.stride_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Frames per window (centred STFT)."""
        return 1 + self.window_samples // self.hop_length


@dataclass(frozen=True)
class CacheConfig:
    """How the mel cache is built; none of it changes the cache's content."""

    #: Worker processes; 0 means one per CPU core.
    workers: int = 0
    #: Upper bound of one Parquet shard file, in MiB.
    shard_max_mb: int = 256
    zstd_level: int = 3
    #: Dagster partitions of the cache (a backfill fans out over them).
    partitions: int = 1
    #: Windows per Parquet row group: the unit a random read decompresses.
    row_group_windows: int = 8


@dataclass(frozen=True)
class FoldConfig:
    n_folds: int = 5
    seed: int = 42
    #: Keep recordings sharing this metadata column (e.g. "author") in one fold.
    group_column: str | None = None
    #: Species with fewer recordings are never held out (fold -1): every fold model learns
    #: them, and they get no out-of-fold prediction. 0 holds every recording out once.
    always_train_below: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """timm backbone + SED attention head."""

    backbone: str = "efficientnet_b0"
    in_chans: int = 1
    #: Local weights file (timm checkpoint or state dict); never downloaded.
    pretrained_weights: str | None = None
    drop_rate: float = 0.2
    drop_path_rate: float = 0.1
    #: Inference mix of clip-wise and frame-wise-max probabilities.
    clip_weight: float = 0.75


@dataclass(frozen=True)
class AugmentConfig:
    """Each augmentation's probability; 0 disables it."""

    gaussian_noise_p: float = 0.0
    pink_noise_p: float = 0.0
    gain_p: float = 0.0
    pitch_shift_p: float = 0.0
    time_shift_p: float = 0.0
    background_p: float = 0.0
    #: Folder of unlabeled audio mixed in as background (default: the dataset's soundscapes).
    background_dir: str | None = None
    time_mask_p: float = 0.0
    freq_mask_p: float = 0.0
    mixup_p: float = 0.0
    #: Mixup targets: element-wise max of both label vectors instead of the blend.
    mixup_max_labels: bool = True
    cutmix_p: float = 0.0
    #: Beta(alpha, alpha) draws the mixup weight and the cutmix length.
    mixup_alpha: float = 0.5
    #: Time extension: the crop keeps a random 50-100 % of its audio at a random place and
    #: fills the rest with `extend_fill` (silence, or a stretch of background audio).
    time_extend_p: float = 0.0
    extend_fill: Literal["silence", "background"] = "silence"
    #: Signal-to-background ratio range of background mixing.
    background_snr_db: tuple[float, float] = (3.0, 30.0)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: Literal["bce", "weighted_bce", "focal", "soft_auc"] = "bce"
    focal_gamma: float = 2.0
    secondary_weight: float = 0.5
    label_smoothing: float = 0.0
    rating_weights: bool = True
    #: Which windows of a recording one epoch draws: "first", "random" or "both".
    crop: Literal["first", "random", "both"] = "both"
    #: "first": the first N seconds of each recording.
    first_seconds: float = 5.0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: int = 1
    min_lr: float = 1e-6
    grad_clip: float = 2.0
    #: Loss on the frame-wise max logits, added to the clip-wise loss with this weight.
    frame_loss_weight: float = 0.5
    #: weighted_bce: class weight (N / count) ** power.
    class_weight_power: float = 0.5
    patience: int = 5
    metric: Literal["roc_auc", "cmap"] = "roc_auc"
    num_workers: int = 0
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    amp: bool = True
    seed: int = 42


@dataclass(frozen=True)
class ThresholdConfig:
    #: F1-type objective the thresholds maximise on out-of-fold predictions:
    #: "f1_micro_rows" the 2021 row-wise F1 (with nocall), "f1_macro" per-species F1
    #: averaged, "balanced_accuracy" the 2022 weighted accuracy.
    objective: Literal["f1_micro_rows", "f1_macro", "balanced_accuracy"] = "f1_macro"
    #: Species with fewer out-of-fold positives are shrunk toward the global threshold
    #: (weight positives / shrink_positives on their own threshold).
    shrink_positives: int = 10
    #: Candidate thresholds, evenly spaced strictly between 0 and 1.
    grid_size: int = 199
    #: Coordinate-ascent passes over species for the non-separable row-wise objective.
    sweeps: int = 2


@dataclass(frozen=True)
class SubmissionConfig:
    #: "2021": row_id,birds; "2022": row_id,target; "2023"-"2025": probabilities.
    format: Literal["2021", "2022", "2023", "2024", "2025"] = "2025"
    ensemble: Literal["mean", "median", "max"] = "mean"
    #: Kernel smoothing probabilities across neighbouring windows; empty disables it.
    smoothing: tuple[float, ...] = ()
    #: Soundscape folder relative to the dataset root; default: the first that exists of
    #: test_soundscapes, unlabeled_soundscapes, train_soundscapes.
    soundscape_dir: str | None = None
    #: 2022 format: JSON list of scored species, relative to the dataset root.
    scored_birds: str | None = None
    batch_size: int = 64
    use_onnx: bool = True
    raven_tables: bool = True


@dataclass(frozen=True)
class TrackingConfig:
    #: Default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/data/mlflow.db.
    tracking_uri: str | None = None
    experiment: str = "birdpipe"
    #: The Dagster assets register `<registered_model>-<dataset folder name>`.
    registered_model: str = "birdpipe-sed"
    model_alias: str = "candidate"


@dataclass(frozen=True)
class PipelineConfig:
    mel: MelConfig = field(default_factory=MelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


CONFIG_ENV = "BIRDPIPE_CONFIG"


def version(*parts: Any) -> str:
    """Short stable hash of configs and values: the code_version and folder name of a stage."""
    payload = json.dumps([_plain(p) for p in parts] + [SCHEMA_VERSION], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read a TOML config (default: $BIRDPIPE_CONFIG); missing keys keep their defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return PipelineConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: birdpipe config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(PipelineConfig, data, where=str(path))


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for [{cls.__name__}]; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value, where=f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return _plain(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train.model.backbone": ...}`: flat keys for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in _plain(cfg).items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
