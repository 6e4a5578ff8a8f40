"""`make demo`: materialize every asset through Dagster, then print scores and where outputs are.

Runs the same jobs the UI offers, against the instance in $DAGSTER_HOME, so afterwards
`make ui` shows every asset materialized, with its metadata and checks.
"""

from __future__ import annotations

import subprocess
import sys
import time

import dagster as dg

from birdpipe.paths import PROJECT_ROOT

from .definitions import defs
from .features import CACHE_PARTITIONS
from .training import FOLD_PARTITIONS


#: Dagster's console logs at INFO: per-epoch progress and warnings, not every step event.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_job(name: str, instance: dg.DagsterInstance, partition_key: str | None = None) -> None:
    label = f"{name}[{partition_key}]" if partition_key else name
    start = time.perf_counter()
    print(f"-> {label} ...", flush=True)
    defs.resolve_job_def(name).execute_in_process(instance=instance, partition_key=partition_key, run_config=QUIET)
    print(f"   {label} done in {time.perf_counter() - start:.0f} s", flush=True)


def latest(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()} if records else {}


def main() -> int:
    instance = dg.DagsterInstance.get()
    start = time.perf_counter()
    run_job("prepare_job", instance)
    if CACHE_PARTITIONS is not None:
        for shard in CACHE_PARTITIONS.get_partition_keys():
            run_job("cache_job", instance, shard)
        run_job("folds_job", instance)
    for fold in FOLD_PARTITIONS.get_partition_keys():
        run_job("train_job", instance, fold)
    run_job("evaluate_job", instance)

    oof = latest(instance, "oof_predictions")
    sub = latest(instance, "submission")
    print("\n=== birdpipe demo ===")
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    for fold in FOLD_PARTITIONS.get_partition_keys():
        m = latest(instance, "trained_model", fold)
        print(f"fold {fold}: best {m.get('metric')} {m.get('best_score', float('nan')):.4f}  mlflow run {m.get('mlflow_run_id')}")
    for name in ("birdclef2025_roc_auc", "birdclef2023_padded_cmap", "birdclef2021_f1", "birdclef2022_score"):
        if name in oof:
            print(f"out-of-fold {name}: {oof[name]:.4f}")
    print(f"submission: {sub.get('submission_csv')}")
    for key, value in sub.items():
        if key.startswith("score_"):
            print(f"  {key.removeprefix('score_')} vs ground truth: {value:.4f}")
    for solution, submission, metric in sub.get("score_commands", []):
        cmd = [sys.executable, "-m", "birdpipe.cli", "score", "--solution", solution, "--submission", submission, "--metric", metric]
        print(f"$ birdpipe score --solution {solution} --submission {submission} --metric {metric}", flush=True)
        subprocess.run(cmd, check=True, cwd=PROJECT_ROOT)
    print(f"MLflow: {PROJECT_ROOT / 'data' / 'mlflow.db'}  (make ui -> http://127.0.0.1:5000)")
    print("Dagster: make ui -> http://127.0.0.1:3000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
