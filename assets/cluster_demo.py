"""`make cluster-demo`: the demo graph through the running cluster (`make cluster-up`).

The same stages as `make demo` (`demo.stages`), but each run is submitted to the Dagster
webserver, queued by the daemon and executed step by step by the Celery workers; the runs of
one stage (cache shards, folds) are submitted together, so they fan out over the workers and
the `gpu` pool serialises the fold trainings. Reads the cluster's environment
(configs/deploy/cluster.py sets it): $DAGSTER_HOME (the Postgres instance) and $BIRDPIPE_DAGSTER_PORT.
"""

from __future__ import annotations

import os
import sys
import time

import dagster as dg
from dagster_graphql import DagsterGraphQLClient

from birdpipe.config import PipelineConfig, load_config

from .demo import QUIET, describe_dataset, run_and_report, stages

#: A run that has not finished after this long is reported with its id instead of waited on forever.
RUN_TIMEOUT_S = float(os.environ.get("BIRDPIPE_RUN_TIMEOUT_S", 3 * 3600))
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def submit(client: DagsterGraphQLClient, job: str, partition: str | None) -> str:
    tags = {"dagster/partition": partition} if partition is not None else {}
    return client.submit_job_execution(job, run_config=QUIET, tags=tags)


def wait(instance: dg.DagsterInstance, run_ids: list[str], timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Until every run finished; RuntimeError naming the runs that failed or did not finish."""
    deadline = time.monotonic() + timeout_s
    pending = set(run_ids)
    while pending and time.monotonic() < deadline:
        time.sleep(2)
        for run_id in list(pending):
            run = instance.get_run_by_id(run_id)
            if run.status in FINISHED:
                pending.discard(run_id)
                label = run.job_name + (f"[{run.tags['dagster/partition']}]" if "dagster/partition" in run.tags else "")
                print(f"   {label} {run.status.value.lower()} ({run_id})", flush=True)
    failed = [r for r in run_ids if instance.get_run_by_id(r).status != dg.DagsterRunStatus.SUCCESS]
    if failed:
        state = "did not finish within {timeout_s:.0f} s" if pending else "failed"
        raise RuntimeError(f"run(s) {', '.join(failed)} {state}; their logs are in the Dagster UI")


def materialize_all(config: PipelineConfig, instance: dg.DagsterInstance, client: DagsterGraphQLClient) -> str:
    """Every stage's runs submitted together, one stage after another; returns the evaluation run's id."""
    describe_dataset(config)
    for stage in stages(config):
        started = time.perf_counter()
        print(f"-> {', '.join(job + (f'[{p}]' if p is not None else '') for job, p in stage)} ...", flush=True)
        run_ids = [submit(client, job, partition) for job, partition in stage]
        wait(instance, run_ids)
        print(f"   stage done in {time.perf_counter() - started:.0f} s", flush=True)
    return run_ids[-1]


def main() -> int:
    config = load_config()
    if config.deploy.profile != "cluster":
        raise SystemExit("make cluster-demo runs in the cluster's environment (BIRDPIPE_PROFILE=cluster); start it with make cluster-up")
    client = DagsterGraphQLClient("127.0.0.1", port_number=int(os.environ["BIRDPIPE_DAGSTER_PORT"]))
    return run_and_report(config, lambda cfg, instance: materialize_all(cfg, instance, client))


if __name__ == "__main__":
    sys.exit(main())
