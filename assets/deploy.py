"""The executor and step tags of each deployment profile (`[deploy] profile`, docs/deployment.md).

`local` keeps Dagster's defaults. `cluster` sends every step to Celery workers through Redis
(`$BIRDPIPE_CELERY_BROKER`, set by configs/deploy/cluster.py): queue `default`, and fold training on
queue `gpu`, whose workers run on GPU machines. `k8s` runs each step as a Kubernetes job; the
fold's pod asks for `[deploy] nproc_per_fold` GPUs through the `dagster-k8s/config` tag.
The executor packages are imported only for their profile.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from birdpipe.deploy import DeployConfig

BROKER_ENV = "BIRDPIPE_CELERY_BROKER"
DEFAULT_QUEUE, GPU_QUEUE = "default", "gpu"
#: Requests of a fold-training pod besides its GPUs: the loader's workers and the cache pages it reads.
FOLD_POD_RESOURCES = {"cpu": "4", "memory": "16Gi"}


def executor(cfg: DeployConfig) -> dg.ExecutorDefinition | None:
    """The profile's executor; None keeps Dagster's default (one process per step, or in process)."""
    if cfg.profile == "cluster":
        from dagster_celery import celery_executor

        broker = {"env": BROKER_ENV}
        return celery_executor.configured(
            {"broker": broker, "backend": broker, "config_source": {"task_default_queue": DEFAULT_QUEUE}}, name="celery"
        )
    if cfg.profile == "k8s":
        from dagster_k8s import k8s_job_executor

        # The run launcher's image, namespace and env come from the Helm values (configs/deploy/k8s/values.yaml).
        return k8s_job_executor.configured({"max_concurrent": 64}, name="k8s")
    return None


def gpu_step_tags(cfg: DeployConfig) -> dict[str, Any]:
    """Tags of a GPU step (fold training): its Celery queue, or its pod's GPU requests."""
    if cfg.profile == "cluster":
        return {"dagster-celery/queue": GPU_QUEUE}
    if cfg.profile == "k8s":
        gpus = str(cfg.nproc_per_fold)
        return {
            "dagster-k8s/config": {
                "container_config": {
                    "resources": {
                        "requests": {**FOLD_POD_RESOURCES, "nvidia.com/gpu": gpus},
                        "limits": {"nvidia.com/gpu": gpus},
                    }
                },
                "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
            }
        }
    return {}
