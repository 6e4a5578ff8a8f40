"""Where the pipeline runs: the `[deploy]` section, chosen by one setting (docs/deployment.md).

`profile` picks the machinery, never the results: `local` is one process per run with a
SQLite instance (`make demo`); `cluster` is Postgres-backed Dagster with the Celery executor
on Redis and an MLflow server (`make cluster-up`); `k8s` runs each step as a Kubernetes job.
`$BIRDPIPE_PROFILE` overrides the file's value, so one config serves every deployment.
"""

from __future__ import annotations

from typing import Literal

from birdpipe.schema import PositiveInt, Section

PROFILE_ENV = "BIRDPIPE_PROFILE"
Profile = Literal["local", "cluster", "k8s"]


class DeployConfig(Section):
    #: local: in-process runs, SQLite instance, MLflow file store; cluster: Postgres instance,
    #: run queue, Celery workers (queues `default` and `gpu`), MLflow server; k8s: dagster-k8s.
    profile: Profile = "local"
    #: Shards of the mel cache and BirdNET embedding stages in the cluster and k8s profiles,
    #: unless `[cache] partitions` is set: each shard is one step a worker takes, so at least
    #: the number of CPU workers (docs/deployment.md says how to size it).
    shards: PositiveInt = 8
    #: Processes (GPUs) training one fold: above 1, `trained_model` runs
    #: `torchrun --nproc_per_node=N` (DDP) through Dagster Pipes; the effective batch is
    #: N x `[train] batch_size`, so N is part of the model's version. In k8s, the GPUs a fold's pod requests.
    nproc_per_fold: PositiveInt = 1

    @property
    def distributed(self) -> bool:
        """Whether work is spread over worker processes (and machines) rather than one run's process."""
        return self.profile != "local"
