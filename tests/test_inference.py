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
    preds = predict_soundscapes(ensemble, files, ensemble.mel, SubmissionConfig(), progress=False).windows
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


def test_predict_fills_every_window_of_a_cut_file_and_fails_on_skipped_files(tmp_path, capsys):
    """A cut file gets every window its header promises (the missing audio predicted as
    silence, flagged); an unreadable file is skipped, named in the report, and fails the run
    unless --allow-skips."""
    classes = ["aaa", "bbb"]
    model = _fold_dir(tmp_path / "model", classes, n_folds=1)
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    sf.write(audio / "whole.wav", rng.normal(0, 0.1, 12 * MEL.sample_rate).astype(np.float32), MEL.sample_rate)
    sf.write(tmp_path / "long.wav", rng.normal(0, 0.1, 23 * MEL.sample_rate).astype(np.float32), MEL.sample_rate)
    (audio / "cut.wav").write_bytes((tmp_path / "long.wav").read_bytes()[: 8 * MEL.sample_rate * 2])  # 8 of 23 s
    (audio / "text.wav").write_text("not a recording\n" * 40)
    out = tmp_path / "sub.csv"
    args = ["predict", "--model", str(model), "--audio", str(audio), "--out", str(out), "--format", "2025", "--no-onnx"]

    assert main(args) == 1
    captured = capsys.readouterr()
    sub = pl.read_csv(out)
    assert np.isfinite(sub.select(classes).to_numpy()).all()  # silence is predicted, not NaN
    rows = sub["row_id"].to_list()
    assert rows == [f"cut_{e}" for e in (5, 10, 15, 20, 25)] + ["whole_5", "whole_10", "whole_15"]
    assert "3 files (1 damaged, 1 skipped), 8 windows (4 predicted on silence where audio was missing)" in captured.out
    assert f"  skipped {audio / 'text.wav'}: not decodable audio" in captured.out
    assert f"  damaged {audio / 'cut.wav'}: truncated: " in captured.out and "(4 window(s) predicted on silence)" in captured.out
    assert "1 of 3 file(s) skipped" in captured.err and "--allow-skips" in captured.err
    report = pl.read_csv(tmp_path / "sub.files.csv")
    assert dict(zip(report["path"], report["status"])) == {
        str(audio / "cut.wav"): "damaged", str(audio / "text.wav"): "skipped", str(audio / "whole.wav"): "ok"
    }
    assert report["filled_windows"].to_list() == [4, 0, 0]
    assert main([*args, "--allow-skips"]) == 0

    (audio / "cut.wav").unlink()
    (audio / "whole.wav").unlink()  # every file fails: no silent header-only success
    assert main([*args, "--allow-skips"]) == 0 and main(args) == 1
    assert "1 of 1 file(s) skipped" in capsys.readouterr().err


def test_a_file_whose_audio_does_not_decode_gets_its_header_length_on_silence(tmp_path, capsys):
    """A WAV cut to its header (12 s stated, no samples) is damaged, not skipped: a
    submission needs its windows, so they are predicted on silence and flagged."""
    model = _fold_dir(tmp_path / "model", ["aaa", "bbb"], n_folds=1)
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(tmp_path / "full.wav", np.zeros(12 * MEL.sample_rate, np.float32), MEL.sample_rate, subtype="PCM_16")
    (audio / "header.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:44])
    out = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(model), "--audio", str(audio), "--out", str(out), "--format", "2025", "--no-onnx"]) == 0
    assert pl.read_csv(out)["row_id"].to_list() == ["header_5", "header_10", "header_15"]
    printed = capsys.readouterr().out
    assert "1 files (1 damaged, 0 skipped), 3 windows (3 predicted on silence where audio was missing)" in printed
    assert "12.00 s stated by its header predicted on silence" in printed


def test_a_bad_model_path_fails_before_the_model_libraries_load(tmp_path):
    """It took 48 s of imports to say "no such model"; now the inputs are checked first."""
    import subprocess
    import sys

    sf.write(tmp_path / "a.wav", np.zeros(MEL.sample_rate, np.float32), MEL.sample_rate)
    script = (
        "import sys; from birdpipe.cli import main; "
        f"code = main(['predict', '--model', '{tmp_path / 'nomodel'}', '--audio', '{tmp_path / 'a.wav'}', '--out', 'o.csv']); "
        "heavy = sorted({'torch', 'onnxruntime', 'timm', 'mlflow'} & set(sys.modules)); print(code, heavy)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[0] == "2 []", done.stdout + done.stderr
    assert "nomodel: no such model file or folder" in done.stderr


def test_an_unreachable_tracking_server_fails_at_once_naming_it(tmp_path, capsys, monkeypatch):
    """MLflow retried an unreachable server for about 4 minutes without a word."""
    import os
    import socket
    import time

    from birdpipe.tracking import TrackingConfig, check_store

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"MLflow tracking server {uri} is unreachable: .*refused"):
        check_store(TrackingConfig(tracking_uri=uri, http_retries=1))
    assert time.monotonic() - start < 5 and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    config = tmp_path / "c.toml"
    config.write_text(f'[tracking]\ntracking_uri = "{uri}"\nconnect_timeout_s = 2.0\n')
    sf.write(tmp_path / "a.wav", np.zeros(MEL.sample_rate, np.float32), MEL.sample_rate)
    code = main(["predict", "--model", "models:/sed@candidate", "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o.csv"),
                 "--config", str(config)])  # fmt: skip
    assert code == 2 and f"MLflow tracking server {uri} is unreachable" in capsys.readouterr().err
