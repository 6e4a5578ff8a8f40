"""Where the pipeline runs: the `[deploy]` section, chosen by one setting (docs/deployment.md).

`profile` picks the machinery, never the results: `local` is one process per run with a
SQLite instance (`make demo`); `cluster` is Postgres-backed Dagster with the Celery executor
on Redis and an MLflow server (`make cluster-up`); `k8s` runs each step as a Kubernetes job.
`$BIRDPIPE_PROFILE` overrides the file's value, so one config serves every deployment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

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
    #: Where asset values (the IO manager's pickles: frames, paths, scores) live when workers do
    #: not share the work folder's disk: an fsspec URL every worker reaches (s3://bucket/prefix,
    #: gs://..., or a shared mount's folder); credentials from the environment (AWS_*, ...).
    #: None: `dagster_io/` in the dataset's work folder. Caches and checkpoints stay in the work
    #: folder, which must be a shared mount across machines (docs/deployment.md says why).
    io_root: str | None = None

    @field_validator("io_root")
    @classmethod
    def _known_protocol(cls, value: str | None) -> str | None:
        if value is not None:
            import fsspec

            protocol = value.split("://", 1)[0] if "://" in value else "file"
            try:
                fsspec.get_filesystem_class(protocol)
            except (ImportError, ValueError) as exc:
                raise ValueError(f"no fsspec filesystem for {protocol}://: {exc}") from None
        return value

    @property
    def distributed(self) -> bool:
        """Whether work is spread over worker processes (and machines) rather than one run's process."""
        return self.profile != "local"
