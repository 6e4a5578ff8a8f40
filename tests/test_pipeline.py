"""The whole asset graph, in process, on a tiny synthetic dataset (tests/e2e.toml config)."""

import shutil
from pathlib import Path

import dagster as dg
import mlflow
import polars as pl
import pytest

from assets.definitions import build_defs
from assets.resources import Dataset, Tracking, dataset_io_manager
from birdpipe.config import load_config

#: The end-to-end config: the tiny timm model on a tiny synthetic set, 3 folds.
CONFIG = load_config(Path(__file__).parent / "e2e.toml")
FOLDS = [str(k) for k in range(CONFIG.folds.n_folds)]


def _defs(data_root, tmp_path, config=CONFIG) -> dg.Definitions:
    return build_defs(
        config,
        {
            "dataset": Dataset(root=str(data_root), work_root=str(tmp_path / "work")),
            "tracking": Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
            "io_manager": dataset_io_manager,
        },
    )


def _run(defs, instance, job, partition_key=None) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition_key)
    assert result.success
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    assert not failed, f"asset checks failed: {failed}"
    return result


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.slow
def test_whole_graph_on_synthetic_data(tiny_dataset, tmp_path):
    defs = _defs(tiny_dataset, tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        _run(defs, instance, "prepare_job")
        for fold in FOLDS:
            _run(defs, instance, "train_job", fold)
        evaluation = _run(defs, instance, "evaluate_job")

    oof = _metadata(evaluation, "oof_predictions")
    assert oof["birdclef2025"] > 0.7, oof

    taxonomy = pl.read_csv(tiny_dataset / "taxonomy.csv")
    labels = pl.read_csv(tiny_dataset / "test_soundscape_labels.csv")
    submission = pl.read_csv(_metadata(evaluation, "submission")["submission_csv"])
    assert submission.columns == ["row_id", *taxonomy["primary_label"].to_list()]
    assert sorted(submission["row_id"].to_list()) == sorted(labels["row_id"].to_list())
    probs = submission.drop("row_id").to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`dagster.asset_key` = 'trained_model'")
    assert sorted(runs["tags.dagster.partition"]) == FOLDS
    assert runs["tags.mlflow.parentRunId"].nunique() == 1, "fold runs share one parent run"
    assert (runs["metrics.val_score"].notna()).all() and (runs["params.train.model.backbone"] == "test_efficientnet").all()
    # One meaning of the training version: the stage's version, on the parent and on every fold run.
    parent = mlflow.get_run(runs["tags.mlflow.parentRunId"].iloc[0])
    assert set(runs["tags.birdpipe.train_version"]) == {parent.data.tags["birdpipe.train_version"]}
    assert parent.data.tags["birdpipe.train_version"] == CONFIG.stage_version("trained_model")

    from assets.pretrained import birdnet_files

    if birdnet_files(CONFIG) is None:
        return  # the BirdNET members below need `make birdnet`
    blend = _metadata(evaluation, "ensemble")
    assert {"sed", "birdnet", "logistic", "mlp", "blend"} <= set(blend["members"].split())
    assert blend["registered_model"].startswith("models:/birdpipe-blend-")
    assert _metadata(evaluation, "submission")["models"] >= 1
    scores = _metadata(evaluation, "birdnet_scores")
    assert pl.read_parquet(scores["scores_parquet"]).columns[:2] == ["filename", "window_index"]
    # noisy-student rounds on the unlabeled soundscape, each an MLflow run; the best round's heads feed the blend
    pseudo = _metadata(evaluation, "pseudo_labels")
    assert pseudo["soundscape_windows"] > 0 and "file_auc_fold_mean" in pseudo["rounds"]
    rounds = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`dagster.asset_key` = 'pseudo_labels'")
    assert sorted(rounds["tags.birdpipe.round"]) == ["0", "1"]
    # the registered blend predicts on its own, through the CLI
    from birdpipe.cli import main

    tracking = tmp_path / "predict.toml"
    tracking.write_text(f'[tracking]\ntracking_uri = "sqlite:///{tmp_path / "mlflow.db"}"\n')
    name = blend["registered_model"].split("/")[1]
    out = tmp_path / "blend.csv"
    assert main(["predict", "--model", f"models:/{name}@candidate", "--audio", str(tiny_dataset / "test_soundscapes"),
                 "--out", str(out), "--config", str(tracking)]) == 0  # fmt: skip
    assert sorted(pl.read_csv(out)["row_id"].to_list()) == sorted(labels["row_id"].to_list())


def test_bad_rows_and_files_are_quarantined_and_flagged_not_fatal(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    meta = pl.read_csv(data / "train_metadata.csv")
    broken = meta["filename"][0]
    (data / "train_audio" / broken).write_bytes(b"not audio at all")
    unknown = meta.head(1).with_columns(pl.lit("zzzzzz").alias("primary_label"), pl.lit("zzzzzz/XC1.ogg").alias("filename"))
    pl.concat([meta, unknown]).write_csv(data / "train_metadata.csv")

    defs = _defs(data, tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("prepare_job").execute_in_process(instance=instance)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"labels_in_taxonomy": False, "audio_files_exist": False}
    unknown_labels = {e.check_name: e.metadata for e in result.get_asset_check_evaluations()}["labels_in_taxonomy"]
    assert unknown_labels["unknown_primary_labels"].value == {"zzzzzz": 1}
    assert _metadata(result, "train_metadata")["quarantined"] == 1
    assert broken in _metadata(result, "audio_manifest")["quarantine"]
    folds = result.output_for_node("folds")
    assert folds.height == meta.height - 1 and broken not in folds["filename"].to_list()
    assert _metadata(result, "mel_cache")["audio_seconds_per_second"] > 0
    with dg.DagsterInstance.ephemeral() as instance:
        rerun = defs.resolve_job_def("prepare_job").execute_in_process(instance=instance)
    cache = _metadata(rerun, "mel_cache")
    assert cache["reused"] == folds.height and cache["audio_seconds_per_second"] == 0  # reused audio is not throughput


def test_dataset_sensor_requests_a_run_only_when_the_data_changes(tiny_dataset, tmp_path):
    from assets.sensors import build_sensor

    dataset_changed = build_sensor(CONFIG)
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    resources = {"dataset": Dataset(root=str(data), work_root=str(tmp_path / "work"))}
    first = dataset_changed(dg.build_sensor_context(resources=resources))
    assert len(first.run_requests) == 1
    unchanged = dataset_changed(dg.build_sensor_context(cursor=first.cursor, resources=resources))
    assert isinstance(unchanged, dg.SkipReason)
    (data / "train_audio" / "new.ogg").write_bytes(next((data / "test_soundscapes").glob("*.ogg")).read_bytes())
    changed = dataset_changed(dg.build_sensor_context(cursor=first.cursor, resources=resources))
    assert len(changed.run_requests) == 1 and changed.cursor != first.cursor


@pytest.mark.slow
def test_a_dataset_without_soundscapes_runs_green_and_skips_the_submission(tiny_dataset, tmp_path, capsys):
    from assets.demo import report, skipped

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns("*soundscape*"))
    config = CONFIG.replace(folds=CONFIG.folds.replace(n_folds=2), train=CONFIG.train.replace(epochs=1))
    defs = _defs(data, tmp_path, config)
    with dg.DagsterInstance.ephemeral() as instance:
        _run(defs, instance, "prepare_job")
        for fold in ("0", "1"):
            _run(defs, instance, "train_job", fold)
        evaluation = _run(defs, instance, "evaluate_job")
        report(config, instance, evaluation)

    materialized = {e.asset_key.path[-1] for e in evaluation.get_asset_materialization_events()}
    birdnet = {"birdnet_scores", "embedding_heads", "soundscape_embeddings", "pseudo_labels", "ensemble"}  # when installed
    assert materialized - birdnet == {"oof_predictions", "thresholds"}
    assert not [e for e in evaluation.get_asset_check_evaluations() if e.asset_key == dg.AssetKey("submission")]
    reason = skipped(evaluation)
    assert reason and "no soundscape folder" in reason
    kind = "blend" if "ensemble" in materialized else "sed"  # the blend when BirdNET is installed
    assert f"birdpipe predict --model models:/birdpipe-{kind}-{data.name}@candidate --audio DIR" in reason
    assert reason in capsys.readouterr().out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = mlflow.MlflowClient().search_model_versions(f"name = 'birdpipe-sed-{data.name}'")
    assert len(versions) == 2  # one registered version per fold, as with soundscapes
