"""Soundscape inference: ONNX equals torch, partial windows, smoothing, ensembles, `birdpipe predict`."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import torch

from birdpipe.cli import main
from birdpipe.config import MelConfig, ModelConfig, SubmissionConfig
from birdpipe.models.export import OnnxModel, export_onnx
from birdpipe.evaluation.thresholds import Thresholds
from birdpipe.inference.ensemble import Ensemble, load_ensemble, model_files
from birdpipe.inference.formats import check_submission, expected_rows, solution_from_labels
from birdpipe.inference.predict import predict_soundscapes, smooth
from birdpipe.models.predict import TorchPredictor
from birdpipe.models.sed import build_model, model_meta, save_checkpoint

MEL = MelConfig(n_mels=64, noise_reduce=False)


def _fold_dir(root, classes, n_folds=2, backbone="test_efficientnet"):
    torch.manual_seed(0)
    for k in range(n_folds):
        model = build_model(ModelConfig(backbone=backbone, drop_rate=0.0, drop_path_rate=0.0), len(classes))
        save_checkpoint(root / f"fold-{k}" / "best.pt", model, model_meta(model, classes, MEL, fold=k))
    return root


def test_onnx_equals_torch_default_backbone(tmp_path):
    """The default efficientnet_b0 SED model: ONNX Runtime within 1e-4 of torch, any batch size."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(drop_rate=0.0, drop_path_rate=0.0), 7).eval()
    meta = model_meta(model, [f"s{i}" for i in range(7)], MEL)
    onnx = OnnxModel(export_onnx(model, tmp_path / "m.onnx", MEL.n_mels, MEL.n_frames, meta))
    assert onnx.meta["classes"] == meta["classes"]
    mels = np.random.default_rng(0).random((5, MEL.n_mels, MEL.n_frames), dtype=np.float32)
    reference = TorchPredictor(model, model.cfg.clip_weight).predict(mels, batch_size=5)
    for batch_size in (1, 2, 5):  # dynamic batch, including a ragged last batch
        np.testing.assert_allclose(onnx.predict(mels, batch_size), reference, atol=1e-4, rtol=0)


def test_partial_last_window_gets_a_row(tmp_path):
    classes = ["aaa", "bbb", "ccc"]
    checkpoints = sorted(_fold_dir(tmp_path / "m", classes).rglob("best.pt"))  # a list of fold files
    ensemble = load_ensemble(checkpoints, use_onnx=False)
    assert len(ensemble.members) == 2
    rng = np.random.default_rng(0)
    for name, seconds in {"long": 23.4, "exact": 10.0, "short": 3.0}.items():
        sf.write(tmp_path / f"{name}.wav", rng.normal(0, 0.1, int(seconds * MEL.sample_rate)).astype(np.float32), MEL.sample_rate)
    files = sorted(tmp_path.glob("*.wav"))
    preds = predict_soundscapes(ensemble, files, ensemble.mel, SubmissionConfig(), progress=False)
    ends = {sid: part["end_seconds"].to_list() for (sid,), part in preds.group_by("soundscape_id")}
    assert ends == {"long": [5, 10, 15, 20, 25], "exact": [5, 10], "short": [5]}
    assert preds.columns == ["row_id", "soundscape_id", "end_seconds", *classes]
    assert preds.filter(pl.col("soundscape_id") == "long")["row_id"][-1] == "long_25"
    assert preds.select(classes).to_numpy().min() >= 0 and preds.select(classes).to_numpy().max() <= 1


def test_smoothing_renormalises_at_the_ends():
    probs = np.array([[0.0], [1.0], [0.0], [0.5]])
    out = smooth(probs, [1.0, 2.0, 1.0])
    np.testing.assert_allclose(out[:, 0], [1 / 3, 0.5, 1.5 / 4, 1 / 3], rtol=1e-6)
    assert smooth(probs, ()) is probs
    with pytest.raises(ValueError, match="odd length"):
        smooth(probs, [0.5, 0.5])


def test_ensemble_combinations():
    class Fixed:
        def __init__(self, value):
            self.value = value

        def predict(self, mels, batch_size):
            return np.full((len(mels), 2), self.value)

    mels = np.zeros((3, 4, 5), np.float32)
    for combine, expected in (("mean", 0.4), ("median", 0.2), ("max", 0.9)):
        ens = Ensemble([Fixed(0.1), Fixed(0.2), Fixed(0.9)], ["a", "b"], MEL, combine)
        np.testing.assert_allclose(ens.predict(mels, 2), expected)
    with pytest.raises(ValueError, match="unknown ensemble combination 'vote'"):
        Ensemble([Fixed(0.1)], ["a", "b"], MEL, "vote")


@pytest.mark.parametrize("fmt", ["2021", "2022", "2025"])
def test_predict_cli_on_synthetic_soundscapes_scores(tmp_path, tiny_dataset, fmt, capsys):
    """`birdpipe predict` on 23 s synthetic soundscapes (ONNX), scored with `birdpipe score`."""
    classes = pl.read_csv(tiny_dataset / "taxonomy.csv")["primary_label"].to_list()
    model_dir = _fold_dir(tmp_path / "model", classes)
    out = tmp_path / f"sub-{fmt}.csv"
    args = ["predict", "--model", str(model_dir), "--audio", str(tiny_dataset / "test_soundscapes"), "--out", str(out)]
    assert main([*args, "--format", fmt, "--batch-size", "3"]) == 0
    assert (model_dir / "fold-0" / "best.onnx").is_file()  # exported on first use

    labels = pl.read_csv(tiny_dataset / "test_soundscape_labels.csv")
    solution = solution_from_labels(labels, classes, fmt)
    solution.write_csv(tmp_path / "sol.csv")
    assert check_submission(out, fmt, classes, expected_rows(labels.height, fmt, len(classes))) == []
    capsys.readouterr()
    metric = "birdclef2021" if fmt == "2021" else "birdclef2022" if fmt == "2022" else "birdclef2025"
    assert main(["score", "--solution", str(tmp_path / "sol.csv"), "--submission", str(out), "--metric", metric]) == 0
    assert 0.0 <= float(capsys.readouterr().out.strip().splitlines()[-1]) <= 1.0
    if fmt == "2021":  # calibrated thresholds decide: at 0 every species is present everywhere
        Thresholds.constant(0.0).to_json(tmp_path / "t.json")
        assert main([*args, "--format", fmt, "--thresholds", str(tmp_path / "t.json")]) == 0
        assert set(pl.read_csv(out)["birds"]) == {" ".join(classes)}


def test_predict_cli_torch_matches_onnx(tmp_path, tiny_dataset):
    classes = pl.read_csv(tiny_dataset / "taxonomy.csv")["primary_label"].to_list()
    model_dir = _fold_dir(tmp_path / "model", classes)
    audio = tiny_dataset / "test_soundscapes"
    base = ["predict", "--model", str(model_dir), "--audio", str(audio), "--format", "2025"]
    assert main([*base, "--out", str(tmp_path / "onnx.csv")]) == 0
    assert main([*base, "--out", str(tmp_path / "torch.csv"), "--no-onnx"]) == 0
    onnx, eager = pl.read_csv(tmp_path / "onnx.csv"), pl.read_csv(tmp_path / "torch.csv")
    assert onnx["row_id"].to_list() == eager["row_id"].to_list()
    np.testing.assert_allclose(onnx.select(classes).to_numpy(), eager.select(classes).to_numpy(), atol=1e-4)
    # the .onnx files alone (classes and mel config in their metadata) are a complete model
    for k, path in enumerate(sorted(model_dir.rglob("best.onnx"))):
        (tmp_path / "deploy" / f"fold-{k}.onnx").parent.mkdir(exist_ok=True)
        (tmp_path / "deploy" / f"fold-{k}.onnx").write_bytes(path.read_bytes())
    deploy = ["predict", "--model", str(tmp_path / "deploy"), "--audio", str(audio), "--format", "2025"]
    assert main([*deploy, "--out", str(tmp_path / "deploy.csv")]) == 0
    assert pl.read_csv(tmp_path / "deploy.csv").equals(onnx)


def test_registered_model_alias_resolves_to_fold_checkpoints(tmp_path, monkeypatch):
    """`models:/name@alias`: every `<alias>-fold<k>` version's run artifact `checkpoint/best.pt`."""
    import mlflow

    from birdpipe.config import TrackingConfig

    monkeypatch.setenv("BIRDPIPE_WORK", str(tmp_path / "work"))
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", registered_model="sed")
    mlflow.set_tracking_uri(tracking.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("sed")
    folds = _fold_dir(tmp_path / "model", ["aaa", "bbb"])
    for k in range(2):
        run = client.create_run(exp)
        client.log_artifact(run.info.run_id, str(folds / f"fold-{k}" / "best.pt"), "checkpoint")
        version = client.create_model_version("sed", f"runs:/{run.info.run_id}/checkpoint", run.info.run_id)
        client.set_registered_model_alias("sed", f"candidate-fold{k}", version.version)
    client.set_registered_model_alias("sed", "candidate", "2")
    paths = model_files("models:/sed@candidate", tracking)
    assert [p.parent.parent.name.rsplit("-", 1)[0] for p in paths] == ["sed-v1", "sed-v2"]
    assert load_ensemble("models:/sed@candidate", use_onnx=False, tracking=tracking).classes == ["aaa", "bbb"]
    assert len(model_files("models:/sed/1", tracking)) == 1
    with pytest.raises(ValueError, match="expected models:/<name>@<alias>"):
        model_files("models:/", tracking)
    with pytest.raises(ValueError, match="models:/other@candidate: .*other"):
        model_files("models:/other@candidate", tracking)


def test_predict_cli_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    sf.write(tmp_path / "a.wav", np.zeros(MEL.sample_rate, np.float32), MEL.sample_rate)
    base = ["predict", "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o.csv")]
    cases = [
        (["--audio", str(tmp_path / "a.wav"), "--format", "2020"], "unknown submission format '2020'"),
        (["--audio", str(tmp_path / "missing")], "missing: no such audio file or folder"),
        (["--audio", str(tmp_path / "empty")], "empty: no audio files below it"),
        (["--audio", str(tmp_path / "a.wav")], "nomodel: no such model file or folder"),
    ]
    for args, message in cases:
        assert main([*base, *args]) == 2
        assert message in capsys.readouterr().err
