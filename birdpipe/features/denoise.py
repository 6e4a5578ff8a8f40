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

Only numpy at import: this runs in every cache worker, where scipy.ndimage alone would add
half a second of start-up per process.
"""

from __future__ import annotations

import numpy as np

#: dB floor of each band below its own peak before statistics (as noisereduce does).
BAND_TOP_DB = 80.0
_EPS = 1e-12
_DB_PER_NEPER = np.float32(10.0 / np.log(10.0))


def decibels(power: np.ndarray) -> np.ndarray:
    """10 log10(power), through the natural log: numpy's float32 log is vectorised and its
    log10 is not (4x slower); the two differ by about 1e-6 dB."""
    db = np.log(power)
    db *= _DB_PER_NEPER
    return db


def triangular_kernel(n_grad: int) -> np.ndarray:
    """noisereduce's 1-D smoothing ramp (length 2 * n_grad + 1), normalised to sum 1."""
    ramp = np.concatenate([np.linspace(0, 1, n_grad + 1, endpoint=False), np.linspace(1, 0, n_grad + 2)])[1:-1]
    return (ramp / ramp.sum()).astype(np.float32)


def smooth_mask(mask: np.ndarray, n_grad_bands: int, n_grad_frames: int) -> np.ndarray:
    """Zero-padded 'same' convolution with the separable triangular kernel (as fftconvolve).

    `triangular_kernel(n)` is a box of n + 1 ones convolved with itself, over (n + 1)^2, so
    each axis takes two box sums of n shifted additions: half the passes of a multiply-add
    per tap (and on a 0/1 mask every sum is an exact integer)."""
    if n_grad_bands <= 1 and n_grad_frames <= 1:
        return mask
    for n_grad, axis in ((n_grad_bands, mask.ndim - 2), (n_grad_frames, mask.ndim - 1)):
        mask = _box_sum(_box_sum(mask, n_grad + 1, axis, trim=0), n_grad + 1, axis, trim=n_grad)
    mask *= np.float32(1.0 / ((n_grad_bands + 1) * (n_grad_frames + 1)) ** 2)
    return mask


def _box_sum(x: np.ndarray, width: int, axis: int, trim: int) -> np.ndarray:
    """Sums of `width` consecutive values along `axis` (zero-padded, the full convolution with
    ones, n + width - 1 long), less `trim` values at each end."""
    n = x.shape[axis]
    size = n + width - 1 - 2 * trim
    padded_shape = list(x.shape)
    padded_shape[axis] = n + 2 * (width - 1)
    padded = np.zeros(padded_shape, x.dtype)
    at = (slice(None),) * axis
    padded[at + (slice(width - 1, width - 1 + n),)] = x
    out = padded[at + (slice(trim, trim + size),)].copy()
    for shift in range(1, width):
        out += padded[at + (slice(trim + shift, trim + shift + size),)]
    return out


def power_db(power: np.ndarray) -> np.ndarray:
    """Amplitude dB (10 log10 power), floored BAND_TOP_DB below each band's peak."""
    db = decibels(power + _EPS)
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
    if prop_decrease != 1.0:
        mask = mask * prop_decrease + (1.0 - prop_decrease)
    mask *= mask
    return power * mask
