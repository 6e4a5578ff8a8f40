"""DDP inside one fold: `trained_model` with `[deploy] nproc_per_fold = 2` runs torchrun through
Dagster Pipes, on CPU (gloo), with the same checkpoints, resume and MLflow lineage."""

import os

import dagster as dg
import mlflow
import pytest
import torch

from birdpipe.config import load_config
from birdpipe.models.sed import read_checkpoint
from test_pipeline import _defs, _metadata, _run

CONFIG = load_config(os.path.join(os.path.dirname(__file__), "cluster.toml"))


@pytest.mark.slow
def test_a_fold_trains_with_two_ddp_processes_through_pipes(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each rank one thread: two ranks on two cores
    config = CONFIG.replace(deploy=CONFIG.deploy.replace(profile="local", nproc_per_fold=2), cache=CONFIG.cache.replace(partitions=1))
    single = CONFIG.replace(deploy=CONFIG.deploy.replace(profile="local"), cache=CONFIG.cache.replace(partitions=1))
    assert config.stage_version("trained_model") != single.stage_version("trained_model")  # another effective batch
    defs = _defs(tiny_dataset, tmp_path, config)
    with dg.DagsterInstance.ephemeral() as instance:
        _run(defs, instance, "prepare_job")
        result = _run(defs, instance, "train_job", "0")
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
        again = _run(defs, instance, "train_job", "0")
        again_logs = [e.message for e in instance.all_logs(again.run_id) if e.message]

    meta = _metadata(result, "trained_model")
    assert any("DDP over 2 processes" in m for m in logs)
    # rank 0's log lines came back through Pipes, once per epoch (the other rank is silent)
    epochs = [m for m in logs if "fold 0 epoch" in m]
    assert len(epochs) == config.train.epochs, epochs
    best = read_checkpoint(meta["checkpoint"], torch.device("cpu"))
    assert best["meta"]["fold"] == 0 and meta["epochs"] == config.train.epochs
    # resume: the second run finds last.pt of the same 2-process training and has nothing to do
    assert any("already trained" in m for m in again_logs), again_logs
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(meta["mlflow_run_id"])
    assert run.data.tags["dagster.partition"] == "0" and run.data.params["train.epochs"] == str(config.train.epochs)
    assert "train_loss" in run.data.metrics and run.data.tags.get("mlflow.parentRunId") == meta["mlflow_parent_run_id"]
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/best.pt"]
