"""Pictures and progress lines the assets show: example windows per species, per-species scores,
members side by side; progress with rate and ETA."""

import polars as pl
import pytest

from birdpipe.evaluation.plots import plot_mel_examples, plot_members, plot_species_scores
from birdpipe.features.config import MelConfig
from birdpipe.features.examples import species_examples
from birdpipe.progress import Progress

PNG = b"\x89PNG\r\n\x1a\n"


def test_example_windows_per_species_with_and_without_noise_reduction(tiny_dataset, tmp_path):
    meta = pl.read_csv(tiny_dataset / "train_metadata.csv")
    cfg = MelConfig(n_mels=64, fmax=14000.0)
    examples = species_examples(meta, tiny_dataset / "train_audio", cfg, n_species=3)
    assert [e.species for e in examples] == sorted(meta["primary_label"].unique())[:3]
    e = examples[0]
    assert e.raw.shape == e.reduced.shape == (cfg.n_mels, cfg.n_frames)
    assert (e.raw != e.reduced).any(), "noise reduction changed nothing"
    assert species_examples(meta, tiny_dataset / "train_audio", cfg.replace(noise_reduce=False), 1)[0].reduced is None
    assert plot_mel_examples(examples, cfg, tmp_path / "ex.png").read_bytes()[:8] == PNG
    # a recording that does not decode is left out, not fatal
    broken = meta.head(1).with_columns(filename=pl.lit("missing/none.ogg"))
    assert species_examples(broken, tiny_dataset / "train_audio", cfg, 1) == []


def test_score_plots_draw_every_species_and_member(tmp_path):
    species = pl.DataFrame({"species": ["a", "b", "c"], "positives": [3, 1, 0], "ap": [0.9, 0.4, None], "auc": [0.95, 0.5, None]})
    assert plot_species_scores(species, tmp_path / "s.png").read_bytes()[:8] == PNG
    members = pl.DataFrame({"member": ["sed", "birdnet", "blend"], "file_auc": [0.8, 0.7, 0.85], "file_cmap": [0.5, 0.4, 0.6]})
    assert plot_members(members, tmp_path / "m.png").read_bytes()[:8] == PNG


def test_progress_lines_say_rate_and_eta(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr("birdpipe.progress.time.perf_counter", lambda: float(next(clock)))
    lines: list[str] = []
    progress = Progress(5, lines.append, "mel cache", "recordings", every=2, interval_s=1e9)
    for _ in range(5):
        progress.update()
    assert len(lines) == 3  # after 2, 4 and the last
    assert lines[0] == "mel cache: 2/5 recordings (40%), 1.00 recordings/s, ETA 3s"
    assert lines[-1].endswith("done")


@pytest.mark.parametrize("every", [1, 7])
def test_progress_logs_the_end_once(every):
    lines: list[str] = []
    progress = Progress(3, lines.append, "predict", every=every)
    for _ in range(3):
        progress.update()
    assert lines[-1].startswith("predict: 3/3 files (100%)") and sum("3/3" in line for line in lines) == 1
