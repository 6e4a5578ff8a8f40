"""Mel-cache throughput: the usual notebook loop versus `birdpipe.cache`, same files, same workers.

The usual loop, per file: `librosa.load(sr=32000)`, `noisereduce.reduce_noise`,
`librosa.feature.melspectrogram` per window, `power_to_db` (birdpipe's reference path, in a
process pool of the same size). birdpipe: `build_mel_cache` (decode, one STFT per window, mel,
mel-band gate, Parquet shards), then a rerun on the unchanged files.

Each method runs on a small and a large subset of the recordings, each in a fresh process;
throughput is (large - small audio seconds) / (large - small wall seconds), so start-up (imports,
pool spawn) does not count; whole-run rates are printed beside it. Peak memory is the largest
total RSS of the run's process tree (sampled every 50 ms). Results replace the "## Cache"
section of docs/benchmarks.md.

    python bench/bench_cache.py [--data DIR] [--workers N] [--files N] [--small 0.1] [--noise-mode stationary|nonstationary|off]
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

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Cache"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "xc-puerto-rico"


def mel_config(noise_mode: str):
    from birdpipe.config import MelConfig

    if noise_mode == "off":
        return MelConfig(noise_reduce=False)
    return MelConfig(noise_reduce=True, noise_mode=noise_mode)


# --- children: one timed run each ---------------------------------------------------------------


def _usual_one(job: tuple[str, dict]) -> tuple[float, int]:
    import librosa

    from birdpipe.config import MelConfig
    from birdpipe.features.mel import reference_log_mel_windows

    path, cfg = job
    cfg = MelConfig.from_dict(cfg)
    wave, _ = librosa.load(path, sr=cfg.sample_rate)
    mels, _ = reference_log_mel_windows(wave, cfg)
    return len(wave) / cfg.sample_rate, len(mels)


def run_usual(files: list[str], data: Path, workers: int, noise_mode: str) -> dict:
    from birdpipe.parallel import imap_unordered

    cfg = mel_config(noise_mode).to_dict()
    t0 = time.perf_counter()
    results = list(imap_unordered(_usual_one, [(str(data / "train_audio" / f), cfg) for f in files], workers))
    return {"wall": time.perf_counter() - t0, "audio": sum(r[0] for r in results), "windows": sum(r[1] for r in results)}


def run_birdpipe(files: list[str], data: Path, workers: int, noise_mode: str) -> dict:
    import polars as pl

    from birdpipe.data.metadata import read_recordings
    from birdpipe.features.cache import build_mel_cache
    from birdpipe.config import CacheConfig
    from birdpipe.data.layout import detect_layout

    layout = detect_layout(data)
    recs = read_recordings(layout).filter(pl.col("filename").is_in(files))
    mel, cache = mel_config(noise_mode), CacheConfig(workers=workers)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        first = build_mel_cache(recs, layout.audio_dir, Path(out), mel, cache, log=lambda _: None)
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = build_mel_cache(recs, layout.audio_dir, Path(out), mel, cache, log=lambda _: None)
        rerun = time.perf_counter() - t1
    assert again.recomputed == 0, again.summary()
    return {"wall": wall, "audio": first.computed_seconds, "windows": first.windows,
            "quarantined": first.quarantined.height, "rerun": rerun}  # fmt: skip


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
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(files, f)
    cmd = [sys.executable, __file__, "--child", method, "--list", f.name, "--data", str(args.data),
           "--workers", str(args.workers), "--noise-mode", args.noise_mode]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    os.unlink(f.name)
    if proc.returncode:
        raise SystemExit(f"{method} run failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = peak[0] / 2**20
    return result


def _rate(small: dict, large: dict) -> float:
    return (large["audio"] - small["audio"]) / max(large["wall"] - small["wall"], 1e-9)


def table(results: dict, args: argparse.Namespace, n_small: int, n_large: int) -> str:
    usual, bird = results["usual"], results["birdpipe"]
    r_usual, r_bird = _rate(*usual), _rate(*bird)
    workers = args.workers or len(os.sched_getaffinity(0))
    cmd = f"python bench/bench_cache.py --workers {workers} --noise-mode {args.noise_mode}" + (
        f" --files {args.files}" if args.files else ""
    )
    load = os.getloadavg()[0]
    lines = [
        SECTION,
        "",
        f"`make bench-cache` (`{cmd}`), {date.today()}: {args.data.name}, {n_small} then {n_large} recordings "
        f"({usual[1]['audio']:.0f} s of audio), noise reduction {args.noise_mode}, {workers} worker process(es) for both.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
        f"load average {load:.1f} at the end (shared with other work).",
        "",
        "| method | audio-s/s (large - small) | whole run, small | whole run, large | peak RSS (large) |",
        "|---|---|---|---|---|",
    ]
    for name, label, (s, lg), rate in [("usual", "usual loop (librosa + noisereduce)", usual, r_usual),
                                       ("birdpipe", "birdpipe cache", bird, r_bird)]:  # fmt: skip
        lines.append(
            f"| {label} | {rate:.0f} | {s['audio'] / s['wall']:.0f} audio-s/s ({s['wall']:.1f} s) "
            f"| {lg['audio'] / lg['wall']:.0f} audio-s/s ({lg['wall']:.1f} s) | {lg['peak_mb']:.0f} MB |"
        )
    lines += [
        "",
        f"Ratio birdpipe / usual loop: **{r_bird / r_usual:.1f}x** as throughput (target >= 10x); "
        f"{(bird[1]['audio'] / bird[1]['wall']) / (usual[1]['audio'] / usual[1]['wall']):.1f}x on whole-run times.",
        f"birdpipe rerun on the unchanged {n_large} recordings: {bird[1]['rerun']:.2f} s, nothing recomputed; "
        f"{bird[1]['quarantined']} quarantined, {bird[1]['windows']} windows.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or append) this benchmark's section, leaving the others as they are."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    start = doc.find(SECTION + "\n")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        end = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text + ("\n" + doc[end + 1 :] if end >= 0 else "")
    DOC.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BirdCLEF-layout dataset")
    ap.add_argument("--workers", type=int, default=0, help="processes for both methods (0: all cores)")
    ap.add_argument("--files", type=int, default=0, help="large run: this many recordings (0: all)")
    ap.add_argument("--small", type=float, default=0.1, help="small run: this fraction of the large one")
    ap.add_argument("--noise-mode", default="stationary", choices=["stationary", "nonstationary", "off"])
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--child", choices=["usual", "birdpipe"], help=argparse.SUPPRESS)
    ap.add_argument("--list", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        files = json.loads(Path(args.list).read_text())
        run = run_usual if args.child == "usual" else run_birdpipe
        print(json.dumps(run(files, args.data, args.workers, args.noise_mode)))
        return

    from birdpipe.data.metadata import read_recordings
    from birdpipe.data.layout import detect_layout

    names = read_recordings(detect_layout(args.data))["filename"].sample(fraction=1.0, shuffle=True, seed=0).to_list()
    large = names[: args.files or len(names)]
    small = large[: max(1, round(args.small * len(large)))]
    results = {"birdpipe": [], "usual": []}
    for files in (small, large):  # methods interleaved, so both see the same background load
        for method in results:
            r = measure(method, files, args)
            print(f"{method:8s} {len(files):4d} files: {r['audio']:8.1f} s audio in {r['wall']:6.1f} s, peak {r['peak_mb']:.0f} MB", flush=True)
            results[method].append(r)
    text = table(results, args, len(small), len(large))
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote {DOC.relative_to(ROOT)} {SECTION}")


if __name__ == "__main__":
    main()
