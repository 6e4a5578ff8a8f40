"""Integration tests on the real xeno-canto recordings in ../shared/data/xc-puerto-rico.

They skip with the reason when that folder is absent. Kept to what runs in seconds; the full
graph on this set is run with `make run` and reported in docs/benchmarks.md.
"""

import polars as pl
import pytest

from birdpipe.features.cache import build_mel_cache
from birdpipe.features.reader import MelCacheReader
from birdpipe.cli import main
from birdpipe.config import CacheConfig, FoldConfig, MelConfig, ModelConfig
from birdpipe.data.folds import assign_folds
from birdpipe.data.manifest import build_manifest
from birdpipe.data.metadata import load_taxonomy, load_train_metadata
from birdpipe.models.sed import build_model, model_meta, save_checkpoint
from birdpipe.paths import list_audio
from birdpipe.inference.soundscapes import expected_windows

pytestmark = pytest.mark.realdata


@pytest.fixture
def recordings(real_dataset) -> pl.DataFrame:
    taxonomy = load_taxonomy(real_dataset / "taxonomy.csv")
    meta = load_train_metadata(real_dataset / "train_metadata.csv", taxonomy)
    assert meta.quarantine.height == 0, meta.quarantine
    return meta.recordings


def test_metadata_and_folds_cover_every_recording(recordings):
    assert recordings.height == 360 and recordings["primary_label"].n_unique() == 72
    folds = assign_folds(recordings, FoldConfig(n_folds=5))
    # species with fewer recordings than folds stay in every training set (fold -1) by default
    assert folds.height == 360 and sorted(folds["fold"].unique().to_list()) == [-1, 0, 1, 2, 3, 4]


def test_every_real_recording_is_readable(real_dataset, recordings):
    manifest = build_manifest(recordings, real_dataset / "train_audio")
    unreadable = manifest.filter(~pl.col("readable"))
    assert unreadable.height == 0, unreadable.select("filename", "reason")
    assert (manifest["sample_rate"] == 32000).all() and (manifest["duration_s"] > 0).all()


def test_cache_of_real_recordings_then_incremental_rerun(real_dataset, recordings, tmp_path):
    # The shortest recordings, so the test stays quick; damaged ones included when present.
    subset = recordings.join(
        build_manifest(recordings, real_dataset / "train_audio").select("filename", "duration_s", "damaged"), on="filename"
    ).sort("damaged", "duration_s", descending=[True, False]).head(20)
    mel, cache = MelConfig(), CacheConfig(workers=2)
    first = build_mel_cache(subset, real_dataset / "train_audio", tmp_path, mel, cache, log=lambda _: None)
    assert first.quarantined.height == 0 and first.files == 20 and first.recomputed == 20
    reader = MelCacheReader(first.cache_dir)
    assert set(reader.windows["filename"]) == set(subset["filename"])
    mels = reader.mels(reader.windows["row"].to_numpy()[:8])
    assert mels.shape == (8, mel.n_mels, mel.n_frames) and (mels >= 0).all() and (mels <= 1).all()
    again = build_mel_cache(subset, real_dataset / "train_audio", tmp_path, mel, cache, log=lambda _: None)
    assert again.recomputed == 0 and again.reused == 20 and again.digest == first.digest


def test_predict_cli_on_real_unlabeled_soundscapes(real_dataset, recordings, tmp_path):
    classes = load_taxonomy(real_dataset / "taxonomy.csv")["primary_label"].to_list()
    model = build_model(ModelConfig(backbone="test_efficientnet"), len(classes))
    save_checkpoint(tmp_path / "model" / "fold-0" / "best.pt", model, model_meta(model, classes, MelConfig(), fold=0))
    soundscapes = real_dataset / "unlabeled_soundscapes"
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(tmp_path / "model"), "--audio", str(soundscapes), "--out", str(out)]) == 0
    preds = pl.read_csv(out)
    assert preds.columns == ["row_id", *classes]
    assert preds.height == expected_windows(list_audio(soundscapes), 5.0)
