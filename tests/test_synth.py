"""The synthetic dataset: BirdCLEF layout, determinism, label consistency, learnability."""

from __future__ import annotations

import ast
import csv
import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from birdpipe.data.synth import (
    CALL_FAMILIES,
    METADATA_COLUMNS,
    CallEvent,
    SynthConfig,
    call_waveform,
    generate_dataset,
    make_species,
    window_labels,
)

TINY = SynthConfig(
    n_species=3,
    recordings_per_species=4,
    recording_seconds=4.0,
    n_soundscapes=2,
    soundscape_seconds=12.0,  # not a multiple of 5: the last window is partial
    n_unlabeled=1,
)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


def _audio(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): sf.read(p)[0] for p in sorted(root.rglob("*.ogg"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    generate_dataset(root, TINY)
    return root


def test_layout_and_columns(tiny):
    assert _header(tiny / "taxonomy.csv") == ["primary_label", "scientific_name", "common_name", "class_name"]
    assert _header(tiny / "train_metadata.csv") == list(METADATA_COLUMNS)
    assert _header(tiny / "test_soundscape_labels.csv") == ["row_id", "soundscape_id", "end_seconds", "birds"]
    assert len(_rows(tiny / "taxonomy.csv")) == TINY.n_species
    assert len(_rows(tiny / "train_metadata.csv")) == TINY.n_species * TINY.recordings_per_species
    assert len(list((tiny / "test_soundscapes").glob("*.ogg"))) == TINY.n_soundscapes
    assert len(list((tiny / "unlabeled_soundscapes").glob("*.ogg"))) == TINY.n_unlabeled


def test_metadata_values(tiny):
    taxonomy = {r["primary_label"]: r for r in _rows(tiny / "taxonomy.csv")}
    assert all(re.fullmatch(r"[a-z]{6}", label) for label in taxonomy)
    rows = _rows(tiny / "train_metadata.csv")
    for r in rows:
        assert r["primary_label"] in taxonomy
        assert r["scientific_name"] == taxonomy[r["primary_label"]]["scientific_name"]
        secondary = ast.literal_eval(r["secondary_labels"])
        assert isinstance(secondary, list) and set(secondary) <= set(taxonomy) - {r["primary_label"]}
        call_type = ast.literal_eval(r["type"])
        assert isinstance(call_type, list) and call_type and all(isinstance(t, str) for t in call_type)
        assert 0.5 <= float(r["rating"]) <= 5.0
        assert -90 <= float(r["latitude"]) <= 90 and -180 <= float(r["longitude"]) <= 180
        match = re.fullmatch(r"([a-z]{6})/XC(\d+)\.ogg", r["filename"])
        assert match and match[1] == r["primary_label"]
        assert r["url"] == f"https://xeno-canto.org/{match[2]}"
    listed = {r["filename"] for r in rows}
    assert len(listed) == len(rows)
    assert listed == {str(p.relative_to(tiny / "train_audio")) for p in (tiny / "train_audio").rglob("*.ogg")}


def test_audio_is_32khz_mono_and_not_silent(tiny):
    for path in sorted(tiny.rglob("*.ogg")):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (32000, 1, "OGG", "VORBIS")
        x, _ = sf.read(path)
        assert np.isfinite(x).all() and 1e-4 < np.sqrt(np.mean(x**2)) and np.abs(x).max() <= 1.0


def test_soundscape_labels_match_audio(tiny):
    taxonomy = {r["primary_label"] for r in _rows(tiny / "taxonomy.csv")}
    rows = _rows(tiny / "test_soundscape_labels.csv")
    stems = sorted(p.stem for p in (tiny / "test_soundscapes").glob("*.ogg"))
    assert sorted({r["soundscape_id"] for r in rows}) == stems
    for stem in stems:
        seconds = sf.info(tiny / "test_soundscapes" / f"{stem}.ogg").duration
        own = [r for r in rows if r["soundscape_id"] == stem]
        ends = [int(r["end_seconds"]) for r in own]
        assert ends == list(range(5, 5 * math.ceil(seconds / 5) + 1, 5)) == [5, 10, 15]
        assert [r["row_id"] for r in own] == [f"{stem}_{end}" for end in ends]
        for r in own:
            birds = r["birds"].split(" ")
            assert birds == ["nocall"] or (set(birds) <= taxonomy and birds == sorted(set(birds)))


def test_window_labels_need_enough_overlap():
    sp = make_species(1, np.random.default_rng(0))[0]

    def event(start, seconds):
        return CallEvent(sp, start, seconds, 1.0, 0.0)

    label = sp.label
    # 0.2 s before the boundary is too little; 0.4 s on each side counts for both windows.
    assert window_labels([event(4.8, 0.6)], 3) == [[], [label], []]
    assert window_labels([event(9.6, 0.8)], 3) == [[], [label], [label]]
    assert window_labels([event(14.5, 1.0)], 3) == [[], [], [label]]  # past the end is cut off


def test_same_seed_same_dataset_and_overwrite_cleans_up(tiny, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, TINY)
    for name in ("taxonomy.csv", "train_metadata.csv", "test_soundscape_labels.csv"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes()
    first, second = _audio(tiny), _audio(again)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)

    # Over a different dataset: its files are replaced, files it did not generate stay.
    previous = SynthConfig(n_species=2, recordings_per_species=2, n_soundscapes=1, soundscape_seconds=5.0)
    generate_dataset(again, dataclasses.replace(previous, seed=5))
    (again / "notes.txt").write_text("keep me")
    generate_dataset(again, TINY)
    assert (again / "train_metadata.csv").read_bytes() == (tiny / "train_metadata.csv").read_bytes()
    assert _audio(again).keys() == first.keys()
    assert (again / "notes.txt").read_text() == "keep me"


def test_other_seed_other_dataset(tiny, tmp_path):
    other = tmp_path / "other"
    generate_dataset(other, dataclasses.replace(TINY, seed=1))
    for name in ("taxonomy.csv", "train_metadata.csv", "test_soundscape_labels.csv"):
        assert (other / name).read_bytes() != (tiny / name).read_bytes()


@pytest.fixture(scope="module")
def wider(tmp_path_factory) -> Path:
    """Enough short recordings for proportions and a classifier."""
    root = tmp_path_factory.mktemp("synth") / "wider"
    cfg = SynthConfig(
        n_species=4, recordings_per_species=25, recording_seconds=4.0, n_soundscapes=1, soundscape_seconds=5.0
    )
    generate_dataset(root, cfg)
    return root


def test_secondary_fraction_and_short_recordings(wider):
    rows = _rows(wider / "train_metadata.csv")
    with_secondary = [r for r in rows if ast.literal_eval(r["secondary_labels"])]
    assert 0.1 <= len(with_secondary) / len(rows) <= 0.3  # configured 0.2
    seconds = [sf.info(wider / "train_audio" / r["filename"]).duration for r in rows]
    assert min(seconds) < 5.0 < max(seconds)


def test_no_secondary_labels_when_fraction_is_zero(tmp_path):
    cfg = SynthConfig(n_species=2, recordings_per_species=5, recording_seconds=2.0, secondary_fraction=0.0)
    generate_dataset(tmp_path, dataclasses.replace(cfg, n_soundscapes=0, n_unlabeled=0))
    assert all(r["secondary_labels"] == "[]" for r in _rows(tmp_path / "train_metadata.csv"))
    assert _rows(tmp_path / "test_soundscape_labels.csv") == []


def test_species_are_separable(wider):
    """Nearest centroid on per-band call prominence beats chance (0.25) by far."""
    rows = _rows(wider / "train_metadata.csv")
    features = []
    for r in rows:
        x, sr = sf.read(wider / "train_audio" / r["filename"])
        _, _, spec = scipy.signal.stft(x, sr, nperseg=1024)
        log_power = np.log(np.abs(spec) ** 2 + 1e-12)
        features.append(log_power.max(axis=1) - np.median(log_power, axis=1))
    features = np.array(features)
    labels = np.array([r["primary_label"] for r in rows])
    train = np.arange(len(rows)) % 2 == 0
    species = sorted(set(labels))
    centroids = np.stack([features[train & (labels == s)].mean(axis=0) for s in species])
    distances = ((features[~train][:, None] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = np.mean(np.array(species)[distances.argmin(axis=1)] == labels[~train])
    assert accuracy > 0.6


@pytest.mark.parametrize("index", range(len(CALL_FAMILIES)))
def test_calls_sit_in_their_band(index):
    sp = make_species(len(CALL_FAMILIES), np.random.default_rng(3))
    sp = next(s for s in sp if s.family == CALL_FAMILIES[index])
    x = call_waveform(sp, sp.call_seconds, 1.0, 32000)
    assert np.isclose(np.sqrt(np.mean(x**2)), 1.0)
    power = np.abs(np.fft.rfft(x)) ** 2
    peak_hz = np.fft.rfftfreq(x.size, 1 / 32000)[power.argmax()]
    assert sp.freq_hz / 2 ** sp.sweep_octaves <= peak_hz <= sp.freq_hz * 2 ** sp.sweep_octaves


def test_species_labels_unique_and_limited():
    species = make_species(60, np.random.default_rng(0))
    assert len({s.label for s in species}) == 60 and len({s.common_name for s in species}) == 60
    assert len({s.family for s in species}) == len(CALL_FAMILIES)
    with pytest.raises(ValueError, match="n_species"):
        make_species(10_000, np.random.default_rng(0))


@pytest.mark.slow
def test_cli_writes_ten_minute_soundscapes(tmp_path, capsys):
    """`birdpipe synth --soundscape-seconds 600` used to die in libvorbis (one long write)."""
    from birdpipe.cli import main

    out = tmp_path / "s"
    argv = ["synth", "--out", str(out), "--species", "2", "--recordings", "1", "--soundscapes", "1", "--soundscape-seconds", "600"]
    assert main(argv) == 0
    assert "120 windows" in capsys.readouterr().out
    scapes = sorted(out.glob("*soundscapes/*.ogg"))
    assert len(scapes) == 3 and all(sf.info(p).frames == 600 * 32000 for p in scapes)
