"""Faults injected into whole commands: a kill, a full disk, a dead tracking server. Each
must end in a clear error or a resumable state, never a hang, an orphan or a half file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: no psutil needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_birdpipe_cache_leaves_no_worker_and_the_next_run_completes_it(tmp_path):
    from birdpipe.features.cache import cache_dir_for
    from birdpipe.features.reader import MelCacheReader
    from test_cache import MEL, _config, _dataset, _write_metadata

    root = tmp_path / "ds"
    recs = _dataset(root / "train_audio")
    _write_metadata(root, recs)
    config = _config(tmp_path / "c.toml", "[cache]\nshard_max_mb = 0\n")
    cmd = [sys.executable, "-m", "birdpipe.cli", "cache", "--data", str(root), "--out", str(tmp_path / "out"),
           "--config", str(config), "--workers", "2"]  # fmt: skip
    env = {**os.environ, "BIRDPIPE_FAULTS": "ccc/c2.wav=hang"}  # one worker stays busy until the kill
    build = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        index = cache_dir_for(tmp_path / "out", MEL) / "index-p0of1.parquet"
        _wait_for(index.exists, 120, "the first shard")  # some recordings are cached
        workers = _wait_for(lambda: _children(build.pid), 60, "the pool's workers")
    finally:
        build.send_signal(signal.SIGKILL)
        build.wait()
    _wait_for(lambda: not any(_alive(w) for w in workers), 10, f"workers {workers} to die with their parent")

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "10 files" in done.stdout and "4 quarantined" in done.stdout and "recomputed" in done.stdout
    reader = MelCacheReader(cache_dir_for(tmp_path / "out", MEL))
    assert len(reader) == 14 and reader.index.filter(reader.index["status"] == "ok").height == 6


def test_a_full_disk_fails_the_cache_build_with_the_file_named_and_no_half_file(tmp_path, monkeypatch, capsys):
    import errno

    import polars as pl

    from birdpipe.cli import main
    from birdpipe.features import cache
    from birdpipe.features.reader import MelCacheReader
    from test_cache import MEL, _config, _dataset, _write_metadata

    root = tmp_path / "ds"
    _write_metadata(root, _dataset(root / "train_audio"))
    cmd = ["cache", "--data", str(root), "--out", str(tmp_path / "out"), "--config",
           str(_config(tmp_path / "c.toml", "[cache]\nshard_max_mb = 0\n")), "--workers", "1"]  # fmt: skip
    written = {"n": 0}
    real = pl.DataFrame.write_parquet

    def disk_fills_up(frame, where, **kw):
        written["n"] += 1
        if written["n"] == 4:  # a shard and its index are on disk, then the disk fills up mid-file
            Path(where).write_bytes(b"PAR1 half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(frame, where, **kw)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", disk_fills_up)  # the cache's Parquet writer
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert err.startswith("birdpipe cache: error: ") and ".parquet: cannot write (No space left on device)" in err, err
    cache_dir = cache.cache_dir_for(tmp_path / "out", MEL)
    assert not [p.name for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temporary left
    before = MelCacheReader(cache_dir)  # what was written is whole and readable
    assert before.index.height >= 1 and len(before) >= 1
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real)
    assert main(cmd) == 0 and "10 files" in capsys.readouterr().out


def test_a_kill_while_the_submission_is_written_leaves_the_previous_file_whole(tmp_path):
    """The process dies mid-write (SIGKILL from inside the CSV writer): the old submission stays."""
    out = tmp_path / "submission.csv"
    out.write_text("row_id,aaa\nold_5,0.5\n")
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np, polars as pl
        from birdpipe.config import SubmissionConfig
        from birdpipe.inference.formats import write_submission

        real = pl.DataFrame.write_csv
        def dies_halfway(self, file, **kw):
            open(file, "w").write("row_id,aaa\\nnew_5,0.")
            os.kill(os.getpid(), signal.SIGKILL)
        pl.DataFrame.write_csv = dies_halfway
        preds = pl.DataFrame({{"row_id": ["new_5"], "soundscape_id": ["new"], "end_seconds": [5], "aaa": [0.7]}})
        write_submission(preds, ["aaa"], None, SubmissionConfig(format="2025"), {str(out)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert out.read_text() == "row_id,aaa\nold_5,0.5\n"


def test_a_run_killed_holding_the_gpu_pool_slot_does_not_block_the_next(tmp_path, capsys):
    """A SIGKILLed training held Dagster's `gpu` slot forever; the next run waited silently."""
    import dagster as dg

    from assets.demo import release_dead_runs, report_full_pools, run_job

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        import time
        import dagster as dg
        from assets.demo import run_job

        @dg.asset(pool="gpu")
        def trained_model():
            open({str(started)!r}, "w").close()
            time.sleep(600)

        defs = dg.Definitions(assets=[trained_model], jobs=[dg.define_asset_job("train_job", ["trained_model"])])
        run_job(defs, "train_job", dg.DagsterInstance.from_config({str(home)!r}))
    """)
    training = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(started.exists, 120, "the training to hold the slot")
    finally:
        training.send_signal(signal.SIGKILL)
        training.wait()

    @dg.asset(pool="gpu")
    def trained_model():
        return 1

    defs = dg.Definitions(assets=[trained_model], jobs=[dg.define_asset_job("train_job", ["trained_model"])])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [dead] = instance.get_runs()
        assert dead.status == dg.DagsterRunStatus.STARTED  # what Dagster believes of the killed run
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == {dead.run_id}
        report_full_pools(instance)  # what a wait is for, printed before each job
        assert f"pool 'gpu' has all 1 slot(s) held by run(s) {dead.run_id}" in capsys.readouterr().out
        result = run_job(defs, "train_job", instance)  # frees the slot first, so it does not wait
        assert result.success
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0
        assert release_dead_runs(instance) == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """A local tracking server (SQLite backend, artifacts proxied into tmp_path), up and answering."""
    import urllib.request

    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def answers() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    _wait_for(answers, 180, "the MLflow server")
    return server


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # the server and its uvicorn workers
    server.wait()


def test_a_tracking_server_lost_mid_training_fails_the_fold_clearly_and_the_rerun_resumes(tmp_path):
    from birdpipe.tracking import TrackingConfig
    from birdpipe.training.loop import FoldData, FoldTracking, train_fold
    from test_training import CLASSES, FakeCache, _cfg, _frames

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    tracking = TrackingConfig(tracking_uri=uri, experiment="faults", registered_model="", http_retries=0)
    cache = FakeCache()
    folds, metadata = _frames(cache)
    server = _mlflow_server(tmp_path, port)

    def server_dies_after_the_first_epoch(message: str) -> None:
        if "epoch 1/3" in message:
            _stop(server)

    start = time.monotonic()
    try:
        with pytest.raises(Exception, match=f"{uri}.*(refused|Max retries)") as failure:
            train_fold(FoldData(cache, folds, metadata, CLASSES), 0, _cfg(), tmp_path / "fold-0", FoldTracking(tracking, {}),
                       log=server_dies_after_the_first_epoch)  # fmt: skip
    finally:
        if server.poll() is None:
            _stop(server)
    assert time.monotonic() - start < 120, "no retrying for minutes"
    print(failure.value)

    server = _mlflow_server(tmp_path, port)
    try:
        messages: list[str] = []
        result = train_fold(FoldData(cache, folds, metadata, CLASSES), 0, _cfg(), tmp_path / "fold-0", FoldTracking(tracking, {}),
                            log=messages.append)  # fmt: skip
    finally:
        _stop(server)
    assert any("resuming after epoch 1" in m for m in messages), messages
    assert result.epochs_run == 3 and result.run_id
