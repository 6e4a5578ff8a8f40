"""Spectral gating on a power spectrogram: noisereduce's algorithm without its round trip.

noisereduce gates an STFT and inverts it back to audio, after which the mel needs a second
STFT. Here the gate works on the power spectrogram that the mel is taken from (mel bands
or STFT bins, any `[..., bands, frames]` array), so the expensive transform runs once:

- stationary: per band, noise statistics (mean, std of dB) over the valid frames of a
  chunk; a cell passes where its dB exceeds mean + n_std * std;
- non-stationary: per band, a running (IIR, time constant) estimate of the amplitude; a
  cell passes, through a sigmoid, where it stands n_mult times above that estimate;

then the mask is smoothed with noisereduce's triangular kernel (separable, so two 1-D
passes), scaled by prop_decrease, and applied to the amplitude (power times mask squared).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve1d

#: dB floor of each band below its own peak before statistics (as noisereduce does).
BAND_TOP_DB = 80.0
_EPS = 1e-12


def triangular_kernel(n_grad: int) -> np.ndarray:
    """noisereduce's 1-D smoothing ramp (length 2 * n_grad + 1), normalised to sum 1."""
    ramp = np.concatenate([np.linspace(0, 1, n_grad + 1, endpoint=False), np.linspace(1, 0, n_grad + 2)])[1:-1]
    return (ramp / ramp.sum()).astype(np.float32)


def smooth_mask(mask: np.ndarray, n_grad_bands: int, n_grad_frames: int) -> np.ndarray:
    """Zero-padded 'same' convolution with the separable triangular kernel (as fftconvolve)."""
    if n_grad_bands > 1 or n_grad_frames > 1:
        mask = convolve1d(mask, triangular_kernel(n_grad_bands), axis=-2, mode="constant")
        mask = convolve1d(mask, triangular_kernel(n_grad_frames), axis=-1, mode="constant")
    return mask


def power_db(power: np.ndarray) -> np.ndarray:
    """Amplitude dB (10 log10 power), floored BAND_TOP_DB below each band's peak."""
    db = 10.0 * np.log10(power + _EPS)
    return np.maximum(db, db.max(axis=-1, keepdims=True) - BAND_TOP_DB)


def stationary_mask(power: np.ndarray, valid: np.ndarray, n_std: float) -> np.ndarray:
    """`power` [windows, bands, frames]; statistics per band over frames where `valid`
    [windows, frames] is true (zero padding would drag the noise floor down)."""
    db = power_db(power)
    cells = np.moveaxis(db, 1, 0)[:, valid]  # [bands, n_valid_frames]
    thresh = cells.mean(axis=1) + n_std * cells.std(axis=1)
    return (db > thresh[None, :, None]).astype(np.float32)


def nonstationary_mask(power: np.ndarray, frame_rate: float, time_constant_s: float, n_mult: float, slope: float) -> np.ndarray:
    """Sigmoid of how far each cell's amplitude stands above its band's running estimate.

    noisereduce's forward-backward IIR low-pass, started from each band's median rather
    than from its first frame: a window can begin mid-call, and a floor started on the call
    would gate the call out."""
    from scipy.signal import lfilter, lfilter_zi  # imported here: scipy.signal costs ~2 s to import

    amp = np.sqrt(power)
    t_frames = time_constant_s * frame_rate
    b = (np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    coeffs = ([b], [1, b - 1])
    zi = lfilter_zi(*coeffs)[0] * np.median(amp, axis=-1, keepdims=True)
    forward = lfilter(*coeffs, amp, axis=-1, zi=zi)[0]
    floor = lfilter(*coeffs, forward[..., ::-1], axis=-1, zi=zi)[0][..., ::-1] + _EPS
    return (1.0 / (1.0 + np.exp(-((amp - floor) / floor - n_mult) * slope))).astype(np.float32)


def gate(
    power: np.ndarray,
    valid: np.ndarray,
    *,
    stationary: bool,
    n_std: float,
    prop_decrease: float,
    frame_rate: float,
    time_constant_s: float,
    n_mult: float,
    slope: float,
    n_grad_bands: int,
    n_grad_frames: int,
) -> np.ndarray:
    """Gated copy of `power` [windows, bands, frames]."""
    if stationary:
        mask = stationary_mask(power, valid, n_std)
    else:
        mask = nonstationary_mask(power, frame_rate, time_constant_s, n_mult, slope)
    mask = smooth_mask(mask, n_grad_bands, n_grad_frames)
    mask = mask * prop_decrease + (1.0 - prop_decrease)
    return power * mask * mask
