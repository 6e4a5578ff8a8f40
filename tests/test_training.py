from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from birdpipe.config import AugmentConfig, MelConfig, ModelConfig, TrackingConfig, TrainConfig
from birdpipe.models.sed import load_model
from birdpipe.models.predict import predict_windows, select_device
from birdpipe.evaluation.plots import plot_history
from birdpipe.training.loop import FoldData, FoldTracking, lr_factor, train_fold

CLASSES = ["sp0", "sp1", "sp2"]
MEL = MelConfig(sample_rate=8000, n_fft=512, hop_length=640, n_mels=32, fmax=4000.0, noise_reduce=False)  # 63 frames


class FakeCache:
    """In-memory stand-in with the MelCacheReader interface: each species lights its own mel band."""

    def __init__(self, n_recordings: int = 12, windows_per_recording: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        rows = []
        for r in range(n_recordings):
            label = CLASSES[r % len(CLASSES)]
            for w in range(windows_per_recording):
                rows.append((f"{label}/XC{r}.ogg", w, 5.0 * w, 5.0 * w + 5, label, []))
        self.windows = pl.DataFrame(
            rows, schema=["filename", "window_index", "start_seconds", "end_seconds", "primary_label", "secondary_labels"],
            orient="row",
        ).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
        self.mel_config = MEL
        self.digest = "fake-digest-0"
        self._x = rng.random((self.windows.height, MEL.n_mels, MEL.n_frames), dtype=np.float32) * 0.3
        for i, label in enumerate(self.windows["primary_label"]):
            band = CLASSES.index(label) * 10
            self._x[i, band : band + 8] += 0.7

    def mels(self, rows: np.ndarray) -> np.ndarray:
        return self._x[np.asarray(rows)]


def _frames(cache: FakeCache) -> tuple[pl.DataFrame, pl.DataFrame]:
    recs = cache.windows.select("filename", "primary_label", "secondary_labels").unique("filename", maintain_order=True)
    folds = recs.select("filename", "primary_label").with_columns(fold=pl.int_range(pl.len()) // 3 % 2)
    metadata = recs.with_columns(rating=pl.Series([4.0, 0.0, 2.5] * (recs.height // 3)))
    return folds, metadata


def _cfg(**changes) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(backbone="test_efficientnet", drop_rate=0.1, drop_path_rate=0.0),
        augment=AugmentConfig(batch={"mixup": 0.5, "time_mask": 0.5, "freq_mask": 0.5, "cutmix": 0.3}),
        epochs=3, batch_size=8, lr=3e-3, warmup_epochs=1, patience=10, device="cpu", num_workers=0,
    )  # fmt: skip
    return base.replace(**changes)


class Killed(Exception):
    pass


def test_resume_after_kill_reaches_the_same_weights(tmp_path):
    cache = FakeCache()
    folds, metadata = _frames(cache)
    cfg = _cfg()
    whole = train_fold(FoldData(cache, folds, metadata, CLASSES), 0, cfg, tmp_path / "whole", log=lambda m: None)

    def killer(message: str) -> None:
        if "epoch 2/3" in message:
            raise Killed

    with pytest.raises(Killed):
        train_fold(FoldData(cache, folds, metadata, CLASSES), 0, cfg, tmp_path / "resumed", log=killer)
    messages: list[str] = []
    resumed = train_fold(FoldData(cache, folds, metadata, CLASSES), 0, cfg, tmp_path / "resumed", log=messages.append)

    assert any("resuming after epoch 2" in m for m in messages)
    assert resumed.epochs_run == whole.epochs_run == 3
    for a, b in zip(whole.history, resumed.history):
        assert a["train_loss"] == b["train_loss"] and a["val_score"] == b["val_score"]
    sd_whole = torch.load(whole.last_checkpoint, weights_only=True)["model"]
    sd_resumed = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    for key in sd_whole:
        torch.testing.assert_close(sd_whole[key], sd_resumed[key], rtol=0, atol=0)

    again = train_fold(FoldData(cache, folds, metadata, CLASSES), 0, cfg, tmp_path / "resumed", log=messages.append)
    assert "nothing to do" in messages[-1] and again.best_score == resumed.best_score


def test_changed_config_does_not_resume_and_best_checkpoint_loads(tmp_path):
    cache = FakeCache()
    folds, metadata = _frames(cache)
    train_fold(FoldData(cache, folds, metadata, CLASSES), 1, _cfg(epochs=1), tmp_path, log=lambda m: None)
    messages: list[str] = []
    result = train_fold(FoldData(cache, folds, metadata, CLASSES), 1, _cfg(epochs=1, loss="soft_auc"), tmp_path, log=messages.append)
    assert any("starting afresh" in m for m in messages)
    model, meta = load_model(result.best_checkpoint)
    assert meta["classes"] == CLASSES and meta["fold"] == 1 and meta["mel"]["n_mels"] == MEL.n_mels
    probs = predict_windows(model, cache.mels(np.arange(5)), batch_size=2, device="cpu", clip_weight=0.75)
    assert probs.shape == (5, 3) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("loss", ["weighted_bce", "focal"])
def test_losses_train_and_learn_the_bands(tmp_path, loss):
    cache = FakeCache()
    folds, metadata = _frames(cache)
    cfg = _cfg(loss=loss, epochs=4, crop="random", augment=AugmentConfig())
    result = train_fold(FoldData(cache, folds, metadata, CLASSES), 0, cfg, tmp_path, log=lambda m: None)
    assert result.best_score > 0.6 and len(result.history) == 4


def test_mlflow_run_holds_params_metrics_inputs_model_and_tags(tmp_path):
    import mlflow

    cache = FakeCache()
    folds, metadata = _frames(cache)
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t", registered_model="sed-test",
                              dagster_url="http://dagster.example:3000")  # fmt: skip
    tags = {"dagster.run_id": "abc123", "dagster.asset_key": "trained_model", "dagster.partition": "0",
            "birdpipe.dataset": "/data/demo", "birdpipe.train_version": "cfg0123456"}  # fmt: skip
    result = train_fold(FoldData(cache, folds, metadata, CLASSES), 0, _cfg(epochs=2), tmp_path / "out", tracking=FoldTracking(tracking, tags), log=lambda m: None)

    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["train.lr"] == "0.003" and run.data.params["train.model.backbone"] == "test_efficientnet"
    assert run.data.params["mel.n_mels"] == "32" and run.data.params["fold"] == "0"
    assert [m.step for m in client.get_metric_history(result.run_id, "val_score")] == [0, 1]
    assert {"train_loss", "val_loss", "lr"} <= set(run.data.metrics)
    assert run.data.tags["dagster.run_id"] == "abc123" and run.data.tags["birdpipe.fold"] == "0"
    assert "mlflow.source.git.commit" in run.data.tags
    # linked back to Dagster, named after the dataset and stage, in the training view
    assert run.data.tags["dagster.run_url"] == "http://dagster.example:3000/runs/abc123"
    assert "[trained_model](http://dagster.example:3000/assets/trained_model)" in run.data.tags["mlflow.note.content"]
    assert run.info.run_name == "demo/train-fold-0"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert inputs["mel-cache-train"] == "fake-digest-0" and "folds" in inputs
    version = client.get_model_version_by_alias("sed-test", "candidate-fold0")
    assert str(version.version) == result.model_version and version.run_id == result.run_id
    described = client.get_registered_model("sed-test").description
    assert described == version.description and "fold model 0 of 2" in described and "/data/demo" in described
    assert "Config version cfg0123456" in described and "git commit" in described
    served = mlflow.pyfunc.load_model("models:/sed-test@candidate")
    assert served.metadata.get_input_schema() is not None
    probs = served.predict(cache.mels(np.arange(2)))
    assert np.asarray(probs).shape == (2, 3)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"checkpoint", "plots", "model_meta.json"} <= artifacts
    assert result.curve == tmp_path / "out" / "history.png" and result.curve.read_bytes()[:4] == b"\x89PNG"


def test_waveform_augmentations_decode_audio_and_train(tmp_path):
    import soundfile as sf

    cache = FakeCache(n_recordings=6, windows_per_recording=2)
    folds, metadata = _frames(cache)
    rng = np.random.default_rng(0)
    for i, filename in enumerate(folds["filename"]):
        path = tmp_path / "train_audio" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(10 * MEL.sample_rate) / MEL.sample_rate
        sf.write(path, (0.3 * np.sin(2 * np.pi * (500 + 700 * (i % 3)) * t)).astype(np.float32), MEL.sample_rate)
    (tmp_path / "unlabeled_soundscapes").mkdir()
    sf.write(tmp_path / "unlabeled_soundscapes" / "bg.ogg", rng.normal(0, 0.05, 20 * MEL.sample_rate).astype(np.float32), MEL.sample_rate)
    augment = AugmentConfig(
        waveform={"gaussian_noise": 0.5, "gain": 0.5, "time_shift": 0.5, "background": 0.5, "time_extend": 0.5},
        extend_fill="background",
    )
    cfg = _cfg(epochs=1, augment=augment)
    result = train_fold(FoldData(cache, folds, metadata, CLASSES, tmp_path / "train_audio"), 0, cfg, tmp_path / "out", log=lambda m: None)
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["train_loss"])
    with pytest.raises(ValueError, match="audio_root"):
        train_fold(FoldData(cache, folds, metadata, CLASSES), 0, cfg, tmp_path / "other", log=lambda m: None)


def test_trains_on_the_real_mel_cache_with_a_worker(tmp_path):
    from birdpipe.features.cache import build_mel_cache
    from birdpipe.features.reader import MelCacheReader
    from birdpipe.data.folds import assign_folds
    from birdpipe.config import CacheConfig, FoldConfig
    from birdpipe.data.metadata import load_taxonomy, load_train_metadata
    from birdpipe.data.layout import detect_layout
    from birdpipe.data.synth import SynthConfig, generate_dataset

    generate_dataset(tmp_path / "data", SynthConfig(n_species=3, recordings_per_species=4, recording_seconds=8.0, n_soundscapes=0, n_unlabeled=0))
    layout = detect_layout(tmp_path / "data")
    classes = load_taxonomy(layout.taxonomy)["primary_label"].to_list()
    recordings = load_train_metadata(layout.metadata, load_taxonomy(layout.taxonomy)).recordings
    mel = MelConfig(n_mels=32, hop_length=2560, noise_reduce=False)
    report = build_mel_cache(recordings, layout.audio_dir, tmp_path / "cache", mel, CacheConfig(workers=1), log=lambda m: None)
    cache = MelCacheReader(report.cache_dir)
    folds = assign_folds(recordings, FoldConfig(n_folds=2))
    result = train_fold(FoldData(cache, folds, recordings, classes), 0, _cfg(epochs=1, num_workers=1), tmp_path / "out", log=lambda m: None)
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["train_loss"])


def test_helpers(tmp_path):
    assert select_device("cpu").type == "cpu" and select_device("auto").type in ("cpu", "cuda", "mps")
    assert lr_factor(0, 10, 100, 0.01) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.01) == pytest.approx(0.01)
    png = plot_history([{"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_score": 0.5}], tmp_path / "h.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_distillation_mixes_the_teachers_scores_into_the_targets_and_keys_the_checkpoint(tmp_path):
    from birdpipe.training.config import DistillConfig
    from birdpipe.training.loop import setup_fold

    cache = FakeCache()
    folds, metadata = _frames(cache)
    # The teacher scores sp1 everywhere at 0.8 and knows nothing of sp2 (NaN); window 2 of each recording is unscored.
    keys = cache.windows.filter(pl.col("window_index") < 2).select("filename", "window_index")
    teacher = keys.with_columns(sp0=pl.lit(0.1), sp1=pl.lit(0.8), sp2=pl.lit(None, pl.Float64).fill_null(float("nan")))
    cfg = _cfg(epochs=1, distill=DistillConfig(teacher="birdnet", weight=0.25))
    run = setup_fold(FoldData(cache, folds, metadata, CLASSES, teacher=teacher), 0, cfg, tmp_path / "t", log=lambda m: None)
    plain = setup_fold(FoldData(cache, folds, metadata, CLASSES), 0, _cfg(epochs=1), tmp_path / "p", log=lambda m: None)

    rows = run.train_windows.filter(pl.col("primary_label") == "sp0")
    taught = rows.filter(pl.col("window_index") < 2)["row"].to_numpy()
    untaught = rows.filter(pl.col("window_index") == 2)["row"].to_numpy()
    # the primary stays 1; the others 0.75 * label + 0.25 * teacher; sp2 (unscored) keeps its label
    np.testing.assert_allclose(run.targets.y[taught], [[1.0, 0.2, 0.0]] * len(taught))
    np.testing.assert_allclose(run.targets.y[untaught], plain.targets.y[untaught])  # no teacher window: the label
    np.testing.assert_array_equal(run.val_truth, plain.val_truth)  # validation scores against labels alone
    assert run.fingerprint != plain.fingerprint

    other = teacher.with_columns(sp1=pl.lit(0.3))
    changed = setup_fold(FoldData(cache, folds, metadata, CLASSES, teacher=other), 0, cfg, tmp_path / "t2", log=lambda m: None)
    assert changed.fingerprint != run.fingerprint, "a checkpoint taught by another teacher must not resume"
    with pytest.raises(ValueError, match="no teacher scores"):
        setup_fold(FoldData(cache, folds, metadata, CLASSES), 0, cfg, tmp_path / "x", log=lambda m: None)
