"""Log-mel windows of a waveform: the fast path (one STFT, gate, mel) and the reference.

Windows follow one rule everywhere (cache, training loader, inference): starts every
`stride_seconds`; a trailing partial window is kept, zero-padded, if it holds at least
`min_tail_seconds` of audio; a recording shorter than one window gives one padded window.

Fast path: each window goes through one STFT (scipy's pocketfft in float32, zero-padded
centred frames as librosa's), its power is projected on librosa's mel filterbank (sparse),
the spectral gate (`features.denoise`) runs on the mel bands with noise statistics over a
chunk of windows (`noise_chunk_seconds`), then dB relative to each window's peak, `top_db`
floor and normalisation. No inverse STFT and no second STFT, unlike noisereduce + mel. The
reference path is the usual notebook loop: `noisereduce.reduce_noise` on the waveform,
then `librosa.feature.melspectrogram` per window, through the same dB / normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from birdpipe.features import denoise
from birdpipe.features.config import MelConfig

if TYPE_CHECKING:
    import scipy.sparse

#: librosa.power_to_db's floor.
AMIN = 1e-10


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, hz / (200.0 / 3))


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=8)
def mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> scipy.sparse.csr_matrix:
    """librosa.filters.mel (Slaney scale and area norm) [n_mels, n_fft // 2 + 1], sparse: each
    bin feeds at most two bands, so the projection costs ~1/60 of a dense matmul. Written
    out rather than imported because importing librosa costs seconds in every worker."""
    import scipy.sparse  # a second to import: kept out of config and code-location loading

    fft_hz = np.linspace(0, sr / 2, 1 + n_fft // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    ramps = edges[:, None] - fft_hz[None, :]
    width = np.diff(edges)[:, None]
    weights = np.maximum(0, np.minimum(-ramps[:-2] / width[:-1], ramps[2:] / width[1:]))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return scipy.sparse.csr_matrix(weights.astype(np.float32))


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic, as librosa's "hann"


def window_starts(n_samples: int, cfg: MelConfig) -> np.ndarray:
    """Start sample of every window of a recording of `n_samples` (the module's window rule)."""
    win, stride = cfg.window_samples, cfg.stride_samples
    n_full = (n_samples - win) // stride + 1 if n_samples >= win else 0
    starts = np.arange(n_full, dtype=np.int64) * stride
    tail = n_full * stride
    if n_full == 0 or n_samples - tail >= cfg.min_tail_seconds * cfg.sample_rate:
        starts = np.append(starts, tail)
    return starts


def frame_windows(wave: np.ndarray, starts: np.ndarray, cfg: MelConfig, pad: int = 0) -> np.ndarray:
    """[len(starts), pad + window_samples + pad] float32, zero-padded past the end of `wave`
    (and `pad` zeros each side: the STFT's centring, without a second copy)."""
    win = cfg.window_samples
    out = np.zeros((len(starts), win + 2 * pad), np.float32)
    for i, s in enumerate(starts):
        seg = wave[s : s + win]
        out[i, pad : pad + len(seg)] = seg
    return out


#: Frames per block: a block's frames, spectrum and power (about 0.5 MB each) stay in a core's
#: L2 cache from the FFT to the mel projection, and their buffers are reused. Whole windows
#: (313 frames, 2.5 MB per array) did not fit, and ran about a third slower on real recordings.
BLOCK_FRAMES = 64


def mel_power(padded: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Mel power [windows, n_mels, n_frames] of windows [windows, samples] zero-padded by
    n_fft // 2 each side (centred frames, as librosa)."""
    import scipy.fft

    n_fft, hop, n_frames = cfg.n_fft, cfg.hop_length, cfg.n_frames
    basis = mel_basis(cfg.sample_rate, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    window = _hann(n_fft)
    out = np.empty((len(padded), cfg.n_mels, n_frames), np.float32)
    framed = np.empty((BLOCK_FRAMES, n_fft), np.float32)
    #: Bins-major, the layout the sparse product reads (given the transpose of a frames-major
    #: array, scipy would copy it first).
    power = np.empty((n_fft // 2 + 1, BLOCK_FRAMES), np.float32)
    for i, row in enumerate(padded):
        frames = np.lib.stride_tricks.sliding_window_view(row, n_fft)[::hop]
        for j in range(0, n_frames, BLOCK_FRAMES):
            block = frames[j : j + BLOCK_FRAMES]
            k = len(block)
            spec = scipy.fft.rfft(np.multiply(block, window, out=framed[:k]), axis=-1, overwrite_x=True)
            parts = spec.view(np.float32)
            np.multiply(parts, parts, out=parts)
            np.add(parts[:, 0::2], parts[:, 1::2], out=power[:, :k].T)
            out[i, :, j : j + k] = basis @ power[:, :k]
    return out


def to_log_mel(power: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """dB relative to each window's peak (librosa.power_to_db(ref=np.max)), top_db floor,
    then the configured normalisation; float32."""
    db = denoise.decibels(np.maximum(power, AMIN))
    peak = db.max(axis=(1, 2), keepdims=True)
    db = np.maximum(db - peak, -cfg.top_db)
    if cfg.normalize == "minmax":
        low = db.min(axis=(1, 2), keepdims=True)
        db = (db - low) / np.maximum(-low, 1e-6)
    return db.astype(np.float32, copy=False)


def _gate(power: np.ndarray, valid_samples: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """The spectral gate on mel bands; noisereduce's smoothing widths converted to bands/frames."""
    frame_rate = cfg.sample_rate / cfg.hop_length
    valid = np.arange(power.shape[-1])[None, :] * cfg.hop_length < valid_samples[:, None]
    band_hz = (cfg.fmax - cfg.fmin) / cfg.n_mels
    return denoise.gate(
        power,
        valid,
        stationary=cfg.noise_mode == "stationary",
        n_std=cfg.noise_n_std,
        prop_decrease=cfg.noise_prop_decrease,
        frame_rate=frame_rate,
        time_constant_s=cfg.noise_time_constant_s,
        n_mult=cfg.noise_thresh_n_mult,
        slope=cfg.noise_sigmoid_slope,
        n_grad_bands=max(1, int(cfg.noise_freq_smooth_hz / band_hz)),
        n_grad_frames=max(1, int(cfg.noise_time_smooth_ms / 1000 * frame_rate)),
    )


def _chunk_log_mel(frames: np.ndarray, valid_samples: np.ndarray, cfg: MelConfig) -> np.ndarray:
    power = mel_power(frames, cfg)
    if cfg.noise_reduce:
        power = _gate(power, valid_samples, cfg)
    return to_log_mel(power, cfg)


def stream_log_mel_windows(blocks: Iterable[np.ndarray], cfg: MelConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(log-mels, start seconds) per chunk of about `noise_chunk_seconds`, from waveform blocks
    of any size: memory stays bounded by the chunk, whatever the recording's length.
    Chunk boundaries depend only on the window index, so the output equals `log_mel_windows`."""
    win, stride = cfg.window_samples, cfg.stride_samples
    per_chunk = max(1, int(round(cfg.noise_chunk_seconds / cfg.stride_seconds)))
    buf, buf_start, next_start, total = np.zeros(0, np.float32), 0, 0, 0

    def emit(starts: np.ndarray):
        frames = frame_windows(buf, starts - buf_start, cfg, pad=cfg.n_fft // 2)
        valid = np.minimum(win, total - starts)
        return _chunk_log_mel(frames, valid, cfg), starts / cfg.sample_rate

    for block in blocks:
        buf = np.concatenate([buf, np.asarray(block, np.float32)])
        total += len(block)
        while total - (next_start + (per_chunk - 1) * stride) >= win:
            yield emit(next_start + np.arange(per_chunk) * stride)
            next_start += per_chunk * stride
            buf, buf_start = buf[next_start - buf_start :], next_start
    starts = window_starts(total, cfg)
    rest = starts[starts >= next_start]
    for i in range(0, len(rest), per_chunk):
        yield emit(rest[i : i + per_chunk])


def _collect(chunks: Iterable[tuple[np.ndarray, np.ndarray]], cfg: MelConfig) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(chunks)
    if not chunks:
        return np.zeros((0, cfg.n_mels, cfg.n_frames), np.float32), np.zeros(0)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def log_mel_windows(wave: np.ndarray, cfg: MelConfig) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n_windows, n_mels, n_frames] and window start seconds (fast path, gate per cfg)."""
    return _collect(stream_log_mel_windows([wave], cfg), cfg)


def reference_log_mel_windows(wave: np.ndarray, cfg: MelConfig) -> tuple[np.ndarray, np.ndarray]:
    """The plain path: noisereduce on the waveform, then librosa's mel per window."""
    import librosa
    import noisereduce

    sr = cfg.sample_rate
    wave = np.asarray(wave, np.float32)
    if cfg.noise_reduce:
        wave = noisereduce.reduce_noise(
            y=wave,
            sr=sr,
            stationary=cfg.noise_mode == "stationary",
            n_std_thresh_stationary=cfg.noise_n_std,
            prop_decrease=cfg.noise_prop_decrease,
            time_constant_s=cfg.noise_time_constant_s,
            freq_mask_smooth_hz=cfg.noise_freq_smooth_hz,
            time_mask_smooth_ms=cfg.noise_time_smooth_ms,
            thresh_n_mult_nonstationary=cfg.noise_thresh_n_mult,
            sigmoid_slope_nonstationary=cfg.noise_sigmoid_slope,
            chunk_size=int(cfg.noise_chunk_seconds * sr),
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
        ).astype(np.float32)
    starts = window_starts(len(wave), cfg)
    frames = frame_windows(wave, starts, cfg)
    power = np.stack(
        [
            librosa.feature.melspectrogram(
                y=f, sr=sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
            )
            for f in frames
        ]
    )
    return to_log_mel(power, cfg), starts / sr
