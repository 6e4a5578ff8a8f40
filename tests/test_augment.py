from __future__ import annotations

import numpy as np
import pytest
import torch

from birdpipe.config import AugmentConfig
from birdpipe.training.augment import (
    BATCH_AUGMENTATIONS,
    WAVE_AUGMENTATIONS,
    WaveContext,
    batch_augment,
    cutmix,
    mixup,
    time_extend,
    waveform_augment,
)

SR = 8000
WAVE_NAMES = ("gaussian_noise", "pink_noise", "gain", "pitch_shift", "time_shift", "time_extend")


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 32, 64, generator=g)
    y = torch.eye(6, 4)[:, :4].clone()
    y[4:, 0] = 1
    return x, y, torch.linspace(0.5, 1.0, 6)


def test_registries_hold_every_documented_augmentation():
    assert set(WAVE_AUGMENTATIONS.names()) == {*WAVE_NAMES, "background"}
    assert BATCH_AUGMENTATIONS.names() == ("time_mask", "freq_mask", "mixup", "cutmix")


@pytest.mark.parametrize("name", WAVE_NAMES)
def test_each_waveform_augmentation_changes_audio_keeps_shape(name):
    wave = (0.3 * np.sin(np.linspace(0, 400, SR))).astype(np.float32)
    np.random.seed(0)
    cfg = AugmentConfig(waveform={name: 1.0})
    assert cfg.uses_waveform
    out = waveform_augment(cfg, WaveContext(SR))(wave)
    assert out.shape == wave.shape and out.dtype == np.float32 and not np.allclose(out, wave)


def test_background_mixing_uses_background_files(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "bg.wav", np.random.default_rng(0).normal(0, 0.1, SR * 2).astype(np.float32), SR)
    wave = np.zeros(SR, np.float32) + 0.01
    cfg = AugmentConfig(waveform={"background": 1.0})
    out = waveform_augment(cfg, WaveContext(SR, [tmp_path / "bg.wav"]))(wave)
    assert out.shape == wave.shape and not np.allclose(out, wave)
    with pytest.raises(ValueError, match="background audio files"):
        waveform_augment(cfg, WaveContext(SR))


def test_probability_zero_is_identity():
    cfg = AugmentConfig(waveform={"gain": 0.0}, batch={"mixup": 0.0})
    assert waveform_augment(cfg, WaveContext(SR)) is None and not cfg.uses_waveform
    x, y, w = _batch()
    x2, y2, w2 = batch_augment(x, y, w, cfg, np.random.default_rng(0))
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(w, w2)


def test_time_extend_places_audio_and_fills_rest():
    wave = np.arange(1, 11, dtype=np.float32)
    out = time_extend(wave, keep=4, offset=3)
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 2, 3, 4, 0, 0, 0])
    filled = time_extend(wave, keep=4, offset=0, fill=np.full(10, -1, np.float32))
    np.testing.assert_array_equal(filled, [1, 2, 3, 4, -1, -1, -1, -1, -1, -1])


@pytest.mark.parametrize("axis", ["time", "freq"])
def test_spec_mask_sets_bands_to_the_floor_and_keeps_shape(axis):
    x, _, _ = _batch()
    y, w = torch.zeros(6, 4), torch.ones(6)
    mask = BATCH_AUGMENTATIONS.get(f"{axis}_mask")
    out, _, _ = mask(x, y, w, 1.0, AugmentConfig(), np.random.default_rng(1))
    assert out.shape == x.shape
    changed = out != x
    dim = 1 if axis == "time" else 2  # a masked time step changes across all mel bins and vice versa
    for b in range(len(x)):
        band = (out[b] == x[b].min()).all(dim=dim - 1)  # whole rows / columns at the floor
        assert band.any()
        outside = changed[b].transpose(0, 1) if axis == "time" else changed[b]
        assert not outside[~band].any()


def test_mixup_label_bookkeeping():
    x, y, w = _batch()
    xm, ym, wm = mixup(x, y, w, 1.0, AugmentConfig(mixup_alpha=0.5), np.random.default_rng(0))
    rng = np.random.default_rng(0)
    perm = rng.permutation(6)
    lam = torch.tensor(rng.beta(0.5, 0.5, 6), dtype=torch.float32)
    torch.testing.assert_close(xm, lam[:, None, None] * x + (1 - lam[:, None, None]) * x[perm])
    torch.testing.assert_close(ym, torch.maximum(y, y[perm]))
    torch.testing.assert_close(wm, lam * w + (1 - lam) * w[perm])
    _, yb, _ = mixup(x, y, w, 1.0, AugmentConfig(mixup_alpha=0.5, mixup_max_labels=False), np.random.default_rng(0))
    torch.testing.assert_close(yb, lam[:, None] * y + (1 - lam[:, None]) * y[perm])


def test_cutmix_pastes_partner_frames_and_merges_labels():
    x, y, w = _batch()
    xc, yc, _ = cutmix(x, y, w, 1.0, AugmentConfig(mixup_alpha=1.0), np.random.default_rng(3))
    perm = np.random.default_rng(3).permutation(6)
    assert xc.shape == x.shape
    for b in range(6):
        pasted = (xc[b] != x[b]).any(dim=0)
        if pasted.any():
            torch.testing.assert_close(xc[b][:, pasted], x[perm[b]][:, pasted])
            torch.testing.assert_close(yc[b], torch.maximum(y[b], y[perm[b]]))
        else:
            torch.testing.assert_close(yc[b], y[b])
