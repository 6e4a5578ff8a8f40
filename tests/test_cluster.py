"""The `cluster` profile for real, on this machine (`make test-cluster`; minutes, so not in `make test`).

Starts the cluster (configs/deploy/cluster.py) on the tiny dataset with tests/cluster.toml, materializes
the graph up to the fold models through the webserver, the daemon's queue and the Celery
workers, checks where everything ran and was stored, kills a run's process to see its run
failed and its pool slot freed, and stops everything, leaving no process behind.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "configs" / "deploy"))
import cluster as deploy_cluster  # noqa: E402 (configs/deploy/cluster.py, the script make cluster-up runs)

CLUSTER_DIR = ROOT / "data" / "cluster-test"  # not under /tmp: Postgres runs as another user and must reach it

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster(command: str, env: dict) -> None:
    subprocess.run([sys.executable, str(ROOT / "configs" / "deploy" / "cluster.py"), command], env=env, check=True, timeout=900)


@pytest.fixture
def cluster(tiny_dataset, monkeypatch):
    if not shutil.which("redis-server") or not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        pytest.skip("needs Debian's postgresql and redis-server: make cluster-deps installs them")
    env = {
        **os.environ,
        "BIRDPIPE_CLUSTER_DIR": str(CLUSTER_DIR),
        "BIRDPIPE_DATA": str(tiny_dataset),
        "BIRDPIPE_CONFIG": str(ROOT / "tests" / "cluster.toml"),
        "BIRDPIPE_WORK": str(CLUSTER_DIR / "work"),
        "OMP_NUM_THREADS": "1",
        **{k: os.environ.get(k, str(_free_port())) for k in ("BIRDPIPE_PG_PORT", "BIRDPIPE_REDIS_PORT", "BIRDPIPE_MLFLOW_PORT", "BIRDPIPE_DAGSTER_PORT")},
    }
    for key in ("BIRDPIPE_CLUSTER_DIR", "BIRDPIPE_PG_PORT", "BIRDPIPE_REDIS_PORT", "BIRDPIPE_MLFLOW_PORT", "BIRDPIPE_DAGSTER_PORT",
                "BIRDPIPE_DATA", "BIRDPIPE_CONFIG", "BIRDPIPE_WORK"):  # fmt: skip
        monkeypatch.setenv(key, env[key])
    c = deploy_cluster.Cluster.from_env()
    if deploy_cluster.running(c):
        _cluster("down", env)
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
    try:
        _cluster("up", env)
        for key, value in c.env().items():  # this process is a client of the cluster
            if key not in ("BIRDPIPE_CLUSTER", "PATH", "PYTHONPATH"):
                monkeypatch.setenv(key, value)
        yield c
    finally:
        leaders = deploy_cluster._leaders(c)  # the sessions it started, before down forgets them
        _cluster("down", env)
        assert deploy_cluster.running(c, leaders) == [], "processes left after make cluster-down"
        shutil.rmtree(CLUSTER_DIR, ignore_errors=True)


def _step_window(instance, run_id: str, step: str) -> tuple[float, float]:
    import dagster as dg

    times = {e.dagster_event.event_type: e.timestamp for e in instance.all_logs(run_id)
             if e.is_dagster_event and e.dagster_event.step_key == step
             and e.dagster_event.event_type in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS)}  # fmt: skip
    return times[dg.DagsterEventType.STEP_START], times[dg.DagsterEventType.STEP_SUCCESS]


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    while pid > 1:
        if pid in ancestors:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            return False
    return False


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(1)


def test_the_graph_runs_on_the_cluster(cluster):
    import dagster as dg
    import mlflow
    import psycopg2
    from dagster_graphql import DagsterGraphQLClient

    from assets.cluster_demo import submit, wait

    started = time.perf_counter()
    client = DagsterGraphQLClient("127.0.0.1", port_number=cluster.dagster_port)
    instance = dg.DagsterInstance.get()
    runs = {}
    for stage in ([("prepare_job", None)], [("cache_job", "0"), ("cache_job", "1")], [("folds_job", None)], [("train_job", "0"), ("train_job", "1")]):
        ids = [submit(client, job, partition) for job, partition in stage]
        wait(instance, ids, timeout_s=900)
        runs |= {(job, partition): run_id for (job, partition), run_id in zip(stage, ids)}
    print(f"graph up to the fold models through the cluster: {time.perf_counter() - started:.0f} s")

    # Every step ran in a Celery worker's process, fold training on the gpu queue's worker.
    pids = deploy_cluster._leaders(cluster)
    for (job, _), run_id in runs.items():
        starts = [e for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)]
        assert starts, f"{job}: no step started"
        for event in starts:
            worker = "worker-gpu" if event.step_key == "trained_model" else "worker-default"
            pid = event.dagster_event.pid
            assert _descends_from(pid, {pids[worker]}), f"{job}/{event.step_key} ran in pid {pid}, not under {worker}"
    # Runs and their events are in Postgres.
    with psycopg2.connect(host="127.0.0.1", port=cluster.pg_port, user="birdpipe", dbname="dagster") as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs")
        stored = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = ANY(%s)", (list(runs.values()),))
        events = cur.fetchone()[0]
    assert all(stored[r] == "SUCCESS" for r in runs.values()) and events > 50
    # The two fold runs were live together, yet the gpu pool let one training run at a time.
    first, second = sorted((_step_window(instance, runs[("train_job", k)], "trained_model") for k in "01"))
    both = [instance.get_run_stats(runs[("train_job", k)]) for k in "01"]
    assert max(s.start_time for s in both) < min(s.end_time for s in both), "the fold runs did not overlap"
    assert first[1] <= second[0], f"fold trainings overlapped: {first} {second}"
    # MLflow's runs are on the server, its artifacts behind the server's proxy (in its artifact folder).
    mlflow.set_tracking_uri(f"http://127.0.0.1:{cluster.mlflow_port}")
    fold_runs = mlflow.search_runs(experiment_names=["birdpipe"], filter_string="tags.`dagster.asset_key` = 'trained_model'")
    fold_runs = fold_runs[fold_runs["tags.birdpipe.fold"].notna()]
    assert sorted(fold_runs["tags.dagster.partition"]) == ["0", "1"]
    assert mlflow.get_run(fold_runs["run_id"].iloc[0]).info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((cluster.dir / "mlartifacts").rglob("best.pt")), "no checkpoint under the server's artifact folder"

    # A run whose process dies is failed (the code server sees its process gone), and the daemon's
    # run monitoring frees its pool slot. The gpu worker is paused so the step holds the slot.
    gpu_worker = pids["worker-gpu"]
    os.killpg(gpu_worker, signal.SIGSTOP)
    try:
        run_id = submit(client, "train_job", "0")
        pool = lambda: instance.event_log_storage.get_concurrency_info("gpu")  # noqa: E731
        _wait_for(lambda: run_id in pool().active_run_ids, 300, "the run did not claim the gpu slot")
        [start] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
        os.kill(start.dagster_event.pid, signal.SIGKILL)
        _wait_for(lambda: instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE, 120, "the killed run was not failed")
        _wait_for(lambda: run_id not in pool().active_run_ids, 120, "its gpu slot was not freed")
    finally:
        os.killpg(gpu_worker, signal.SIGCONT)
    print(f"whole cluster test body: {time.perf_counter() - started:.0f} s")
