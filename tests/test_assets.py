"""The code location: code versions follow the config; the graph is wired as documented."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRINT_VERSIONS = """
import json
from assets.definitions import defs
graph = defs.get_repository_def().asset_graph
print(json.dumps({k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}))
"""


def _code_versions(config: Path) -> dict[str, str]:
    env = {**os.environ, "BIRDPIPE_CONFIG": str(config)}
    out = subprocess.run([sys.executable, "-c", PRINT_VERSIONS], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_changed_parameter_changes_only_that_assets_code_version(tmp_path):
    base, changed = tmp_path / "base.toml", tmp_path / "changed.toml"
    base.write_text("[mel]\nhop_length = 512\n")
    changed.write_text("[mel]\nhop_length = 320\n[thresholds]\nshrink_positives = 5\n")
    a, b = _code_versions(base), _code_versions(changed)
    differs = sorted(k for k in a if a[k] != b[k])
    assert differs == ["mel_cache", "thresholds"]


def test_graph_lineage_matches_the_documented_chain():
    from assets.definitions import defs

    graph = defs.get_repository_def().asset_graph
    parents = {k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys) for k in graph.get_all_asset_keys()}
    assert parents["audio_manifest"] == ["train_metadata"]
    assert "audio_manifest" in parents["mel_cache"]
    assert "mel_cache" in parents["folds"]
    assert {"folds", "mel_cache"} <= set(parents["trained_model"])
    assert "trained_model" in parents["oof_predictions"]
    assert parents["thresholds"] == ["oof_predictions"]
    assert {"thresholds", "trained_model"} <= set(parents["submission"])


def test_fold_training_is_partitioned_and_in_the_gpu_pool():
    from assets.training import FOLD_PARTITIONS, trained_model

    assert trained_model.op.pool == "gpu"
    assert trained_model.partitions_def == FOLD_PARTITIONS
    assert FOLD_PARTITIONS.get_partition_keys() == ["0", "1", "2"]  # tests/e2e.toml: 3 folds


PRINT_JOBS = """
import json
from assets.definitions import defs
from assets.features import mel_cache
repo = defs.get_repository_def()
jobs = {j.name: sorted(k.to_user_string() for k in j.asset_layer.executable_asset_keys) for j in repo.get_all_jobs() if not j.name.startswith("__")}
print(json.dumps({"jobs": jobs, "shards": mel_cache.partitions_def.get_partition_keys() if mel_cache.partitions_def else None}))
"""


def test_sharded_cache_gets_its_own_partitioned_job(tmp_path):
    config = tmp_path / "sharded.toml"
    config.write_text("[cache]\npartitions = 3\n")
    env = {**os.environ, "BIRDPIPE_CONFIG": str(config)}
    out = subprocess.run([sys.executable, "-c", PRINT_JOBS], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shards"] == ["0", "1", "2"]
    assert result["jobs"]["cache_job"] == ["mel_cache"] and result["jobs"]["folds_job"] == ["folds"]
    assert "mel_cache" not in result["jobs"]["prepare_job"]


MATERIALIZE_SHARDS = """
import sys
import dagster as dg
from assets.definitions import ALL_ASSETS, ALL_CHECKS, JOBS
from assets.resources import Dataset, Tracking, dataset_io_manager
dataset = Dataset(root=sys.argv[1], work_root=sys.argv[2])
defs = dg.Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=JOBS, resources={
    "dataset": dataset, "io_manager": dataset_io_manager, "tracking": Tracking(tracking_uri=sys.argv[3])})
with dg.DagsterInstance.ephemeral() as instance:
    defs.resolve_job_def("prepare_job").execute_in_process(instance=instance)
    for shard in ("0", "1"):
        defs.resolve_job_def("cache_job").execute_in_process(instance=instance, partition_key=shard)
    result = defs.resolve_job_def("folds_job").execute_in_process(instance=instance)
print(result.output_for_node("folds").height)
"""


def test_cache_shards_materialize_separately_and_folds_see_all(tiny_dataset, tmp_path):
    import polars as pl

    config = tmp_path / "sharded.toml"
    config.write_text("[cache]\npartitions = 2\n[mel]\nn_mels = 64\n")
    env = {**os.environ, "BIRDPIPE_CONFIG": str(config)}
    out = subprocess.run(
        [sys.executable, "-c", MATERIALIZE_SHARDS, str(tiny_dataset), str(tmp_path / "work"), f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    assert int(out.stdout.strip().splitlines()[-1]) == pl.read_csv(tiny_dataset / "train_metadata.csv").height
