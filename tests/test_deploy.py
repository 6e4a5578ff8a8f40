"""Deployment profiles (`[deploy] profile`, $BIRDPIPE_PROFILE): what each one builds.

`local` must be today's set-up exactly; `cluster` routes fold training to the Celery `gpu`
queue; `k8s` loads with dagster-k8s's executor and asks for GPUs the way K8sRunLauncher
and k8s_job_executor read them (no Kubernetes cluster exists here: this is its check).
"""

from pathlib import Path

import pytest
import yaml

from assets.definitions import build_defs
from birdpipe.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.toml"


def _trained_model_tags(defs) -> dict:
    return dict(defs.resolve_assets_def("trained_model").op.tags)


def test_local_profile_is_the_single_machine_set_up(monkeypatch):
    monkeypatch.delenv("BIRDPIPE_PROFILE", raising=False)
    config = load_config(DEMO)
    defs = build_defs(config)
    assert config.deploy.profile == "local" and config.cache.partitions == 1
    assert {defs.resolve_job_def(j).executor_def.name for j in ("prepare_job", "train_job", "evaluate_job")} == {"multi_or_in_process_executor"}
    assert _trained_model_tags(defs) == {}
    monkeypatch.setenv("BIRDPIPE_PROFILE", "cluster")
    # the profile changes where work runs, never what it computes (folder names, code versions)
    assert [load_config(DEMO).stage_version(s) for s in ("mel_cache", "folds", "trained_model", "submission")] == [
        config.stage_version(s) for s in ("mel_cache", "folds", "trained_model", "submission")
    ]


def test_profile_comes_from_the_environment_and_is_validated(monkeypatch, tmp_path):
    monkeypatch.setenv("BIRDPIPE_PROFILE", "cluster")
    assert load_config().deploy.profile == "cluster"
    monkeypatch.setenv("BIRDPIPE_PROFILE", "kubernetes")
    with pytest.raises(ConfigError, match=r"\[deploy\] profile = 'kubernetes': Input should be 'local', 'cluster' or 'k8s'"):
        load_config(DEMO)


def test_cluster_profile_uses_celery_with_a_gpu_queue_and_sharded_caches(monkeypatch):
    monkeypatch.delenv("BIRDPIPE_PROFILE", raising=False)
    config = parse_config({"deploy": {"profile": "cluster", "shards": 6}})
    defs = build_defs(config)
    assert defs.resolve_job_def("train_job").executor_def.name == "celery"
    assert _trained_model_tags(defs) == {"dagster-celery/queue": "gpu"}
    assert defs.resolve_assets_def("trained_model").op.pool == "gpu"
    assert defs.resolve_job_def("cache_job").partitions_def.get_partition_keys() == [str(i) for i in range(6)]
    # an explicit [cache] partitions wins over the profile's default
    assert parse_config({"deploy": {"profile": "cluster"}, "cache": {"partitions": 1}}).cache.partitions == 1


def test_k8s_profile_loads_with_k8s_job_executor_and_requests_gpus(monkeypatch):
    from dagster_k8s.job import get_user_defined_k8s_config

    monkeypatch.setenv("BIRDPIPE_PROFILE", "k8s")
    config = load_config(DEMO).replace(deploy={"profile": "k8s", "nproc_per_fold": 4})
    defs = build_defs(config)
    for job in ("prepare_job", "train_job", "evaluate_job", "cache_job", "folds_job"):
        assert defs.resolve_job_def(job).executor_def.name == "k8s"
    k8s = get_user_defined_k8s_config(_trained_model_tags(defs))  # as the executor reads the step's tags
    resources = k8s.container_config["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "4" and resources["requests"]["nvidia.com/gpu"] == "4"
    assert k8s.pod_spec_config["tolerations"][0]["key"] == "nvidia.com/gpu"
    # only fold training asks for GPUs
    assert "dagster-k8s/config" not in dict(defs.resolve_assets_def("oof_predictions").op.tags)


def test_helm_values_name_the_code_location_and_the_k8s_profile():
    values = yaml.safe_load((ROOT / "configs" / "deploy" / "k8s" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "assets.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["BIRDPIPE_PROFILE"] == "k8s" and env["BIRDPIPE_WORK"].startswith("/shared")
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and values["dagsterDaemon"]["runMonitoring"]["enabled"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
