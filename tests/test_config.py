import pytest

from birdpipe.config import MelConfig, PipelineConfig, TrainConfig, flatten, load_config, version


def test_toml_overrides_nested_sections_and_keeps_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[mel]\nhop_length = 320\n[train.model]\nbackbone = "test_efficientnet"\n[submission]\nsmoothing = [0.2, 0.6, 0.2]\n')
    cfg = load_config(path)
    assert cfg.mel.hop_length == 320 and cfg.mel.n_mels == MelConfig().n_mels
    assert cfg.train.model.backbone == "test_efficientnet" and cfg.train.epochs == TrainConfig().epochs
    assert cfg.submission.smoothing == (0.2, 0.6, 0.2)


def test_unknown_keys_and_bad_files_name_the_problem(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[mel]\nhop = 320\n")
    with pytest.raises(ValueError, match=r"c.toml.mel: unknown key\(s\) \['hop'\]"):
        load_config(path)
    path.write_text("[mel\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")


def test_default_config_without_file(monkeypatch):
    monkeypatch.delenv("BIRDPIPE_CONFIG", raising=False)
    assert load_config() == PipelineConfig()


def test_version_is_stable_and_changes_with_any_parameter():
    assert version(MelConfig()) == version(MelConfig())
    assert version(MelConfig()) != version(MelConfig(fmax=14000.0))
    assert version(MelConfig()) != version(MelConfig(noise_reduce=False))
    assert version(TrainConfig()) != version(TrainConfig(loss="soft_auc"))


def test_flatten_gives_dotted_param_names():
    flat = flatten(PipelineConfig())
    assert flat["train.model.backbone"] == "efficientnet_b0"
    assert flat["mel.n_mels"] == 128
