"""Noisy-student pseudo-labelling: which soundscapes, which windows, and the rounds' students."""

from __future__ import annotations

import numpy as np
import polars as pl

from birdpipe.config import HeadConfig
from birdpipe.evaluation.members import BirdnetWindows
from birdpipe.training.config import PseudoLabelConfig
from birdpipe.training.heads import train_fold_heads
from birdpipe.training.pseudo import best_round, pseudo_label_frame, pseudo_targets, run_rounds, unlabeled_recordings

CLASSES = ["a", "b", "c"]
HEADS = HeadConfig(kinds=("logistic",), epochs=20, lr=1e-2, mixup=0.0)


def test_unlabeled_soundscapes_exclude_2021s_labelled_train_soundscapes(tmp_path):
    for name in ("unlabeled_soundscapes/u1.ogg", "train_soundscapes/t1.ogg", "test_soundscapes/x.ogg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    dirs = PseudoLabelConfig().dirs
    assert unlabeled_recordings(tmp_path, dirs)["filename"].to_list() == ["unlabeled_soundscapes/u1.ogg", "train_soundscapes/t1.ogg"]
    (tmp_path / "train_soundscape_labels.csv").write_text("row_id,site,audio_id,seconds,birds\n")
    assert unlabeled_recordings(tmp_path, dirs)["filename"].to_list() == ["unlabeled_soundscapes/u1.ogg"]
    assert unlabeled_recordings(tmp_path / "nowhere", dirs).height == 0


def test_an_empty_soundscape_cache_has_no_windows_to_label(tmp_path):
    """A dataset without unlabeled soundscapes (2021's are labelled): pseudo_labels keeps round 0's heads."""
    from types import SimpleNamespace

    from birdpipe.config import CacheConfig, MelConfig
    from birdpipe.evaluation.members import cached_birdnet_windows
    from birdpipe.features.cache import build_mel_cache
    from birdpipe.features.reader import WindowCacheReader

    report = build_mel_cache(unlabeled_recordings(tmp_path, ("unlabeled_soundscapes",)), tmp_path, tmp_path / "cache",
                             MelConfig(), CacheConfig(workers=1), log=lambda m: None)  # fmt: skip
    sound = cached_birdnet_windows(WindowCacheReader(report.cache_dir), 5.0, None, SimpleNamespace(classes=CLASSES))
    assert sound.keys.height == 0 and sound.zero_shot.shape == (0, len(CLASSES))
    assert pseudo_label_frame([], sound, CLASSES).height == 0


def test_confident_windows_become_soft_targets():
    teacher = np.array([[0.9, 0.2, np.nan], [0.3, 0.4, np.nan], [np.nan, 0.6, 0.1]])
    mask, y = pseudo_targets(teacher, PseudoLabelConfig(min_confidence=0.5, power=2.0))
    assert mask.tolist() == [True, False, True]
    np.testing.assert_allclose(y, [[0.81, 0.04, 0.0], [0.0, 0.36, 0.01]])


def _windows(rng, labels, prefix) -> BirdnetWindows:
    centres = np.eye(3, 8) * 4
    x = (centres[labels] + rng.normal(0, 1.5, (len(labels), 8))).astype(np.float32)
    zero_shot = np.clip(np.eye(3)[labels] * 0.5 + rng.random((len(labels), 3)) * 0.5, 0, 1).astype(np.float32)
    zero_shot[:, 2] = np.nan  # BirdNET does not know species c
    keys = pl.DataFrame({"filename": [f"{prefix}{i // 2}.ogg" for i in range(len(labels))], "window_index": np.arange(len(labels)) % 2})
    return BirdnetWindows(keys, x, zero_shot)


def test_rounds_train_students_on_confident_soundscape_windows_and_score_each_round(tmp_path):
    rng = np.random.default_rng(0)
    recording_labels = np.arange(36) % 3
    train = _windows(rng, np.repeat(recording_labels, 2), "rec")
    files = [f"rec{i}.ogg" for i in range(36)]
    folds = pl.DataFrame({"filename": files, "primary_label": [CLASSES[k] for k in recording_labels], "fold": np.arange(36) // 3 % 3})
    metadata = folds.select("filename", "primary_label", secondary_labels=pl.lit([], pl.List(pl.String)))
    sound = _windows(rng, rng.integers(0, 3, 40), "soundscape")
    heads0 = {f: train_fold_heads(train.embedding, train.keys, folds, metadata, CLASSES, f, HEADS, tmp_path / "r0") for f in range(3)}
    cfg = PseudoLabelConfig(rounds=2, min_confidence=0.6, weight=0.5)

    rounds = run_rounds(train, sound, folds, metadata, CLASSES, heads0, ("birdnet", "logistic"), cfg, HEADS,
                        (0.0, 1.0), (0.0, 3.0), tmp_path / "pseudo", log=lambda m: None)  # fmt: skip

    assert [r.round for r in rounds] == [0, 1, 2] and rounds[0].labels == {}
    for r in rounds[1:]:
        assert set(r.pseudo_windows) == {0, 1, 2} and all(0 < n <= 40 for n in r.pseudo_windows.values())
        assert all(p["logistic"].is_relative_to(tmp_path / "pseudo" / f"round-{r.round}") for p in r.heads.values())
        assert 0.5 < r.scores["file_auc_fold_mean"] <= 1.0
    frame = pseudo_label_frame(rounds, sound, CLASSES)
    assert frame.height == sum(sum(r.pseudo_windows.values()) for r in rounds)
    assert frame.columns == ["round", "fold", "filename", "window_index", *CLASSES]
    assert frame.select(CLASSES).to_numpy().max(axis=1).min() >= 0.6
    assert best_round(rounds) in rounds


def test_pseudo_dirs_leave_out_labelled_soundscapes_and_add_a_named_unlabeled_folder(tmp_path):
    from birdpipe.data.config import DatasetConfig
    from birdpipe.data.layout import detect_layout
    from birdpipe.training.pseudo import pseudo_dirs

    (tmp_path / "train_audio/aaa").mkdir(parents=True)
    (tmp_path / "train_metadata.csv").write_text("primary_label,filename\naaa,aaa/x.ogg\n")
    for d in ("field", "unlabeled_soundscapes", "train_soundscapes"):
        (tmp_path / d).mkdir()
    (tmp_path / "train_soundscape_labels.csv").write_text("row_id,site,audio_id,seconds,birds\n")
    dirs = ("unlabeled_soundscapes", "train_soundscapes")
    assert pseudo_dirs(detect_layout(tmp_path), dirs, named_unlabeled=False) == ("unlabeled_soundscapes",)
    named = detect_layout(tmp_path, DatasetConfig(unlabeled_soundscapes="field"))
    assert pseudo_dirs(named, dirs, named_unlabeled=True) == ("unlabeled_soundscapes", "field")


class _Reader:
    """What `cached_birdnet_windows` reads of a BirdNET embeddings cache: 2 recordings' 3 s chunks."""

    def __init__(self, cache_dir, digest: str):
        self.cache_dir, self.digest = cache_dir, digest
        self.windows = pl.DataFrame({"filename": ["a.ogg"] * 4 + ["b.ogg"] * 2, "start_seconds": [0.0, 3.0, 6.0, 9.0, 0.0, 3.0]})
        self.windows = self.windows.with_row_index("row")
        self.embedding = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)

    def __len__(self) -> int:
        return self.windows.height

    def array(self, rows, column):
        assert column == "embedding"
        return self.embedding[rows]


def test_birdnet_windows_are_scored_once_per_cache_content(tmp_path):
    """The heads, scores, blend and pseudo-label assets share one classifier pass, kept beside the cache."""
    from types import SimpleNamespace

    from birdpipe.evaluation.members import cached_birdnet_windows

    calls = []

    def classifier():
        calls.append(1)
        return SimpleNamespace(logits=lambda emb, index: emb[:, : len(index)])

    species = SimpleNamespace(classes=["x", "y", "z"], index=np.array([0, -1, 1]), matched=np.array([True, False, True]))
    first = cached_birdnet_windows(_Reader(tmp_path, "d1"), 5.0, classifier, species)
    again = cached_birdnet_windows(_Reader(tmp_path, "d1"), 5.0, classifier, species)
    assert len(calls) == 1 and first.keys.equals(again.keys)
    np.testing.assert_array_equal(first.embedding, again.embedding)
    np.testing.assert_array_equal(first.zero_shot, again.zero_shot)  # NaN for the species BirdNET lacks, kept
    assert np.isnan(again.zero_shot[:, 1]).all() and again.keys.height == 3  # a: windows 0 and 1; b: window 0
    cached_birdnet_windows(_Reader(tmp_path, "d2"), 5.0, classifier, species)  # the cache changed
    assert len(calls) == 2 and len(list(tmp_path.glob("windows-*.parquet"))) == 1
