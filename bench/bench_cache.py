"""Mel-cache throughput against its floor and its baseline: same files, same worker processes.

Three methods, each a whole run in a fresh process (Python start-up, imports and the pool
included, as a user would run it), over the same recordings with the same number of worker
processes (`birdpipe.parallel.imap_unordered` for all three):

- decode only: `soundfile.read` of every file, nothing else: the floor of any cache of them;
- the notebook loop (the seeds'): `librosa.load(sr=32000)`, `noisereduce.reduce_noise` with
  its defaults, `librosa.feature.melspectrogram` of the whole file, `power_to_db(ref=np.max)`,
  one `.npy` per file;
- birdpipe: the `birdpipe cache --noise-reduce` command, then again as a rerun on the
  unchanged files.

Methods are interleaved in rounds so they see the same background load; each method's best
round is reported (the least disturbed one, on a shared machine). Peak memory is the largest
total RSS of a run's process tree (sampled every 50 ms). Results replace the "## Cache"
section of docs/benchmarks.md.

    python bench/bench_cache.py [--data DIR] [--workers 2] [--files N] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

from docsection import publish

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Cache"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "xc-puerto-rico"
METHODS = {"decode": "decode only (soundfile)", "notebook": "notebook loop (librosa + noisereduce, .npy per file)",
           "birdpipe": "`birdpipe cache --noise-reduce`"}  # fmt: skip
#: Targets of the issue: birdpipe / decode only, birdpipe / notebook loop.
TARGETS = {"decode": 0.5, "notebook": 10.0}


# --- children: one timed run each ---------------------------------------------------------------


def _decode_one(path: str) -> float:
    import soundfile as sf

    wave, sr = sf.read(path, dtype="float32")
    return len(wave) / sr


def _notebook_one(job: tuple[str, str]) -> float:
    import librosa
    import noisereduce
    import numpy as np

    from birdpipe.config import MelConfig

    path, out = job
    mel = MelConfig()
    wave, sr = librosa.load(path, sr=mel.sample_rate)
    clean = noisereduce.reduce_noise(y=wave, sr=sr)
    power = librosa.feature.melspectrogram(
        y=clean, sr=sr, n_fft=mel.n_fft, hop_length=mel.hop_length, n_mels=mel.n_mels, fmin=mel.fmin, fmax=mel.fmax
    )
    np.save(Path(out) / (Path(path).stem + ".npy"), librosa.power_to_db(power, ref=np.max).astype(np.float16))
    return len(wave) / sr


def run_child(method: str, files: list[str], data: Path, workers: int) -> dict:
    from birdpipe.data.layout import detect_layout
    from birdpipe.parallel import imap_unordered

    def fail(item, reason):
        raise RuntimeError(f"{item}: {reason}")

    audio_dir = detect_layout(data).audio_dir
    paths = [str(audio_dir / f) for f in files]
    if method == "decode":
        return {"audio": sum(imap_unordered(_decode_one, paths, workers, on_failure=fail))}
    if method == "notebook":
        with tempfile.TemporaryDirectory() as out:
            return {"audio": sum(imap_unordered(_notebook_one, [(p, out) for p in paths], workers, on_failure=fail))}
    raise ValueError(f"unknown method {method!r}")


def birdpipe_command(files: int, data: Path, out: str, workers: int) -> list[str]:
    """`birdpipe cache`, the command a user runs (noise reduction on, the default mode)."""
    return [sys.executable, "-c", "import sys; from birdpipe.cli import main; sys.exit(main())", "cache", "--data", str(data),
            "--out", out, "--workers", str(workers), "--limit", str(files), "--noise-reduce"]  # fmt: skip


# --- parent: subprocesses, memory sampling, table -----------------------------------------------


def _tree_rss(root_pid: int) -> int:
    """Total RSS in bytes of `root_pid` and its descendants (from /proc)."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(d)], rss[int(d)] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(p, 0) for p in tree)


def measure(method: str, files: list[str], args: argparse.Namespace) -> dict:
    """One whole run in a fresh process, from its start to its exit; peak RSS of its process
    tree. birdpipe: the command run twice on one output folder, the second a rerun."""
    if method == "birdpipe":
        with tempfile.TemporaryDirectory() as out:
            first = _timed(birdpipe_command(len(files), args.data, out, args.workers))
            again = _timed(birdpipe_command(len(files), args.data, out, args.workers))
        summary = first["stdout"].strip().splitlines()[-1]
        audio = float(summary.split(" s audio")[0].split(", ")[-1])
        windows = int(summary.split(" windows")[0].split(", ")[-1])
        quarantined = int(summary.split(" quarantined")[0].split(", ")[-1])
        if "recomputed 0," not in again["stdout"]:
            raise SystemExit(f"birdpipe rerun recomputed recordings: {again['stdout']}")
        return {"wall": first["wall"], "peak_mb": first["peak_mb"], "audio": audio, "windows": windows,
                "quarantined": quarantined, "rerun": again["wall"]}  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(files, f)
    cmd = [sys.executable, __file__, "--child", method, "--list", f.name, "--data", str(args.data), "--workers", str(args.workers)]
    result = _timed(cmd)
    os.unlink(f.name)
    return {**json.loads(result["stdout"].strip().splitlines()[-1]), "wall": result["wall"], "peak_mb": result["peak_mb"]}


def _timed(cmd: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return {"stdout": out, "wall": wall, "peak_mb": peak[0] / 2**20}


def _verdict(value: float, target: str) -> str:
    """Against the unrounded figure: 9.99x is not 10x."""
    return "met" if value >= TARGETS[target] else "missed"


def table(best: dict, args: argparse.Namespace, n_files: int, workers: int) -> str:
    rate = {m: r["audio"] / r["wall"] for m, r in best.items()}
    bird = best["birdpipe"]
    cmd = f"python bench/bench_cache.py --workers {workers} --rounds {args.rounds}" + (
        f" --files {args.files}" if args.files else ""
    )
    lines = [
        SECTION,
        "",
        f"`make bench-cache` (`{cmd}`), {date.today()}: {args.data.name}, {n_files} recordings "
        f"({bird['audio']:.0f} s of audio), {workers} worker processes for every method; whole runs "
        f"(start-up included), best of {args.rounds} interleaved rounds.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end (shared with other work: the ratios, measured side "
        "by side, are the figures that carry over; absolute times vary with the load).",
        "",
        "| method | wall time | audio-s per wall-s | birdpipe / method | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for method, label in METHODS.items():
        r = best[method]
        ratio = "" if method == "birdpipe" else f"{rate['birdpipe'] / rate[method]:.2f}x"
        lines.append(f"| {label} | {r['wall']:.1f} s | {rate[method]:.0f}x | {ratio} | {r['peak_mb']:.0f} MB |")
    of_decode, of_notebook = rate["birdpipe"] / rate["decode"], rate["birdpipe"] / rate["notebook"]
    checks = [
        f"{of_decode:.1%} of decode-only throughput (target >= {TARGETS['decode']:.0%}: {_verdict(of_decode, 'decode')})",
        f"{of_notebook:.2f}x the notebook loop (target >= {TARGETS['notebook']:.0f}x: {_verdict(of_notebook, 'notebook')})",
    ]
    lines += [
        "",
        "birdpipe (noise reduction on, stationary): " + "; ".join(checks) + ".",
        f"birdpipe rerun on the unchanged {n_files} recordings: {bird['rerun']:.2f} s, nothing recomputed; "
        f"{bird['quarantined']} quarantined, {bird['windows']} windows.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BirdCLEF-layout dataset")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for every method")
    ap.add_argument("--files", type=int, default=0, help="this many recordings (0: all)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each method's best is reported")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--list", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        files = json.loads(Path(args.list).read_text())
        print(json.dumps(run_child(args.child, files, args.data, args.workers)))
        return

    from birdpipe.data.metadata import read_recordings
    from birdpipe.data.layout import detect_layout
    from birdpipe.parallel import resolve_workers

    names = read_recordings(detect_layout(args.data))["filename"].to_list()
    files = names[: args.files or len(names)]
    workers = resolve_workers(args.workers)
    args.workers = workers
    best: dict[str, dict] = {}
    for round_ in range(1, args.rounds + 1):
        for method in METHODS:
            r = measure(method, files, args)
            print(f"round {round_} {method:8s}: {r['audio']:8.1f} s audio in {r['wall']:6.1f} s "
                  f"({r['audio'] / r['wall']:.0f}x), peak {r['peak_mb']:.0f} MB", flush=True)  # fmt: skip
            if method not in best or r["wall"] < best[method]["wall"]:
                best[method] = r
    publish(table(best, args, len(files), workers), SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
