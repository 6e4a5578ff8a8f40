"""Augmentations: waveform ones per sample in the loader, spectrogram and mixing ones per batch.

Waveform transforms (noise, gain, pitch, shift, background) come from audiomentations and
run in the data-loader workers before the mel is computed; they draw from `random` /
`np.random`, which the loader seeds per worker and epoch. Batch transforms (SpecAugment
masks, mixup, cutmix) run on the training device and draw their parameters from a numpy
`Generator`, so an epoch's augmentations depend only on (seed, epoch). Every transform with
probability 0 is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import audiomentations as am
import numpy as np
import torch
from torch import Tensor

from birdpipe.config import AugmentConfig

WaveAugment = Callable[[np.ndarray], np.ndarray]

#: Pink noise falls by 3.01 dB per octave.
PINK_DECAY_DB = -3.01
#: SpecAugment as in BirdCLEF solutions: up to 3 masks of up to 20 frames / 10 mel bins.
MAX_MASKS = 3
TIME_MASK_FRAMES = 20
FREQ_MASK_BINS = 10


def uses_waveform(cfg: AugmentConfig) -> bool:
    """Whether training needs decoded audio instead of the cached mels."""
    probs = (cfg.gaussian_noise_p, cfg.pink_noise_p, cfg.gain_p, cfg.pitch_shift_p, cfg.time_shift_p,
             cfg.background_p, cfg.time_extend_p)  # fmt: skip
    return any(p > 0 for p in probs)


def waveform_augment(
    cfg: AugmentConfig, sample_rate: int, background: Sequence[Path] = ()
) -> WaveAugment | None:
    """The configured waveform transforms as one function, or None when all are off."""
    snr_lo, snr_hi = cfg.background_snr_db
    candidates = [
        (cfg.gaussian_noise_p, lambda p: am.AddGaussianSNR(min_snr_db=5.0, max_snr_db=40.0, p=p)),
        (cfg.pink_noise_p, lambda p: am.AddColorNoise(min_f_decay=PINK_DECAY_DB, max_f_decay=PINK_DECAY_DB, p=p)),
        (cfg.gain_p, lambda p: am.Gain(min_gain_db=-12.0, max_gain_db=12.0, p=p)),
        (cfg.pitch_shift_p, lambda p: am.PitchShift(min_semitones=-2.0, max_semitones=2.0, p=p)),
        (cfg.time_shift_p, lambda p: am.Shift(min_shift=-0.5, max_shift=0.5, rollover=True, p=p)),
    ]
    if cfg.background_p > 0:
        if not background:
            raise ValueError("background_p > 0 needs background audio files (AugmentConfig.background_dir)")
        candidates.append(
            (cfg.background_p,
             lambda p: am.AddBackgroundNoise([str(f) for f in background], min_snr_db=snr_lo, max_snr_db=snr_hi, p=p))
        )  # fmt: skip
    transforms = [make(p) for p, make in candidates if p > 0]
    if not transforms:
        return None
    compose = am.Compose(transforms)
    return lambda wave: compose(samples=wave, sample_rate=sample_rate).astype(np.float32, copy=False)


def time_extend(wave: np.ndarray, keep: int, offset: int, fill: np.ndarray | None = None) -> np.ndarray:
    """The first `keep` samples of `wave` placed at `offset`, the rest `fill` (default silence).

    Same length as `wave` (or `fill`); models learn that a call may occupy only part of a window.
    """
    out = np.zeros_like(wave) if fill is None else fill.astype(np.float32, copy=True)
    keep = min(keep, len(wave), len(out) - offset)
    out[offset : offset + keep] = wave[:keep]
    return out


def spec_mask(x: Tensor, time_p: float, freq_p: float, rng: np.random.Generator) -> Tensor:
    """SpecAugment on `[B, n_mels, T]`: per sample, with its probability, up to 3 time / frequency masks.

    Masked cells take the sample's minimum (silence, whatever the normalisation).
    """
    if time_p <= 0 and freq_p <= 0:
        return x
    x = x.clone()
    floor = x.amin(dim=(1, 2))
    for axis, p, width in ((2, time_p, TIME_MASK_FRAMES), (1, freq_p, FREQ_MASK_BINS)):
        size = x.shape[axis]
        for b in np.flatnonzero(rng.random(len(x)) < p):
            for _ in range(rng.integers(1, MAX_MASKS + 1)):
                w = int(rng.integers(1, min(width, size) + 1))
                start = int(rng.integers(0, size - w + 1))
                x[b].narrow(axis - 1, start, w).fill_(floor[b])
    return x


def _partners(n: int, p: float, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: a random partner, and a weight `lam` of itself (1 where not applied)."""
    perm = rng.permutation(n)
    lam = rng.beta(alpha, alpha, n) if alpha > 0 else np.full(n, 0.5)
    return perm, np.where(rng.random(n) < p, lam, 1.0)


def _mix_labels(y: Tensor, perm: Tensor, lam: Tensor, use_max: bool) -> Tensor:
    applied = (lam < 1)[:, None]
    mixed = torch.maximum(y, y[perm]) if use_max else lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    return torch.where(applied, mixed, y)


def mixup(
    x: Tensor, y: Tensor, w: Tensor, p: float, alpha: float, max_labels: bool, rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Blend each sample (with probability p) with a random partner: `lam * a + (1 - lam) * b`.

    Targets become the element-wise max of both (both calls are audible) or the same blend;
    sample weights blend.
    """
    if p <= 0:
        return x, y, w
    perm_np, lam_np = _partners(len(x), p, alpha, rng)
    perm = torch.as_tensor(perm_np, device=x.device)
    lam = torch.as_tensor(lam_np, device=x.device, dtype=x.dtype)
    shape = (-1,) + (1,) * (x.dim() - 1)
    x = lam.view(shape) * x + (1 - lam.view(shape)) * x[perm]
    return x, _mix_labels(y, perm, lam.to(y.dtype), max_labels), lam.to(w.dtype) * w + (1 - lam.to(w.dtype)) * w[perm]


def cutmix(
    x: Tensor, y: Tensor, w: Tensor, p: float, alpha: float, max_labels: bool, rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Replace a time span (a `1 - lam` share of the frames) of each sample with its partner's.

    Targets: max of both, or blended by the share of frames each contributes.
    """
    if p <= 0:
        return x, y, w
    n_frames = x.shape[-1]
    perm_np, lam_np = _partners(len(x), p, alpha, rng)
    widths = np.round((1 - lam_np) * n_frames).astype(int)
    starts = np.array([rng.integers(0, n_frames - k + 1) for k in widths])
    source = x[torch.as_tensor(perm_np, device=x.device)]
    x = x.clone()
    for b in np.flatnonzero(widths > 0):
        x[b, ..., starts[b] : starts[b] + widths[b]] = source[b, ..., starts[b] : starts[b] + widths[b]]
    kept = torch.as_tensor(1 - widths / n_frames, device=x.device, dtype=y.dtype)
    perm = torch.as_tensor(perm_np, device=x.device)
    return x, _mix_labels(y, perm, kept, max_labels), kept.to(w.dtype) * w + (1 - kept.to(w.dtype)) * w[perm]


def batch_augment(
    x: Tensor, y: Tensor, w: Tensor, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """SpecAugment, then mixup, then cutmix, each with its configured probability."""
    x = spec_mask(x, cfg.time_mask_p, cfg.freq_mask_p, rng)
    x, y, w = mixup(x, y, w, cfg.mixup_p, cfg.mixup_alpha, cfg.mixup_max_labels, rng)
    return cutmix(x, y, w, cfg.cutmix_p, cfg.mixup_alpha, cfg.mixup_max_labels, rng)
