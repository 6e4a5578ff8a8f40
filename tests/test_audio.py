import numpy as np
import polars as pl
import pytest
import soundfile as sf

from birdpipe.data import audio

SR = 32000


def _tone(seconds: float, sr: int = SR, hz: float = 1000.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_every_format_decodes_to_float32_mono_at_the_rate(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    sf.write(path, _tone(2.0), SR)
    wave = audio.load(path, SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 2 * SR) < 0.05 * SR  # mp3 adds encoder padding
    info = audio.probe(path)
    assert info.readable and not info.damaged and info.sample_rate == SR and info.channels == 1


def test_other_rates_are_resampled_and_stereo_is_mixed_to_mono(tmp_path):
    left, right = _tone(3.0, 44100, 1000.0), _tone(3.0, 44100, 3000.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100)
    wave = audio.load(path, SR)
    assert len(wave) == 3 * SR
    spectrum = np.abs(np.fft.rfft(wave))
    peaks = sorted(np.argsort(spectrum)[-2:] / 3.0)  # bins of 1/3 Hz
    assert peaks == pytest.approx([1000.0, 3000.0], abs=1.0)
    assert audio.probe(path).channels == 2


def test_read_segment_is_exact_length_and_matches_load(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 4 * SR).astype(np.float32), SR)
    full = audio.load(path, SR)
    seg = audio.read_segment(path, SR, 1.5, 2.0)
    np.testing.assert_allclose(seg, full[int(1.5 * SR) : int(3.5 * SR)], atol=1e-4)
    tail = audio.read_segment(path, SR, 3.0, 5.0)
    assert len(tail) == 5 * SR and not tail[SR + 10 :].any()
    assert len(audio.read_segment(path, 16000, 0.0, 1.0)) == 16000


def test_blocks_stream_at_the_requested_size(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(7.3, 48000), 48000)
    stream = audio.iter_blocks(path, SR, block_seconds=2.0)
    sizes = [len(b) for b in stream]
    assert sizes[:3] == [2 * SR] * 3 and sum(sizes) == stream.samples == int(7.3 * SR)
    assert not stream.damaged


def _expect_bad(path, reason_part: str):
    info = audio.probe(path)
    assert not info.readable and reason_part in info.reason, info.reason
    with pytest.raises(audio.AudioError) as err:
        audio.load(path, SR)
    assert err.value.path == str(path) and reason_part in err.value.reason and str(path) in str(err.value)


def test_empty_file_is_rejected_with_its_reason(tmp_path):
    (tmp_path / "empty.ogg").write_bytes(b"")
    _expect_bad(tmp_path / "empty.ogg", "empty")


def test_zero_length_audio_is_rejected(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), SR)
    _expect_bad(path, "zero length")


def test_non_audio_is_rejected(tmp_path):
    path = tmp_path / "text.ogg"
    path.write_text("this is not a recording\n" * 50)
    _expect_bad(path, "not decodable")


def test_nan_samples_are_rejected(tmp_path):
    wave = _tone(1.0)
    wave[1000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    _expect_bad(path, "NaN")


def test_missing_file_is_rejected(tmp_path):
    _expect_bad(tmp_path / "nope.ogg", "missing")


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_damaged_file_decodes_as_far_as_it_goes_and_is_flagged(tmp_path, fmt):
    good = tmp_path / f"good.{fmt}"
    sf.write(good, np.random.default_rng(1).uniform(-0.3, 0.3, 20 * SR).astype(np.float32), SR)
    data = bytearray(good.read_bytes())
    cut = len(data) * 6 // 10
    data[cut : cut + 400] = bytes(400)  # a run of destroyed bytes mid-stream
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(bytes(data))
    info = audio.probe(bad)
    assert info.readable and info.damaged and info.reason
    assert 2.0 < info.duration_s < 20.0
    assert len(audio.load(bad, SR)) == pytest.approx(info.duration_s * SR, abs=1)


def test_streaming_a_long_file_keeps_memory_bounded(tmp_path):
    import tracemalloc

    from birdpipe.config import MelConfig
    from birdpipe.features.mel import stream_log_mel_windows

    seconds = 600  # the whole waveform would be 77 MB of float32
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(2)
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(rng.uniform(-0.2, 0.2, 60 * SR).astype(np.float32))
    cfg = MelConfig(noise_chunk_seconds=30.0)
    list(stream_log_mel_windows([np.zeros(5 * SR, np.float32)], cfg))  # scipy's lazy imports and the mel basis: not the stream's
    tracemalloc.start()
    windows = 0
    for mels, _ in stream_log_mel_windows(audio.iter_blocks(path, SR, 30.0), cfg):
        windows += len(mels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert windows == seconds // 5
    assert peak < 40 * 2**20, peak


def test_a_long_ogg_is_written_in_chunks_and_reads_back(tmp_path):
    # One libsndfile call with 10 minutes of audio overflows libvorbis's stack (SIGSEGV).
    seconds = 600
    t = np.arange(seconds * SR, dtype=np.float32) / SR
    wave = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    path = tmp_path / "long.ogg"
    audio.write(path, wave, SR, format="OGG", subtype="VORBIS")
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("OGG", "VORBIS", SR, seconds * SR)
    back = audio.load(path, SR)
    assert len(back) == seconds * SR
    assert np.sqrt(np.mean(back[-SR:] ** 2)) == pytest.approx(0.1 / np.sqrt(2), rel=0.05)


def test_write_keeps_channels_and_short_signals(tmp_path):
    stereo = np.random.default_rng(3).uniform(-0.3, 0.3, (SR // 3, 2)).astype(np.float32)
    audio.write(tmp_path / "s.wav", stereo, SR, subtype="FLOAT")
    back, sr = sf.read(tmp_path / "s.wav", dtype="float32")
    assert sr == SR and np.array_equal(back, stereo)


@pytest.mark.parametrize("fmt", ["ogg", "wav", "mp3"])
def test_a_file_cut_short_is_flagged_damaged_with_the_seconds_lost(tmp_path, fmt):
    # libsndfile reports a cut Ogg's or WAV's length from what is left, so only the header
    # (WAV, MP3) or the missing end-of-stream page (Ogg) tells that audio is gone.
    good = tmp_path / f"good.{fmt}"
    sf.write(good, np.random.default_rng(4).uniform(-0.3, 0.3, int(5.6 * SR)).astype(np.float32), SR)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 3 // 10])
    assert not audio.probe(good).damaged
    stream = audio.iter_blocks(cut, SR)
    decoded = sum(len(b) for b in stream) / SR
    assert stream.damaged and stream.reason.startswith("truncated"), stream.reason
    assert 0.5 < decoded < 3.0
    if fmt == "ogg":  # an Ogg stream states no length: the loss is named, its size unknown
        assert "without its last page" in stream.reason
    else:
        assert f"{decoded:.2f} s of 5.60 s decoded, {5.6 - decoded:.2f} s lost" in stream.reason
        assert stream.expected_seconds == pytest.approx(5.6, abs=0.01)
        assert audio.probe(cut, decode=False).duration_s == pytest.approx(5.6, abs=0.01)


def test_reasons_say_what_is_wrong_with_the_file(tmp_path):
    (tmp_path / "text.mp3").write_text("hello, not a recording\n" * 20)
    (tmp_path / "loop.ogg").symlink_to(tmp_path / "loop.ogg")
    (tmp_path / "dangling.ogg").symlink_to(tmp_path / "gone.ogg")
    (tmp_path / "folder.ogg").mkdir()
    reasons = {p.name: audio.probe(p).reason for p in tmp_path.iterdir()}
    assert reasons["text.mp3"] == "not decodable audio (no audio format recognised; it starts with b'hello, not a rec')"
    assert reasons["loop.ogg"] == "cannot be opened: Too many levels of symbolic links"
    assert reasons["dangling.ogg"] == f"broken symlink to {tmp_path / 'gone.ogg'}"
    assert reasons["folder.ogg"] == "not a regular file"


def test_decoder_messages_stay_with_their_file_instead_of_the_terminal(tmp_path, capfd):
    """mpg123 prints "Note: Illegal Audio-MPEG-Header ..." on the process's stderr; birdpipe
    keeps those lines with the file (stream, probe, manifest, cache log), named."""
    from birdpipe.data.manifest import build_manifest
    from birdpipe.features import cache
    from birdpipe.features.config import CacheConfig
    from birdpipe.features.mel import MelConfig

    good = tmp_path / "good.mp3"
    sf.write(good, _tone(20.0), SR)  # the damage lands past the first block read (2 s)
    data = bytearray(good.read_bytes())
    third = len(data) // 3
    data[third : third + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mp3").write_bytes(bytes(data))
    capfd.readouterr()

    stream = audio.iter_blocks(tmp_path / "bad.mp3", SR)
    assert sum(len(b) for b in stream) > 0
    assert any("Illegal Audio-MPEG-Header" in note for note in stream.notes), stream.notes
    assert audio.probe(tmp_path / "bad.mp3").notes == tuple(stream.notes)
    assert audio.probe(good).notes == ()
    manifest = build_manifest(pl.DataFrame({"filename": ["good.mp3", "bad.mp3"]}), tmp_path, workers=1)
    assert manifest["decoder_notes"][0] is None and "Illegal Audio-MPEG-Header" in manifest["decoder_notes"][1]
    lines: list[str] = []
    recs = pl.DataFrame({"filename": ["bad.mp3"], "primary_label": ["aaa"], "secondary_labels": [[]]})
    cache.build_mel_cache(recs, tmp_path, tmp_path / "cache", MelConfig(), CacheConfig(workers=1), log=lines.append)
    assert any(line.startswith("decoder on bad.mp3: Note: Illegal Audio-MPEG-Header") for line in lines), lines
    assert "Illegal" not in capfd.readouterr().err
