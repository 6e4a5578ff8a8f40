"""The crash-safe process pool: dying, killed and hanging workers cost one item, never the run."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from birdpipe import parallel
from birdpipe.parallel import imap_unordered, inject_fault

ROOT = Path(__file__).resolve().parent.parent


def _work(key: str) -> str:
    """Runs in pool workers (imported there by name)."""
    inject_fault(key)
    if key.startswith("raise"):
        raise ValueError(f"bad item {key}")
    if key.startswith("flaky:"):  # dies the first time only
        flag = Path(key.removeprefix("flaky:"))
        if not flag.exists():
            flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return key.upper()


def _failed(key: str, reason: str) -> tuple[str, str]:
    return key, reason


def test_in_process_and_pooled_give_the_same_results():
    keys = [f"k{i}" for i in range(7)]
    assert list(imap_unordered(_work, keys, 1, on_failure=_failed)) == [k.upper() for k in keys]
    assert sorted(imap_unordered(_work, keys, 2, on_failure=_failed)) == sorted(k.upper() for k in keys)


def test_dying_killed_and_hanging_items_are_reported_and_the_rest_finish(monkeypatch):
    monkeypatch.setenv(parallel.FAULTS_ENV, "segv=segv,kill=kill,hang=hang")
    keys = ["a", "segv", "b", "kill", "c", "hang", "d", "e"]
    start = time.monotonic()
    out = list(imap_unordered(_work, keys, 2, on_failure=_failed, timeout_s=3))
    failed = dict(r for r in out if isinstance(r, tuple))
    assert sorted(r for r in out if isinstance(r, str)) == ["A", "B", "C", "D", "E"]
    assert failed == {
        "segv": "decoder process died: signal 11 (SIGSEGV)",
        "kill": "decoder process died: signal 9 (SIGKILL)",
        "hang": "decoder timed out after 3 s",
    }
    assert time.monotonic() - start < 60


def test_an_item_that_died_once_is_retried_alone_and_kept(tmp_path):
    out = list(imap_unordered(_work, ["a", f"flaky:{tmp_path / 'f'}", "b"], 2, on_failure=_failed))
    assert sorted(out) == sorted(["A", "B", f"FLAKY:{tmp_path / 'f'}".upper()])


def test_an_exception_in_the_function_is_raised_not_quarantined():
    with pytest.raises(ValueError, match="bad item raise"):
        list(imap_unordered(_work, ["a", "raise", "b"], 2, on_failure=_failed))


def test_faults_apply_only_in_pool_workers(monkeypatch):
    monkeypatch.setenv(parallel.FAULTS_ENV, "a=segv")
    assert list(imap_unordered(_work, ["a"], 1, on_failure=_failed)) == ["A"]  # in process: no fault


def _run_script(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, **kw)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie waiting for init to reap it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_their_parent(tmp_path):
    parent = _run_script(
        f"""
        import os, test_parallel
        from birdpipe.parallel import imap_unordered
        os.environ["BIRDPIPE_FAULTS"] = "x=hang,y=hang"
        list(imap_unordered(test_parallel._record_pid_and_work, [("{tmp_path}", "x"), ("{tmp_path}", "y")], 2, on_failure=print))
        """
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids)


def _record_pid_and_work(job: tuple[str, str]) -> str:
    folder, key = job
    (Path(folder) / f"{os.getpid()}.pid").touch()
    return _work(key)


def test_a_worker_that_cannot_start_is_an_error_not_a_bad_item():
    # A function defined in `python -c`'s __main__ cannot be found by a spawned worker.
    script = _run_script(
        """
        from birdpipe.parallel import imap_unordered
        def f(x):
            return x
        try:
            list(imap_unordered(f, [1, 2], 2, on_failure=lambda item, reason: print("FAILED", item)))
        except RuntimeError as exc:
            print("ERROR", exc)
        """,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    out, _ = script.communicate(timeout=120)
    assert "ERROR a worker process failed to start (decoder process died: exit code 1)" in out and "FAILED" not in out


def _rss_after_freeing(mb: int) -> tuple[int, int]:
    """Resident MB with an array of `mb` MB alive, then after freeing it (in a pool worker)."""
    import numpy as np

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20

    block = np.ones(mb * 2**20 // 8)
    held = rss()
    del block
    return held, rss()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux's")
def test_workers_keep_freed_memory_for_the_next_array():
    """Decoding and transforms allocate arrays of a few MB per block; a worker that hands them
    back to the kernel faults every page in again (7x the page faults on the mel cache)."""
    held, after = next(imap_unordered(_rss_after_freeing, [24], 2, on_failure=_failed))
    assert held - after < 4, f"{held} MB resident with the array, {after} MB after freeing it"


def test_the_cli_module_imports_no_stage_code():
    """A spawned worker imports the program's main module again (`birdpipe` and `python -m
    birdpipe.cli` both make it `birdpipe.cli`), so its top level must stay light."""
    code = "import sys, birdpipe.cli; print([m for m in sys.modules if m.startswith(('birdpipe.', 'polars', 'pydantic', 'numpy'))])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['birdpipe.cli']"
