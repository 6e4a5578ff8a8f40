"""Augmentations: waveform ones per sample in the loader, spectrogram and mixing ones per batch.

Both kinds are registries keyed by the names the config uses:

    [train.augment.waveform]      # name = probability
    pink_noise = 0.3
    [train.augment.batch]
    time_mask = 0.5
    mixup = 0.5

Waveform transforms (`WAVE_AUGMENTATIONS`: noise, gain, pitch, shift, background, time
extension; mostly audiomentations) run in the data-loader workers before the mel is computed,
in registry order; they draw from `random` / `np.random`, which the loader seeds per worker and
epoch. Batch transforms (`BATCH_AUGMENTATIONS`: SpecAugment masks, mixup, cutmix) run on the
training device, in registry order, and draw their parameters from a numpy `Generator`, so an
epoch's augmentations depend only on (seed, epoch). A transform with probability 0 is the identity.

torch and audiomentations are imported inside the functions that use them: the config
validates names against these registries, and loading a config must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from birdpipe.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

    from birdpipe.training.config import AugmentConfig

WaveAugment = Callable[[np.ndarray], np.ndarray]
Batch = tuple["Tensor", "Tensor", "Tensor"]

#: Pink noise falls by 3.01 dB per octave.
PINK_DECAY_DB = -3.01
#: SpecAugment as in BirdCLEF solutions: up to 3 masks of up to 20 frames / 10 mel bins.
MAX_MASKS = 3
TIME_MASK_FRAMES = 20
FREQ_MASK_BINS = 10


@dataclass(frozen=True)
class WaveContext:
    """What waveform transforms may need besides their probability."""

    sample_rate: int
    #: Background recordings (background mixing; time extension with a background fill).
    background: Sequence[Path] = ()
    snr_db: tuple[float, float] = (3.0, 30.0)
    #: `n -> n samples` of fill for time extension; None fills with silence.
    fill: Callable[[int], np.ndarray] | None = None


#: name -> `factory(p, context) -> (wave -> wave)`.
WAVE_AUGMENTATIONS: Registry[Callable[[float, WaveContext], WaveAugment]] = Registry("waveform augmentation")
#: name -> `fn(x, y, w, p, cfg, rng) -> (x, y, w)` on a batch `[B, n_mels, T]`.
BATCH_AUGMENTATIONS: Registry[Callable[..., Batch]] = Registry("batch augmentation")


def _audiomentation(transform: Callable[..., object]) -> Callable[[float, WaveContext], WaveAugment]:
    """`transform(am, p, ctx)` (an audiomentations transform) as `wave -> wave` at the context's rate."""

    def factory(p: float, ctx: WaveContext) -> WaveAugment:
        import audiomentations as am

        t = transform(am, p, ctx)
        return lambda wave: t(samples=wave, sample_rate=ctx.sample_rate).astype(np.float32, copy=False)

    return factory


def time_extend(wave: np.ndarray, keep: int, offset: int, fill: np.ndarray | None = None) -> np.ndarray:
    """The first `keep` samples of `wave` placed at `offset`, the rest `fill` (default silence).

    Same length as `wave` (or `fill`); models learn that a call may occupy only part of a window.
    """
    out = np.zeros_like(wave) if fill is None else fill.astype(np.float32, copy=True)
    keep = min(keep, len(wave), len(out) - offset)
    out[offset : offset + keep] = wave[:keep]
    return out


@WAVE_AUGMENTATIONS.register("time_extend")
def _time_extend(p: float, ctx: WaveContext) -> WaveAugment:
    """Keep a random 50-100 % of the crop at a random place, fill the rest."""

    def apply(wave: np.ndarray) -> np.ndarray:
        if np.random.random() >= p:
            return wave
        n = len(wave)
        keep = int(n * np.random.uniform(0.5, 1.0))
        fill = ctx.fill(n) if ctx.fill else None
        return time_extend(wave, keep, int(np.random.randint(0, n - keep + 1)), fill)

    return apply


WAVE_AUGMENTATIONS.register("gaussian_noise")(
    _audiomentation(lambda am, p, ctx: am.AddGaussianSNR(min_snr_db=5.0, max_snr_db=40.0, p=p))
)
WAVE_AUGMENTATIONS.register("pink_noise")(
    _audiomentation(lambda am, p, ctx: am.AddColorNoise(min_f_decay=PINK_DECAY_DB, max_f_decay=PINK_DECAY_DB, p=p))
)
WAVE_AUGMENTATIONS.register("gain")(_audiomentation(lambda am, p, ctx: am.Gain(min_gain_db=-12.0, max_gain_db=12.0, p=p)))
WAVE_AUGMENTATIONS.register("pitch_shift")(
    _audiomentation(lambda am, p, ctx: am.PitchShift(min_semitones=-2.0, max_semitones=2.0, p=p))
)
WAVE_AUGMENTATIONS.register("time_shift")(
    _audiomentation(lambda am, p, ctx: am.Shift(min_shift=-0.5, max_shift=0.5, rollover=True, p=p))
)


def _background_noise(am, p: float, ctx: WaveContext) -> object:
    """Mix a stretch of unlabeled audio in at a random signal-to-background ratio."""
    if not ctx.background:
        raise ValueError("the background augmentation needs background audio files ([train.augment] background_dir)")
    lo, hi = ctx.snr_db
    return am.AddBackgroundNoise([str(f) for f in ctx.background], min_snr_db=lo, max_snr_db=hi, p=p)


WAVE_AUGMENTATIONS.register("background")(_audiomentation(_background_noise))


def waveform_augment(cfg: AugmentConfig, ctx: WaveContext) -> WaveAugment | None:
    """The configured waveform transforms, in registry order, as one function; None when all are off."""
    steps = [WAVE_AUGMENTATIONS.get(name)(cfg.p(name), ctx) for name in WAVE_AUGMENTATIONS if cfg.p(name) > 0]
    if not steps:
        return None

    def apply(wave: np.ndarray) -> np.ndarray:
        for step in steps:
            wave = step(wave)
        return wave

    return apply


def _mask(axis: int, width: int) -> Callable[..., Batch]:
    """SpecAugment along `axis` of `[B, n_mels, T]`: per sample, with probability p, up to 3
    masks of up to `width` bins, filled with the sample's minimum (silence, whatever the
    normalisation)."""

    def apply(x: Tensor, y: Tensor, w: Tensor, p: float, cfg: AugmentConfig, rng: np.random.Generator) -> Batch:
        if p <= 0:
            return x, y, w
        x = x.clone()
        floor = x.amin(dim=(1, 2))
        size = x.shape[axis]
        for b in np.flatnonzero(rng.random(len(x)) < p):
            for _ in range(rng.integers(1, MAX_MASKS + 1)):
                k = int(rng.integers(1, min(width, size) + 1))
                start = int(rng.integers(0, size - k + 1))
                x[b].narrow(axis - 1, start, k).fill_(floor[b])
        return x, y, w

    return apply


BATCH_AUGMENTATIONS.register("time_mask")(_mask(2, TIME_MASK_FRAMES))
BATCH_AUGMENTATIONS.register("freq_mask")(_mask(1, FREQ_MASK_BINS))


def _partners(n: int, p: float, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: a random partner, and a weight `lam` of itself (1 where not applied)."""
    perm = rng.permutation(n)
    lam = rng.beta(alpha, alpha, n) if alpha > 0 else np.full(n, 0.5)
    return perm, np.where(rng.random(n) < p, lam, 1.0)


def _mix_labels(y: Tensor, perm: Tensor, lam: Tensor, use_max: bool) -> Tensor:
    import torch

    applied = (lam < 1)[:, None]
    mixed = torch.maximum(y, y[perm]) if use_max else lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    return torch.where(applied, mixed, y)


@BATCH_AUGMENTATIONS.register("mixup")
def mixup(x: Tensor, y: Tensor, w: Tensor, p: float, cfg: AugmentConfig, rng: np.random.Generator) -> Batch:
    """Blend each sample (with probability p) with a random partner: `lam * a + (1 - lam) * b`.

    Targets become the element-wise max of both (both calls are audible) or the same blend;
    sample weights blend.
    """
    if p <= 0:
        return x, y, w
    import torch

    perm_np, lam_np = _partners(len(x), p, cfg.mixup_alpha, rng)
    perm = torch.as_tensor(perm_np, device=x.device)
    lam = torch.as_tensor(lam_np, device=x.device, dtype=x.dtype)
    shape = (-1,) + (1,) * (x.dim() - 1)
    x = lam.view(shape) * x + (1 - lam.view(shape)) * x[perm]
    return x, _mix_labels(y, perm, lam.to(y.dtype), cfg.mixup_max_labels), lam.to(w.dtype) * w + (1 - lam.to(w.dtype)) * w[perm]


@BATCH_AUGMENTATIONS.register("cutmix")
def cutmix(x: Tensor, y: Tensor, w: Tensor, p: float, cfg: AugmentConfig, rng: np.random.Generator) -> Batch:
    """Replace a time span (a `1 - lam` share of the frames) of each sample with its partner's.

    Targets: max of both, or blended by the share of frames each contributes.
    """
    if p <= 0:
        return x, y, w
    import torch

    n_frames = x.shape[-1]
    perm_np, lam_np = _partners(len(x), p, cfg.mixup_alpha, rng)
    widths = np.round((1 - lam_np) * n_frames).astype(int)
    starts = np.array([rng.integers(0, n_frames - k + 1) for k in widths])
    source = x[torch.as_tensor(perm_np, device=x.device)]
    x = x.clone()
    for b in np.flatnonzero(widths > 0):
        x[b, ..., starts[b] : starts[b] + widths[b]] = source[b, ..., starts[b] : starts[b] + widths[b]]
    kept = torch.as_tensor(1 - widths / n_frames, device=x.device, dtype=y.dtype)
    perm = torch.as_tensor(perm_np, device=x.device)
    return x, _mix_labels(y, perm, kept, cfg.mixup_max_labels), kept.to(w.dtype) * w + (1 - kept.to(w.dtype)) * w[perm]


def batch_augment(x: Tensor, y: Tensor, w: Tensor, cfg: AugmentConfig, rng: np.random.Generator) -> Batch:
    """Every batch augmentation in registry order, each with its configured probability."""
    for name in BATCH_AUGMENTATIONS:
        x, y, w = BATCH_AUGMENTATIONS.get(name)(x, y, w, cfg.p(name), cfg, rng)
    return x, y, w
