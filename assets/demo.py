"""`make demo`: materialize every asset through Dagster, then print scores and where outputs are.

Runs the same jobs the UI offers, against the instance in $DAGSTER_HOME, so afterwards
`make ui` shows every asset materialized, with its metadata and checks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from birdpipe import tracking as mlf
from birdpipe.config import PipelineConfig, load_config
from birdpipe.data.layout import detect_layout
from birdpipe.paths import PROJECT_ROOT, default_data_root
from birdpipe.tracking import tracking_uri

from .definitions import build_defs
from .features import cache_partitions
from .training import fold_partitions


#: Dagster's console logs at INFO: per-epoch progress and warnings, not every step event.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


#: Tags naming the process of an in-process run, so that a later run can tell it died.
PID_TAG, HOST_TAG = "birdpipe/pid", "birdpipe/host"
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def run_job(
    defs: dg.Definitions, name: str, instance: dg.DagsterInstance, partition_key: str | None = None
) -> dg.ExecuteInProcessResult:
    label = f"{name}[{partition_key}]" if partition_key else name
    release_dead_runs(instance)
    report_full_pools(instance)
    start = time.perf_counter()
    print(f"-> {label} ...", flush=True)
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    result = defs.resolve_job_def(name).execute_in_process(instance=instance, partition_key=partition_key, run_config=QUIET, tags=tags)
    print(f"   {label} done in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the unfinished in-process runs of this host whose process is gone (killed,
    e.g. by SIGKILL or the OOM killer) and free the pool slots they hold: otherwise a killed
    training holds the `gpu` slot forever and the next run waits without a word. Runs of the
    UI or daemon carry no process tag; the daemon's run monitoring frees theirs."""
    released = []
    for run in instance.get_runs(dg.RunsFilter(statuses=UNFINISHED)):
        pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        if pid is None or host != socket.gethostname() or _alive(int(pid)):
            continue
        instance.report_run_failed(run, f"its process {pid} died without finishing the run (killed?); birdpipe marked it failed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        print(f"note: run {run.run_id} ({run.job_name}) died with its process {pid}: marked failed, its pool slots freed", flush=True)
        released.append(run.run_id)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def report_full_pools(instance: dg.DagsterInstance) -> None:
    """Say which runs hold every slot of a pool, since a step of the next run waits for them."""
    for pool in sorted(instance.event_log_storage.get_concurrency_keys()):
        info = instance.event_log_storage.get_concurrency_info(pool)
        if info.slot_count and info.active_slot_count >= info.slot_count:
            holders = ", ".join(sorted(info.active_run_ids))
            print(f"note: pool '{pool}' has all {info.slot_count} slot(s) held by run(s) {holders}; a step in that pool waits "
                  f"for them (cancel them in the UI, or `dagster instance concurrency set {pool} N`)", flush=True)  # fmt: skip


def latest(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()} if records else {}


def _rel(path: str) -> str:
    return os.path.relpath(path, PROJECT_ROOT)


def skipped(evaluation: dg.ExecuteInProcessResult | str, asset: str = "submission", instance: dg.DagsterInstance | None = None) -> str | None:
    """Why `evaluate_job` did not make `asset` (a dataset without soundscapes, or without labelled ones), or None.
    `evaluation` is an in-process result, or the id of a run in `instance` (a run of the cluster)."""
    if isinstance(evaluation, str):
        logs = instance.all_logs(evaluation, of_type=dg.DagsterEventType.ASSET_OBSERVATION)
        observations = [e.asset_observation for e in logs if e.asset_observation.asset_key == dg.AssetKey(asset)]
    else:
        observations = evaluation.asset_observations_for_node(asset)
    for event in observations:
        if "skipped" in event.metadata:
            return event.metadata["skipped"].value
    return None


def stages(config: PipelineConfig) -> list[list[tuple[str, str | None]]]:
    """The jobs of the whole graph as (job, partition) runs, in stages: a stage's runs depend only
    on earlier stages (each cache shard and each fold is its own run, as in the UI)."""
    shards = cache_partitions(config)
    plan = [[("prepare_job", None)]]
    if shards is not None:
        plan += [[("cache_job", shard) for shard in shards.get_partition_keys()], [("folds_job", None)]]
    plan.append([("train_job", fold) for fold in fold_partitions(config).get_partition_keys()])
    return plan + [[("evaluate_job", None)]]


def materialize_all(config: PipelineConfig, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Every job in dependency order, one run after another in this process.
    Returns the evaluation run's result."""
    defs = build_defs(config)
    describe_dataset(config)
    for stage in stages(config):
        for job, partition in stage:
            result = run_job(defs, job, instance, partition)
    return result


def describe_dataset(config: PipelineConfig) -> None:
    root = default_data_root()
    layout = detect_layout(root, config.dataset)
    print(f"dataset {root}: {layout.name} layout, classes from {layout.class_source}, submission format "
          f"{config.submission.format or layout.submission_format}")
    if config.submission.soundscape_dir is None and layout.soundscapes() is None:
        print(f"note: {root} has no soundscape folder: every model is trained and evaluated, the submission is skipped")


def report(config: PipelineConfig, instance: dg.DagsterInstance, evaluation: dg.ExecuteInProcessResult | str) -> None:
    """Scores, MLflow run ids and output paths from the latest materializations (`evaluation`: the
    evaluation run's in-process result, or its run id)."""
    oof, thresholds, sub = (latest(instance, k) for k in ("oof_predictions", "thresholds", "submission"))
    skipped_submission = skipped(evaluation, instance=instance)
    print(f"\n=== birdpipe: {_rel(str(default_data_root()))} ===")
    alias = config.tracking.model_alias
    for fold in fold_partitions(config).get_partition_keys():
        m = latest(instance, "trained_model", fold)
        print(f"fold {fold}: best val {m['metric']} {m['best_score']:.4f} (epoch {m['best_epoch'] + 1}/{m['epochs']})  mlflow {m.get('mlflow_run', '-')}")
    print(f"training parent run: {m['mlflow_parent_run']}\nregistered: {m.get('registered_model', '-')} "
          f"(alias @{alias} -> the latest fold, @{alias}-fold<k> -> each fold): {m.get('registered_model_version', '-')}")
    print(f"out-of-fold macro ROC-AUC (birdclef2025): pooled {oof['birdclef2025']:.4f}, mean of folds "
          f"{oof['fold_mean_birdclef2025']:.4f}   padded cmAP (birdclef2023): pooled {oof['birdclef2023']:.4f}, "
          f"mean of folds {oof['fold_mean_birdclef2023']:.4f}   mlflow {oof['mlflow_run']}")
    blend = latest(instance, "ensemble")
    if blend:
        print(f"ensemble (out of fold, per recording; weights {blend['weights']}, shrink {blend['shrink']}):\n{blend['members']}")
    else:
        print("ensemble: BirdNET is not installed, so the SED fold models stand alone (make birdnet adds it)")
    print(f"thresholds: global {thresholds['global_threshold']:.3f}; out-of-fold {thresholds['objective']} "
          f"{thresholds['global_score']:.4f} (global) / {thresholds['per_species_score']:.4f} (per species)")
    if skipped_submission:
        print(skipped_submission)
    else:
        print(f"submission ({sub['format']} format, {sub['rows']} rows): {_rel(sub['submission_csv'])}")
    if not skipped(evaluation, "soundscape_validation", instance):
        _report_validation(latest(instance, "soundscape_validation"))
    local = isinstance(evaluation, dg.ExecuteInProcessResult)
    print(f"outputs: {_rel(str(Path(oof['oof_parquet']).parents[2]))}/   MLflow store: {'data/mlflow.db' if local else tracking_uri(config.tracking)}")
    if blend:
        print(f"registered blend: {blend.get('registered_model', '-')}: {blend.get('registered_model_version', '-')}")
    print(f"Dagster run (evaluation): {mlf.dagster_url(config.tracking)}/runs/{evaluation.run_id if local else evaluation}")
    if local:
        print(f"browse both: make ui  (Dagster {mlf.dagster_url(config.tracking)}, MLflow {mlf.ui_url(config.tracking)})")


def _report_validation(val: dict) -> None:
    scores = ", ".join(f"{k.removeprefix('soundscape_')} {v:.4f}" for k, v in val.items() if k.startswith("soundscape_birdclef"))
    print(f"soundscape validation (fold ensemble on the labelled soundscapes): {scores}   mlflow {val['mlflow_run']}")
    print(f"labelled soundscapes ({val['soundscapes']} files, {val['windows']} windows of {_rel(val['labels'])}), "
          f"each format scored with its years' metrics (year format {val['year_format']}):")
    for solution, submission, metric in val["score_commands"]:
        cmd = [sys.executable, "-m", "birdpipe.cli", "score", "--solution", solution, "--submission", submission, "--metric", metric]
        print(f"$ birdpipe score --solution {_rel(solution)} --submission {_rel(submission)} --metric {metric}", flush=True)
        subprocess.run(cmd, check=True, cwd=PROJECT_ROOT)


def run_and_report(config: PipelineConfig, materialize: Callable[[PipelineConfig, dg.DagsterInstance], dg.ExecuteInProcessResult | str]) -> int:
    """`materialize` every stage against the instance of $DAGSTER_HOME, then print the report and the wall time."""
    instance = dg.DagsterInstance.get()
    start = time.perf_counter()
    evaluation = materialize(config, instance)
    report(config, instance, evaluation)
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return 0


def main() -> int:
    return run_and_report(load_config(), materialize_all)


if __name__ == "__main__":
    sys.exit(main())
