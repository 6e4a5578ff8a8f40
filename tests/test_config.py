"""The config schema: types, choices, ranges and registered names are checked when it loads."""

import pytest

from birdpipe.config import ConfigError, MelConfig, PipelineConfig, TrainConfig, load_config
from birdpipe.schema import flatten, version


def _load(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)


def test_toml_overrides_nested_sections_and_keeps_defaults(tmp_path):
    cfg = _load(tmp_path, '[mel]\nhop_length = 320\n[train.model]\nbackbone = "test_efficientnet"\n'
                          '[submission]\nsmoothing = [0.2, 0.6, 0.2]\n[train.augment.batch]\nmixup = 0.5\n')  # fmt: skip
    assert cfg.mel.hop_length == 320 and cfg.mel.n_mels == MelConfig().n_mels
    assert cfg.train.model.backbone == "test_efficientnet" and cfg.train.epochs == TrainConfig().epochs
    assert cfg.submission.smoothing == (0.2, 0.6, 0.2)
    assert cfg.train.augment.p("mixup") == 0.5 and cfg.train.augment.p("cutmix") == 0.0


# Each bad value a new user tried, with what the error must name (file, section, key, value, what is allowed).
BAD = [
    ("[mel]\nnoise_reduce = \"false\"", r"\[mel\] noise_reduce = 'false': Input should be a valid boolean"),
    ("[mel]\nnoise_mode = \"non-stationary\"", r"\[mel\] noise_mode = 'non-stationary': Input should be 'stationary' or 'nonstationary'"),
    ("[mel]\nn_mels = \"128\"", r"\[mel\] n_mels = '128': Input should be a valid integer"),
    ("[train]\nloss = \"focall\"", r"\[train\] loss = 'focall': unknown loss 'focall'; known: bce, weighted_bce, focal, soft_auc"),
    ("[train]\nepochs = 2.5", r"\[train\] epochs = 2.5: Input should be a valid integer"),
    ("[train]\nlr = \"1e-3\"", r"\[train\] lr = '1e-3': Input should be a valid number"),
    ("[mel]\nsample_rate = -1", r"\[mel\] sample_rate = -1: Input should be greater than 0"),
    ("[train.model]\nbackbone = \"efficientnet_b9\"", r"\[train.model\] backbone = 'efficientnet_b9': unknown timm backbone 'efficientnet_b9'"),
    ("[train.model]\npretrained_weights = \"/nowhere/w.pth\"", r"\[train.model\] pretrained_weights = '/nowhere/w.pth': /nowhere/w.pth: file not found"),
    ("[train.augment.batch]\nmixup = 1.5", r"\[train.augment.batch\] mixup = 1.5: Input should be less than or equal to 1"),
    ("[train.augment.waveform]\npink = 0.5", r"\[train.augment.waveform\] pink = 0.5: unknown waveform augmentation 'pink'; known: .*pink_noise"),
    ("[train]\nmetric = \"auc\"", r"\[train\] metric = 'auc': unknown validation metric 'auc'; known: cmap, roc_auc"),
    ("[thresholds]\nobjective = \"f1\"", r"\[thresholds\] objective = 'f1': unknown threshold objective 'f1'"),
    ("[submission]\nformat = \"2026\"", r"\[submission\] format = '2026': unknown submission format '2026'; known: 2021, 2022, 2023, 2024, 2025"),
    ("[submission]\nformat = 2025", r"\[submission\] format = 2025: Input should be a valid string"),
    ("[submission]\nensemble = \"vote\"", r"\[submission\] ensemble = 'vote': unknown ensemble combination 'vote'; known: mean, median, max"),
    ("[submission]\nsmoothing = [0.5, 0.5]", r"\[submission\] smoothing = \[0.5, 0.5\]: a smoothing kernel needs odd length"),
    ("[folds]\nn_folds = 1", r"\[folds\] n_folds = 1: Input should be greater than or equal to 2"),
    ("[folds]\nalways_train_below = -1", r"\[folds\] always_train_below = -1: Input should be greater than or equal to 0"),
    ("[cache]\nfile_timeout_s = 0", r"\[cache\] file_timeout_s = 0: Input should be greater than 0"),
    ("[tracking]\nui_url = \"localhost:5000\"", r"\[tracking\] ui_url = 'localhost:5000': String should match pattern"),
    ("[mel]\nfmax = 20000.0", r"\[mel\]: need fmin < fmax <= sample_rate / 2"),
    ("[mel]\nhop = 320", r"\[mel\] hop: unknown key"),
    ("[trian]\nepochs = 3", r"\[top level\] trian: unknown key"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_values_fail_at_load_naming_file_section_key_value_and_choices(tmp_path, text, message):
    with pytest.raises(ConfigError, match=r"c\.toml: 1 invalid setting\(s\)\n  " + message):
        _load(tmp_path, text)


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ConfigError, match=r"2 invalid setting\(s\)\n  \[mel\] n_mels = '128'.*\n  \[train\] loss = 'focall'"):
        _load(tmp_path, '[mel]\nn_mels = "128"\n[train]\nloss = "focall"\n')


def test_lossless_json_coercions_only(tmp_path):
    cfg = _load(tmp_path, "[train]\nlr = 1\n[mel]\nfmin = 50\n")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.mel.fmin == 50.0


def test_bad_files_name_the_problem(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[mel\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")


def test_sections_are_validated_when_built_in_code_too():
    with pytest.raises(ValueError, match="n_mels"):
        MelConfig(n_mels=0)
    with pytest.raises(ValueError, match="frozen"):
        MelConfig().n_mels = 64  # type: ignore[misc]
    assert MelConfig().replace(n_mels=64).n_mels == 64
    with pytest.raises(ValueError, match="n_mels"):
        MelConfig().replace(n_mels="64")


def test_default_config_without_file(monkeypatch):
    monkeypatch.delenv("BIRDPIPE_CONFIG", raising=False)
    assert load_config() == PipelineConfig()


def test_version_is_stable_and_changes_with_any_parameter():
    assert version(MelConfig()) == version(MelConfig())
    assert version(MelConfig()) != version(MelConfig(fmax=14000.0))
    assert version(MelConfig()) != version(MelConfig(noise_reduce=False))
    assert version(TrainConfig()) != version(TrainConfig(loss="soft_auc"))


def test_stage_versions_follow_their_sections_and_upstream_stages():
    base = PipelineConfig()
    mel = base.replace(mel={"hop_length": 320})
    thr = base.replace(thresholds={"shrink_positives": 5})
    changed = lambda other: sorted(s for s in ("mel_cache", "folds", "trained_model", "oof_predictions", "thresholds", "submission")
                                   if other.stage_version(s) != base.stage_version(s))  # fmt: skip
    assert changed(mel) == ["mel_cache", "oof_predictions", "submission", "thresholds", "trained_model"]
    assert changed(thr) == ["submission", "thresholds"]


def test_flatten_gives_dotted_param_names():
    flat = flatten(PipelineConfig())
    assert flat["train.model.backbone"] == "efficientnet_b0"
    assert flat["mel.n_mels"] == 128


def test_committed_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.toml")):
        load_config(path)
