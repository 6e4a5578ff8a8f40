"""The code location: built in process for any config; code versions follow it; the graph is wired as documented."""

import dagster as dg
import pytest

from assets.definitions import build_defs
from assets.resources import Dataset, Tracking, dataset_io_manager
from birdpipe.config import PipelineConfig, parse_config


def _versions(defs: dg.Definitions) -> dict[str, str]:
    graph = defs.get_repository_def().asset_graph
    return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}


def test_a_changed_parameter_unsyncs_that_asset_and_the_stages_after_it():
    base = _versions(build_defs(parse_config({"mel": {"hop_length": 512}})))
    thresholds = _versions(build_defs(parse_config({"mel": {"hop_length": 512}, "thresholds": {"shrink_positives": 5}})))
    mel = _versions(build_defs(parse_config({"mel": {"hop_length": 320}})))
    assert sorted(k for k in base if base[k] != thresholds[k]) == ["soundscape_validation", "submission", "thresholds"]
    blend = ["ensemble"] if "ensemble" in base else []  # with BirdNET installed
    after_cache = ["oof_predictions", "soundscape_validation", "submission", "thresholds", "trained_model", *blend]
    assert sorted(k for k in base if base[k] != mel[k]) == sorted(["mel_cache", *after_cache])
    dataset = _versions(build_defs(parse_config({"mel": {"hop_length": 512}, "dataset": {"metadata": "train.csv"}})))
    # with BirdNET, the unlabeled soundscapes pseudo-labelling reads follow the layout too
    pseudo = ["ensemble", "pseudo_labels", "soundscape_embeddings"] if "pseudo_labels" in base else []
    assert sorted(k for k in base if base[k] != dataset[k]) == sorted(
        ["audio_manifest", "soundscape_validation", "submission", "taxonomy", "train_metadata", *pseudo]
    )


def test_graph_lineage_matches_the_documented_chain():
    graph = build_defs(PipelineConfig()).get_repository_def().asset_graph
    parents = {k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys) for k in graph.get_all_asset_keys()}
    assert parents["audio_manifest"] == ["train_metadata"]
    assert "audio_manifest" in parents["mel_cache"]
    assert "mel_cache" in parents["folds"]
    assert {"folds", "mel_cache"} <= set(parents["trained_model"])
    assert "trained_model" in parents["oof_predictions"]
    # thresholds calibrate on the blend's out-of-fold windows when BirdNET is installed
    assert parents["thresholds"] == (["ensemble"] if "ensemble" in parents else ["oof_predictions"])
    assert {"thresholds", "ensemble" if "ensemble" in parents else "trained_model"} <= set(parents["submission"])
    assert parents["soundscape_validation"] == parents["submission"]


def test_fold_training_is_partitioned_by_the_configs_folds_and_in_the_gpu_pool():
    defs = build_defs(parse_config({"folds": {"n_folds": 3}}))
    trained_model = defs.get_assets_def("trained_model")
    assert trained_model.op.pool == "gpu"
    assert trained_model.partitions_def.get_partition_keys() == ["0", "1", "2"]
    assert defs.resolve_job_def("train_job").partitions_def.get_partition_keys() == ["0", "1", "2"]


def test_sharded_cache_gets_its_own_partitioned_job():
    repo = build_defs(parse_config({"cache": {"partitions": 3}})).get_repository_def()
    jobs = {j.name: sorted(k.to_user_string() for k in j.asset_layer.executable_asset_keys)
            for j in repo.get_all_jobs() if not j.name.startswith("__")}  # fmt: skip
    assert repo.assets_defs_by_key[dg.AssetKey("mel_cache")].partitions_def.get_partition_keys() == ["0", "1", "2"]
    caches = ["birdnet_embeddings", "mel_cache"] if "birdnet_embeddings" in jobs["cache_job"] else ["mel_cache"]
    assert jobs["cache_job"] == caches and jobs["folds_job"] == ["folds"]
    assert "mel_cache" not in jobs["prepare_job"]


def test_cache_shards_materialize_separately_and_folds_see_all(tiny_dataset, tmp_path):
    import polars as pl

    config = parse_config({"cache": {"partitions": 2}, "mel": {"n_mels": 64}})
    defs = build_defs(config, {
        "dataset": Dataset(root=str(tiny_dataset), work_root=str(tmp_path / "work")), "io_manager": dataset_io_manager,
        "tracking": Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    })  # fmt: skip
    with dg.DagsterInstance.ephemeral() as instance:
        defs.resolve_job_def("prepare_job").execute_in_process(instance=instance)
        for shard in ("0", "1"):
            defs.resolve_job_def("cache_job").execute_in_process(instance=instance, partition_key=shard)
        result = defs.resolve_job_def("folds_job").execute_in_process(instance=instance)
    assert result.output_for_node("folds").height == pl.read_csv(tiny_dataset / "train_metadata.csv").height


def test_a_bad_config_fails_the_code_location_load_naming_the_key(tmp_path, monkeypatch):
    import importlib

    import assets.definitions

    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nloss = "focall"\n')
    monkeypatch.setenv("BIRDPIPE_CONFIG", str(bad))
    with pytest.raises(ValueError, match=r"(?s)bad.toml: 1 invalid setting.*\[train\] loss = 'focall'"):
        importlib.reload(assets.definitions)
    monkeypatch.undo()
    importlib.reload(assets.definitions)


def test_birdnet_stages_follow_the_config_and_the_installation():
    from assets.pretrained import birdnet_files

    keys = lambda cfg: {k.to_user_string() for k in build_defs(cfg).get_repository_def().asset_graph.get_all_asset_keys()}  # noqa: E731
    off = keys(parse_config({"birdnet": {"enabled": False}}))
    assert not off & {"birdnet_embeddings", "embedding_heads", "ensemble"}
    installed = birdnet_files(PipelineConfig()) is not None
    auto = keys(PipelineConfig())
    assert ({"birdnet_embeddings", "embedding_heads", "ensemble"} <= auto) == installed
    with pytest.raises(ValueError, match=r"\[birdnet\] model = '/nowhere/b.tflite': /nowhere/b.tflite: file not found"):
        parse_config({"birdnet": {"model": "/nowhere/b.tflite"}})


def test_distillation_puts_birdnet_scores_before_training_or_fails_without_birdnet():
    from assets.pretrained import birdnet_files
    from birdpipe.config import ConfigError

    distil = parse_config({"train": {"distill": {"teacher": "birdnet"}}})
    if birdnet_files(PipelineConfig()) is None:
        with pytest.raises(ConfigError, match=r"\[train.distill\] teacher = 'birdnet' needs BirdNET, which is not installed"):
            build_defs(distil)
        return
    defs = build_defs(distil)
    graph = defs.get_repository_def().asset_graph
    assert dg.AssetKey("birdnet_scores") in graph.get(dg.AssetKey("trained_model")).parent_keys
    assert "birdnet_scores" in [k.to_user_string() for k in defs.resolve_job_def("prepare_job").asset_layer.selected_asset_keys]
    assert _versions(defs)["trained_model"] != _versions(build_defs(PipelineConfig()))["trained_model"]
    with pytest.raises(ConfigError, match=r"switched off"):
        build_defs(distil.replace(birdnet=distil.birdnet.replace(enabled=False)))
