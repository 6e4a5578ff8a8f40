
import librosa
import numpy as np
import pytest

from birdpipe.features import denoise, mel as features
from birdpipe.config import MelConfig

SR = 32000


@pytest.mark.parametrize(
    ("seconds", "starts"),
    [(12.0, [0, 5, 10]), (10.5, [0, 5]), (10.0, [0, 5]), (3.0, [0]), (0.2, [0])],
)
def test_window_rule(seconds, starts):
    wave = np.random.default_rng(0).normal(0, 0.1, int(seconds * SR)).astype(np.float32)
    mels, got = features.log_mel_windows(wave, MelConfig(noise_reduce=False))
    assert got.tolist() == starts
    assert mels.shape == (len(starts), 128, MelConfig().n_frames) and mels.dtype == np.float32
    assert features.window_starts(int(seconds * SR), MelConfig()).tolist() == [s * SR for s in starts]


def test_overlapping_stride():
    cfg = MelConfig(window_seconds=5.0, stride_seconds=2.5, noise_reduce=False)
    _, starts = features.log_mel_windows(np.zeros(int(11 * SR), np.float32), cfg)
    assert starts.tolist() == [0.0, 2.5, 5.0, 7.5]


def test_fast_path_without_gate_equals_librosa():
    wave = np.random.default_rng(1).normal(0, 0.1, int(7.3 * SR)).astype(np.float32)
    cfg = MelConfig(noise_reduce=False)
    fast, s1 = features.log_mel_windows(wave, cfg)
    ref, s2 = features.reference_log_mel_windows(wave, cfg)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_allclose(fast, ref, atol=1e-4)


@pytest.mark.parametrize("kw", [dict(sample_rate=32000, n_fft=2048, n_mels=128, fmin=40.0, fmax=15000.0),
                                dict(sample_rate=22050, n_fft=1024, n_mels=64, fmin=0.0, fmax=11025.0)])  # fmt: skip
def test_mel_filterbank_equals_librosa(kw):
    ours = features.mel_basis(kw["sample_rate"], kw["n_fft"], kw["n_mels"], kw["fmin"], kw["fmax"]).toarray()
    theirs = librosa.filters.mel(sr=kw["sample_rate"], n_fft=kw["n_fft"], n_mels=kw["n_mels"], fmin=kw["fmin"], fmax=kw["fmax"])
    np.testing.assert_allclose(ours, theirs, atol=1e-7)


@pytest.mark.parametrize("mode", ["stationary", "nonstationary"])
def test_streamed_blocks_give_the_same_windows(mode):
    wave = np.random.default_rng(2).normal(0, 0.1, int(47.7 * SR)).astype(np.float32)
    cfg = MelConfig(noise_chunk_seconds=15.0, noise_mode=mode)
    whole, starts = features.log_mel_windows(wave, cfg)
    blocks = [wave[i : i + 12345] for i in range(0, len(wave), 12345)]
    chunks = list(features.stream_log_mel_windows(blocks, cfg))
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), whole)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), starts)
    assert len(chunks) == 4  # 10 windows, 3 per chunk


def test_silence_gives_finite_output():
    for cfg in (MelConfig(), MelConfig(noise_mode="nonstationary"), MelConfig(normalize="none")):
        mels, _ = features.log_mel_windows(np.zeros(6 * SR, np.float32), cfg)
        assert np.isfinite(mels).all()


def test_minmax_normalisation_and_top_db():
    wave = np.random.default_rng(3).normal(0, 0.1, 5 * SR).astype(np.float32)
    mels, _ = features.log_mel_windows(wave, MelConfig(noise_reduce=False))
    assert mels.min() == pytest.approx(0.0, abs=1e-6) and mels.max() == pytest.approx(1.0, abs=1e-6)
    raw, _ = features.log_mel_windows(wave, MelConfig(noise_reduce=False, normalize="none", top_db=30.0))
    assert raw.max() == pytest.approx(0.0, abs=1e-4) and raw.min() >= -30.0 - 1e-4


def test_smoothing_kernel_is_noisereduce_filter():
    from noisereduce.spectralgate.base import _smoothing_filter

    ours = np.outer(denoise.triangular_kernel(4), denoise.triangular_kernel(3))
    np.testing.assert_allclose(ours, _smoothing_filter(4, 3), atol=1e-7)


@pytest.mark.parametrize("n_bands, n_frames", [(4, 3), (2, 1), (1, 5)])
def test_mask_smoothing_is_noisereduce_convolution(n_bands, n_frames):
    """Box sums stand for the triangular kernel: equal to noisereduce's fftconvolve of it."""
    from noisereduce.spectralgate.base import _smoothing_filter
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(5)
    mask = (rng.random((3, 40, 50)) > 0.6).astype(np.float32)
    kernel = _smoothing_filter(n_bands, n_frames)[None]
    np.testing.assert_allclose(denoise.smooth_mask(mask, n_bands, n_frames), fftconvolve(mask, kernel, mode="same"), atol=2e-6)


# --- noise suppression against noisereduce on tones in coloured noise ------------------------


def _coloured_noise(n: int, exponent: float, rng) -> np.ndarray:
    """Noise with a 1/f^exponent power spectrum (1: pink, 2: brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (exponent / 2), n)
    return (x / x.std()).astype(np.float32)


def _gate_effect(exponent: float, mode: str) -> dict[str, tuple[float, float]]:
    """Mean dB by which the fast path and noisereduce lower the log-mel (peak-relative dB
    with the top_db floor: what a model sees) in noise-only cells and in the tones' bands
    while they sound. Tones at 2, 5 and 9 kHz sound for 0.3 s every 2 s; noise-only cells
    are 0.2-0.7 s into each 2 s period."""
    n = 20 * SR
    t = np.arange(n) / SR
    on = ((t % 2.0) > 1.0) & ((t % 2.0) < 1.3)
    tone_hz = [(2000, 1.0), (5000, 0.7), (9000, 0.5)]
    tones = sum(a * np.sin(2 * np.pi * hz * t) for hz, a in tone_hz) * on
    wave = (0.1 * tones + 0.1 * _coloured_noise(n, exponent, np.random.default_rng(0))).astype(np.float32)
    cfg = MelConfig(noise_mode=mode, normalize="none")
    frame_t = features.window_starts(n, cfg)[:, None] / SR + np.arange(cfg.n_frames)[None, :] * cfg.hop_length / SR
    centres = librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax)[1:-1]
    tone_bands = [int(np.argmin(np.abs(centres - hz))) for hz, _ in tone_hz]
    masks = {
        "noise": ((frame_t % 2.0) > 0.2) & ((frame_t % 2.0) < 0.7),
        "tones": ((frame_t % 2.0) > 1.05) & ((frame_t % 2.0) < 1.25),
    }
    plain = features.log_mel_windows(wave, cfg.replace(noise_reduce=False))[0]
    fast = features.log_mel_windows(wave, cfg)[0]
    ref = features.reference_log_mel_windows(wave, cfg)[0]

    def drop(mels, name):
        cells = (plain - mels).transpose(0, 2, 1)[masks[name]]
        return float((cells[:, tone_bands] if name == "tones" else cells).mean())

    return {name: (drop(fast, name), drop(ref, name)) for name in masks}


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_stationary_gate_suppresses_noise_like_noisereduce(exponent):
    effect = _gate_effect(exponent, "stationary")
    fast, ref = effect["noise"]
    assert ref > 10.0  # the case is one where gating matters
    assert abs(fast - ref) < 2.0, effect
    fast_tone_loss, ref_tone_loss = effect["tones"]
    assert fast_tone_loss < ref_tone_loss + 2.0 and fast_tone_loss < 10.0, effect


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_nonstationary_gate_suppresses_at_least_as_much_as_noisereduce(exponent):
    effect = _gate_effect(exponent, "nonstationary")
    fast, ref = effect["noise"]
    assert ref > 10.0
    assert fast > ref - 2.0, effect
    assert effect["tones"][0] < effect["tones"][1] + 2.0, effect
