"""Synthetic BirdCLEF-layout dataset for demos and end-to-end tests.

Real recordings cannot ship with the repository, so `make demo` and the end-to-end tests
run on made-up species whose calls are synthesised: each species has its own call family,
frequency band, harmonics and rhythm, so a small CNN can learn them in a few epochs, while
random pitch, loudness and coloured background noise keep the task from being trivial.
Soundscapes place calls at known times, which gives exact per-window labels for scoring.

Everything is drawn from `numpy.random.Generator`s seeded from `SynthConfig.seed`: a seed
gives byte-identical CSVs and identical decoded audio (Ogg stream serial numbers differ).
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft

from birdpipe.data import audio as audio_io

WINDOW_SECONDS = 5
#: A species counts for a soundscape window when this much of one of its calls lies inside.
MIN_CALL_OVERLAP_SECONDS = 0.3

METADATA_COLUMNS = (
    "primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name",
    "common_name", "author", "license", "rating", "url", "filename",
)  # fmt: skip
TAXONOMY_COLUMNS = ("primary_label", "scientific_name", "common_name", "class_name")
SOUNDSCAPE_LABEL_COLUMNS = ("row_id", "soundscape_id", "end_seconds", "birds")

CALL_FAMILIES = ("upsweep", "downsweep", "trill", "harmonic", "two_note", "buzz")
_CALL_TYPES = {
    "upsweep": (["call"], ["flight call"]),
    "downsweep": (["call"], ["alarm call"]),
    "trill": (["song"], ["call", "song"]),
    "harmonic": (["call"], ["call", "song"]),
    "two_note": (["song"], ["call", "song"]),
    "buzz": (["call"], ["alarm call"]),
}

# Made-up Latin stems: genus[:3] + epithet[:3] gives the label, as for real eBird-like codes;
# each genus and epithet stem has its own English noun / adjective, so common names are unique.
_GENERA = (
    ("Arabornis", "Ground-Dove"), ("Belospiza", "Seedeater"), ("Coricichla", "Thrush"),
    ("Drimophila", "Antwren"), ("Eritaurus", "Tanager"), ("Falcinella", "Woodcreeper"),
    ("Galbulops", "Jacamar"), ("Hylorchis", "Wren"), ("Ictoraphus", "Oriole"),
    ("Lanioxis", "Shrike-Vireo"), ("Melodryas", "Warbler"), ("Nyctiprora", "Nightjar"),
    ("Ornithax", "Flycatcher"), ("Picumnella", "Piculet"), ("Quiscopsis", "Grackle"),
    ("Ralliparus", "Crake"), ("Saltaura", "Saltator"), ("Turdillo", "Solitaire"),
    ("Vireolus", "Vireo"), ("Xenopipo", "Manakin"), ("Zonotrix", "Sparrow"),
)  # fmt: skip
_EPITHETS = (
    ("albiventris", "White-bellied"), ("rubricapilla", "Red-capped"), ("caeruleus", "Blue"),
    ("flaviceps", "Yellow-headed"), ("nigrogularis", "Black-throated"), ("olivacea", "Olive"),
    ("cinerascens", "Ashy"), ("fuscata", "Dusky"), ("griseipectus", "Grey-breasted"),
    ("virescens", "Greenish"), ("aurifrons", "Golden-fronted"), ("canescens", "Hoary"),
    ("longicauda", "Long-tailed"), ("punctata", "Spotted"), ("striolata", "Streaked"),
    ("maculipennis", "Spot-winged"),
)  # fmt: skip
_AUTHORS = (
    "Ana Rivera", "Tom Becker", "Lucia Ortiz", "Ken Walsh", "Maya Fernandes", "Jonas Lind",
    "Priya Nair", "Samuel Okafor", "Ines Duarte", "Hugo Marchetti",
)  # fmt: skip
_LICENSES = (
    "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "https://creativecommons.org/licenses/by-nc-nd/4.0/",
    "https://creativecommons.org/licenses/by-sa/4.0/",
    "https://creativecommons.org/licenses/by/4.0/",
)
#: Recordings are placed around this made-up island (lat, lon).
_SITE = (18.2, -66.5)


@dataclass(frozen=True)
class SynthConfig:
    n_species: int = 8
    recordings_per_species: int = 12
    #: Mean recording length; lengths are log-normal around it, some shorter than 5 s.
    recording_seconds: float = 12.0
    n_soundscapes: int = 4
    soundscape_seconds: float = 60.0
    #: Soundscapes without labels (background mixing, pseudo-labelling).
    n_unlabeled: int = 2
    sample_rate: int = 32000
    seed: int = 0
    #: Fraction of recordings that also contain a quieter second species.
    secondary_fraction: float = 0.2


@dataclass(frozen=True)
class Species:
    """What makes a species' calls recognisable."""

    label: str
    scientific_name: str
    common_name: str
    family: str
    #: Centre of the call's band (the fundamental for a harmonic stack).
    freq_hz: float
    #: Frequency excursion of sweeps and two-note whistles.
    sweep_octaves: float
    call_seconds: float
    #: Mean time between call onsets within a bout.
    interval_seconds: float
    n_harmonics: int
    #: Note rate of a trill, amplitude-modulation rate of a buzz.
    rate_hz: float


@dataclass(frozen=True)
class CallEvent:
    """One call of one species placed in a recording or soundscape."""

    species: Species
    start_seconds: float
    seconds: float
    #: Pitch factor of this call (per-recording jitter).
    pitch: float
    #: Call RMS relative to the unit-RMS background noise, in dB.
    snr_db: float

    @property
    def end_seconds(self) -> float:
        return self.start_seconds + self.seconds


@dataclass(frozen=True)
class SynthSummary:
    root: Path
    n_species: int
    n_recordings: int
    n_secondary: int
    n_short_recordings: int
    train_audio_seconds: float
    n_soundscapes: int
    n_windows: int
    n_nocall_windows: int
    n_multi_species_windows: int
    n_unlabeled: int

    @property
    def taxonomy(self) -> Path:
        return self.root / "taxonomy.csv"

    @property
    def train_metadata(self) -> Path:
        return self.root / "train_metadata.csv"

    @property
    def soundscape_labels(self) -> Path:
        return self.root / "test_soundscape_labels.csv"

    def __str__(self) -> str:
        return "\n".join([
            f"synthetic dataset in {self.root}",
            f"  species:              {self.n_species} ({self.taxonomy.name})",
            f"  train recordings:     {self.n_recordings}, {self.train_audio_seconds / 60:.1f} min"
            f" ({self.n_secondary} with a secondary label, {self.n_short_recordings} shorter than"
            f" {WINDOW_SECONDS} s) in train_audio/",
            f"  test soundscapes:     {self.n_soundscapes}, {self.n_windows} windows"
            f" ({self.n_nocall_windows} nocall, {self.n_multi_species_windows} with 2+ species)"
            f" labelled in {self.soundscape_labels.name}",
            f"  unlabeled soundscapes: {self.n_unlabeled} in unlabeled_soundscapes/",
        ])  # fmt: skip


# --- species ---------------------------------------------------------------------------


def make_species(n: int, rng: np.random.Generator) -> list[Species]:
    """`n` species with distinct labels, call families cycled and bands spread over 1-10 kHz."""
    if not 1 <= n <= len(_GENERA) * len(_EPITHETS):
        raise ValueError(f"n_species must be between 1 and {len(_GENERA) * len(_EPITHETS)}, got {n}")
    pairs = rng.choice(len(_GENERA) * len(_EPITHETS), size=n, replace=False)
    # Log-spaced band centres, shuffled so that neighbouring bands get different families.
    centres = np.geomspace(1500.0, 8000.0, n) * rng.uniform(0.95, 1.05, n)
    centres = centres[rng.permutation(n)]
    species = []
    for i, pair in enumerate(pairs):
        genus, noun = _GENERA[pair // len(_EPITHETS)]
        epithet, adjective = _EPITHETS[pair % len(_EPITHETS)]
        family = CALL_FAMILIES[i % len(CALL_FAMILIES)]
        species.append(
            Species(
                label=(genus[:3] + epithet[:3]).lower(),
                scientific_name=f"{genus} {epithet}",
                common_name=f"{adjective} {noun}",
                family=family,
                # A harmonic stack is recognised by its fundamental; keep it low so harmonics fit.
                freq_hz=float(centres[i] / 2 if family == "harmonic" else centres[i]),
                sweep_octaves=float(rng.uniform(0.4, 1.0)),
                call_seconds=float(rng.uniform(0.7, 1.2) if family == "trill" else rng.uniform(0.2, 0.5)),
                interval_seconds=float(rng.uniform(0.8, 2.5)),
                n_harmonics=int(rng.integers(4, 7) if family == "harmonic" else rng.integers(1, 3)),
                rate_hz=float(rng.uniform(10, 25) if family == "trill" else rng.uniform(60, 140)),
            )
        )
    return sorted(species, key=lambda s: s.label)


# --- sound synthesis -------------------------------------------------------------------


def _contour(sp: Species, u: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative instantaneous frequency and amplitude envelope of one call, `u` in [0, 1)."""
    ones = np.ones_like(u)
    if sp.family == "upsweep":
        return 2.0 ** (sp.sweep_octaves * (u - 0.5)), ones
    if sp.family == "downsweep":
        return 2.0 ** (sp.sweep_octaves * (0.5 - u)), ones
    if sp.family == "trill":
        note = (t * sp.rate_hz) % 1.0  # short, slightly falling notes at the species' rate
        return 2.0 ** (0.25 * (0.5 - note)), np.where(note < 0.6, np.sin(np.pi * note / 0.6) ** 2, 0.0)
    if sp.family == "harmonic":
        return 1.0 + 0.015 * np.sin(2 * np.pi * 6.0 * t), ones
    if sp.family == "two_note":
        high = u < 0.45
        gap = np.clip((np.abs(u - 0.5) - 0.05) / 0.05, 0.0, 1.0)  # silent 10% between the notes
        return np.where(high, 2.0 ** (sp.sweep_octaves / 2), 2.0 ** (-sp.sweep_octaves / 2)), gap
    if sp.family == "buzz":
        return ones, 0.5 * (1.0 + np.sin(2 * np.pi * sp.rate_hz * t))
    raise ValueError(f"unknown call family {sp.family!r}")


def call_waveform(sp: Species, seconds: float, pitch: float, sample_rate: int) -> np.ndarray:
    """One call at unit RMS: the family's frequency contour with harmonics below Nyquist."""
    t = np.arange(max(int(seconds * sample_rate), 1)) / sample_rate
    u = t / seconds
    rel_freq, envelope = _contour(sp, u, t)
    freq = sp.freq_hz * pitch * rel_freq
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    orders = np.arange(1, sp.n_harmonics + 1)
    orders = orders[orders * freq.max() < 0.45 * sample_rate]
    decay = 0.7 if sp.family == "harmonic" else 0.35
    wave = (decay ** (orders - 1))[:, None] * np.sin(orders[:, None] * phase[None, :])
    fade = np.clip(np.minimum(t, seconds - t) / 0.015, 0.0, 1.0)  # 15 ms ramps, no clicks
    return _unit_rms(wave.sum(axis=0) * envelope * fade)


def background_noise(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS mixture of white, pink and brown noise, sometimes with gusty wind rumble."""
    n_fft = scipy.fft.next_fast_len(n_samples, real=True)  # arbitrary lengths make FFTs slow
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    rel = 100.0 / np.maximum(freqs, 20.0)  # 1/f relative to 100 Hz, flat below 20 Hz
    white, pink, brown = rng.dirichlet([1.0, 1.0, 1.0])
    noise = _unit_rms(_shaped_noise(n_samples, n_fft, np.sqrt(white + pink * rel + brown * rel**2), rng))
    if rng.random() < 0.4:
        lowpass = 1.0 / (1.0 + (freqs / rng.uniform(60, 200)) ** 4)
        rumble = _unit_rms(_shaped_noise(n_samples, n_fft, lowpass, rng))
        noise = noise + rng.uniform(1.0, 3.0) * rumble * _gusts(n_samples, sample_rate, rng)
    return _unit_rms(noise)


def _shaped_noise(n_samples: int, n_fft: int, gain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White noise filtered by the magnitude response `gain` (one value per rfft bin)."""
    spectrum = scipy.fft.rfft(rng.standard_normal(n_fft)) * gain
    return scipy.fft.irfft(spectrum, n_fft)[:n_samples]


def _gusts(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Slowly varying positive gain: log-normal values at 0.5 s knots, linearly interpolated."""
    knots = np.arange(0, n_samples / sample_rate + 1.0, 0.5)
    gain = np.exp(rng.normal(0.0, 0.7, knots.size))
    return np.interp(np.arange(n_samples) / sample_rate, knots, gain)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def render(events: list[CallEvent], noise: np.ndarray, sample_rate: int, level: float) -> np.ndarray:
    """Calls added onto the noise at their SNRs, scaled to `level` RMS noise, peak below 0.95."""
    mix = noise.copy()
    for ev in events:
        start = int(round(ev.start_seconds * sample_rate))
        call = call_waveform(ev.species, ev.seconds, ev.pitch, sample_rate)[: max(mix.size - start, 0)]
        mix[start : start + call.size] += 10.0 ** (ev.snr_db / 20.0) * call
    mix *= level
    peak = np.abs(mix).max()
    return (mix * (0.95 / peak if peak > 0.95 else 1.0)).astype(np.float32)


# --- placement -------------------------------------------------------------------------


def bout(
    sp: Species,
    start: float,
    end: float,
    pitch: float,
    snr_db: float,
    rng: np.random.Generator,
    sparsity: float = 1.0,
) -> list[CallEvent]:
    """Calls of one species from `start` at its rhythm (jittered) that end before `end`."""
    events = []
    t = start
    while True:
        seconds = sp.call_seconds * rng.uniform(0.9, 1.1)
        if t + seconds > end:
            return events
        pitch_jitter, loudness_jitter = rng.uniform(0.99, 1.01), rng.normal(0.0, 2.0)
        events.append(CallEvent(sp, t, seconds, pitch * pitch_jitter, snr_db + loudness_jitter))
        t += seconds + sp.interval_seconds * sparsity * rng.uniform(0.6, 1.5)


def window_labels(events: list[CallEvent], n_windows: int) -> list[list[str]]:
    """Sorted labels per 5 s window: species with at least 0.3 s of a call inside it."""
    labels: list[set[str]] = [set() for _ in range(n_windows)]
    for ev in events:
        first = int(ev.start_seconds // WINDOW_SECONDS)
        for w in range(first, min(int(ev.end_seconds // WINDOW_SECONDS) + 1, n_windows)):
            inside = min(ev.end_seconds, (w + 1) * WINDOW_SECONDS) - max(ev.start_seconds, w * WINDOW_SECONDS)
            if inside >= MIN_CALL_OVERLAP_SECONDS:
                labels[w].add(ev.species.label)
    return [sorted(s) for s in labels]


def soundscape_events(species: list[Species], seconds: float, rng: np.random.Generator) -> list[CallEvent]:
    """Per 5 s window: no call (25%), two species (20%) or one species, each as a short bout."""
    events = []
    for w0 in np.arange(0.0, seconds, WINDOW_SECONDS):
        n_present = min(int(rng.choice([0, 1, 2], p=[0.25, 0.55, 0.2])), len(species))
        for idx in rng.choice(len(species), size=n_present, replace=False):
            sp = species[idx]
            start = w0 + rng.uniform(0.0, WINDOW_SECONDS - min(sp.call_seconds, 1.0))
            # Bouts may run into the next window, as real calls do; labels follow the overlap.
            end = min(start + 1.1 * sp.call_seconds + rng.uniform(0.0, 3.0), seconds)
            events += bout(sp, start, end, rng.uniform(0.95, 1.05), rng.uniform(-14.0, 8.0), rng)
    return events


# --- dataset ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recording:
    species: Species
    secondary: Species | None
    xc_id: int
    seconds: float
    snr_db: float
    rating: float
    call_type: list[str]
    latitude: float
    longitude: float
    author: str
    license: str

    @property
    def filename(self) -> str:
        return f"{self.species.label}/XC{self.xc_id}.ogg"


def plan_recordings(species: list[Species], cfg: SynthConfig, rng: np.random.Generator) -> list[_Recording]:
    """Metadata of every training recording; ratings follow the SNR like xeno-canto grades."""
    n = len(species) * cfg.recordings_per_species
    sigma = 0.6  # log-normal spread: roughly one recording in eight is shorter than 5 s
    seconds = cfg.recording_seconds * np.exp(rng.normal(-sigma**2 / 2, sigma, n))
    seconds = np.clip(seconds, 1.5, 4 * cfg.recording_seconds)
    snr_db = rng.uniform(-18.0, 12.0, n)
    rating = np.clip(np.round((snr_db + 18.0) / 30.0 * 9.0 + 1.0 + rng.normal(0.0, 1.0, n)) / 2.0, 0.5, 5.0)
    xc_ids = rng.choice(900_000, size=n, replace=False) + 100_000
    has_secondary = rng.random(n) < cfg.secondary_fraction
    recordings = []
    for i in range(n):
        sp = species[i // cfg.recordings_per_species]
        others = [s for s in species if s is not sp]
        options = _CALL_TYPES[sp.family]
        recordings.append(
            _Recording(
                species=sp,
                secondary=others[rng.integers(len(others))] if has_secondary[i] and others else None,
                xc_id=int(xc_ids[i]),
                seconds=float(max(seconds[i], sp.call_seconds * 1.1 + 1.0)),
                snr_db=float(snr_db[i]),
                rating=float(rating[i]),
                call_type=options[rng.integers(len(options))],
                latitude=round(_SITE[0] + rng.normal(0.0, 0.15), 4),
                longitude=round(_SITE[1] + rng.normal(0.0, 0.4), 4),
                author=_AUTHORS[rng.integers(len(_AUTHORS))],
                license=_LICENSES[rng.integers(len(_LICENSES))],
            )
        )
    return sorted(recordings, key=lambda r: r.filename)


def recording_events(rec: _Recording, rng: np.random.Generator) -> list[CallEvent]:
    """The primary species calling from the first second on; a secondary one quieter and sparser."""
    pitch = rng.uniform(0.95, 1.05)
    start = rng.uniform(0.05, min(1.0, rec.seconds - rec.species.call_seconds * 1.1))
    events = bout(rec.species, start, rec.seconds, pitch, rec.snr_db, rng)
    if rec.secondary is not None:
        snr = rec.snr_db - rng.uniform(6.0, 15.0)
        start = rng.uniform(0.0, (rec.seconds - 1.1 * rec.secondary.call_seconds) / 2)
        events += bout(rec.secondary, start, rec.seconds, rng.uniform(0.95, 1.05), snr, rng, sparsity=2.0)
    return events


def _noise_level(rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(0.004), np.log(0.04))))


def soundscape(
    species: list[Species], n_samples: int, sr: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[CallEvent]]:
    """Audio of one soundscape and the calls in it."""
    events = soundscape_events(species, n_samples / sr, rng)
    return render(events, background_noise(n_samples, sr, rng), sr, _noise_level(rng)), events


def write_audio(path: Path, x: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio_io.write(path, x, sample_rate, format="OGG", subtype="VORBIS")


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _clear(out: Path) -> None:
    """Remove what a previous run generated, leaving any other files in `out` alone."""
    for folder in ("train_audio", "test_soundscapes", "unlabeled_soundscapes"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in ("taxonomy.csv", "train_metadata.csv", "test_soundscape_labels.csv"):
        (out / name).unlink(missing_ok=True)


def generate_dataset(out: Path, cfg: SynthConfig = SynthConfig()) -> SynthSummary:
    """Write the dataset to `out` (replacing a previous one) and summarise it.

    Each part draws from its own child seed, so e.g. more soundscapes leave the training
    recordings unchanged.
    """
    out = Path(out)
    sr = cfg.sample_rate
    species_seed, train_seed, scape_seed, unlabeled_seed = np.random.SeedSequence(cfg.seed).spawn(4)
    species = make_species(cfg.n_species, np.random.default_rng(species_seed))
    plan_seed, *audio_seeds = train_seed.spawn(1 + cfg.n_species * cfg.recordings_per_species)
    recordings = plan_recordings(species, cfg, np.random.default_rng(plan_seed))

    _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(
        out / "taxonomy.csv",
        TAXONOMY_COLUMNS,
        [(s.label, s.scientific_name, s.common_name, "Aves") for s in species],
    )
    _write_csv(
        out / "train_metadata.csv",
        METADATA_COLUMNS,
        [
            (r.species.label, str([r.secondary.label] if r.secondary else []), str(r.call_type),
             f"{r.latitude:.4f}", f"{r.longitude:.4f}", r.species.scientific_name, r.species.common_name,
             r.author, r.license, f"{r.rating:.1f}", f"https://xeno-canto.org/{r.xc_id}", r.filename)
            for r in recordings
        ],
    )  # fmt: skip
    for rec, seed in zip(recordings, audio_seeds):
        rng = np.random.default_rng(seed)
        noise = background_noise(int(rec.seconds * sr), sr, rng)
        audio = render(recording_events(rec, rng), noise, sr, _noise_level(rng))
        write_audio(out / "train_audio" / rec.filename, audio, sr)

    n_samples = int(round(cfg.soundscape_seconds * sr))
    n_windows = math.ceil(n_samples / (WINDOW_SECONDS * sr))
    scape_ids = np.random.default_rng(scape_seed).choice(90_000, cfg.n_soundscapes, replace=False) + 10_000
    label_rows = []
    for scape_id, seed in zip(sorted(scape_ids), scape_seed.spawn(cfg.n_soundscapes)):
        stem = f"soundscape_{scape_id}"
        audio, events = soundscape(species, n_samples, sr, np.random.default_rng(seed))
        write_audio(out / "test_soundscapes" / f"{stem}.ogg", audio, sr)
        for w, labels in enumerate(window_labels(events, n_windows)):
            end = (w + 1) * WINDOW_SECONDS
            label_rows.append((f"{stem}_{end}", stem, end, " ".join(labels) or "nocall"))
    _write_csv(out / "test_soundscape_labels.csv", SOUNDSCAPE_LABEL_COLUMNS, label_rows)

    for i, seed in enumerate(unlabeled_seed.spawn(cfg.n_unlabeled)):
        rng = np.random.default_rng(seed)
        day, hour = rng.integers(1, 29), rng.integers(5, 10)
        audio, _ = soundscape(species, n_samples, sr, rng)
        # Named like BirdCLEF 2025 recorder files: site_date_time.
        name = f"S{i + 1:02d}_202404{day:02d}_{hour:02d}0000.ogg"
        write_audio(out / "unlabeled_soundscapes" / name, audio, sr)

    birds = [row[3] for row in label_rows]
    return SynthSummary(
        root=out,
        n_species=len(species),
        n_recordings=len(recordings),
        n_secondary=sum(r.secondary is not None for r in recordings),
        n_short_recordings=sum(r.seconds < WINDOW_SECONDS for r in recordings),
        train_audio_seconds=sum(int(r.seconds * sr) / sr for r in recordings),
        n_soundscapes=cfg.n_soundscapes,
        n_windows=len(label_rows),
        n_nocall_windows=birds.count("nocall"),
        n_multi_species_windows=sum(" " in b for b in birds),
        n_unlabeled=cfg.n_unlabeled,
    )
