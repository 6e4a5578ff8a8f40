"""Training and inference throughput on one accelerator, through the library's own loop.

For the SED model with `efficientnet_b0` and with the xc-puerto-rico config's backbone, bf16
autocast and channels_last (what `setup_fold` chooses on CUDA), at each batch size, this times
`training.loop.train_steps` (the steps `train_fold` runs every epoch) fed three ways:

- model only: batches already on the device (the ceiling);
- the Parquet mel-cache loader (`training.loop.epoch_loader`, as `run_epoch` builds it), with
  the share of step time spent waiting for the next batch;
- waveform augmentations on (`WaveWindows`: decode, augment and mel per sample in loader workers);

then inference windows/s (`models.predict.predict_batches` on cached mels), and BirdNET chunks/s
when its weights are installed. Peak device memory per configuration. Data is built here: a
synthetic dataset (`birdpipe.data.synth`) and its mel cache. No MLflow, no Dagster.

Targets (ratios, so they hold on any card): loader-fed >= 90% and waveform path >= 70% of the
model-only rate. Writes one JSON and prints a short table last.

    python bench/bench_gpu.py [--device cuda] [--out bench_gpu.json] [--workers N]
    python bench/bench_gpu.py --device cpu --quick     # the same code, small (the test suite runs it)

On a machine without polars, pydantic, soundfile or soxr: `bench/gpu_wheels.sh` (see there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"loader": 0.9, "waveform": 0.7}


def build_data(work: Path, quick: bool, workers: int):
    """A synthetic dataset and its mel cache; returns (FoldData, classes)."""
    from birdpipe.config import CacheConfig, FoldConfig, MelConfig
    from birdpipe.data.folds import assign_folds
    from birdpipe.data.layout import detect_layout
    from birdpipe.data.metadata import read_recordings
    from birdpipe.data.synth import SynthConfig, generate_dataset
    from birdpipe.features.cache import build_mel_cache
    from birdpipe.features.reader import MelCacheReader
    from birdpipe.training.loop import FoldData

    synth = SynthConfig(n_species=3, recordings_per_species=2, recording_seconds=6.0, n_soundscapes=0, n_unlabeled=0) if quick else \
        SynthConfig(n_species=16, recordings_per_species=24, recording_seconds=12.0, n_soundscapes=0, n_unlabeled=0)  # fmt: skip
    generate_dataset(work / "data", synth)
    layout = detect_layout(work / "data")
    recordings = read_recordings(layout)
    mel = MelConfig()
    cache = CacheConfig(workers=1 if quick else workers)  # quick: in process, no pool start-up
    report = build_mel_cache(recordings, layout.audio_dir, work / "cache", mel, cache, log=lambda _: None)
    folds = assign_folds(recordings, FoldConfig(n_folds=2 if quick else 5))
    classes = sorted(recordings["primary_label"].unique().to_list())
    return FoldData(MelCacheReader(report.cache_dir), folds, recordings, classes, layout.audio_dir), report


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timed:
    """An iterable that counts samples and the time spent waiting for each batch."""

    def __init__(self, batches: Iterable):
        self.batches, self.wait, self.samples = batches, 0.0, 0

    def __iter__(self) -> Iterator:
        it = iter(self.batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            self.samples += len(batch[0])
            yield batch


def _rate(run, batches: Iterable, rng) -> dict:
    from birdpipe.training.loop import train_steps

    timed = _Timed(batches)
    _sync(run.device)
    t0 = time.perf_counter()
    train_steps(run, timed, rng)
    _sync(run.device)
    wall = time.perf_counter() - t0
    return {"samples_per_s": timed.samples / wall, "wait_share": timed.wait / wall, "samples": timed.samples}


def measure_config(data, backbone: str, batch: int, device: str, workers: int, quick: bool, out: Path) -> dict:
    """Model-only, loader-fed and waveform rates of one backbone and batch size."""
    import numpy as np
    import torch

    from birdpipe.config import AugmentConfig, ModelConfig, TrainConfig
    from birdpipe.models.predict import predict_batches
    from birdpipe.training.loop import epoch_loader, setup_fold

    wave_aug = {"time_extend": 0.5}
    if importlib.util.find_spec("audiomentations"):
        wave_aug |= {"gaussian_noise": 0.5, "gain": 0.5}
    cfg = TrainConfig(model=ModelConfig(backbone=backbone), batch_size=batch, device=device,
                      num_workers=workers, crop="both", augment=AugmentConfig(batch={"mixup": 0.5}))  # fmt: skip
    run = setup_fold(data, 0, cfg, out / f"{backbone}-{batch}", log=lambda _: None)
    rng = np.random.default_rng(0)
    dev = run.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    on_device = [tuple(t.to(dev) for t in b) for b in epoch_loader(run, 0, rng)]
    repeats = 1 if quick else max(1, 24 // len(on_device))
    _rate(run, on_device[:2], rng)  # warm-up: kernels, autotuning, allocator
    model_only = _rate(run, on_device * repeats, rng)
    loader = _rate(run, epoch_loader(run, 1, rng), rng)
    wave_run = setup_fold(data, 0, cfg.replace(augment=cfg.augment.replace(waveform=wave_aug)), out / f"w-{backbone}-{batch}", log=lambda _: None)
    waveform = _rate(wave_run, epoch_loader(wave_run, 1, rng), rng)
    mels = torch.cat([b[0] for b in on_device]).cpu()
    _sync(dev)
    t0 = time.perf_counter()
    predict_batches(run.model, (mels[i : i + batch] for i in range(0, len(mels), batch)), dev, cfg.model.clip_weight)
    _sync(dev)
    infer = len(mels) / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0
    return {"backbone": backbone, "batch": batch, "model_only": model_only, "loader": loader, "waveform": waveform,
            "waveform_augmentations": sorted(wave_aug), "inference_windows_per_s": infer, "peak_memory_mb": peak,
            "amp_dtype": str(run.amp_dtype), "channels_last": dev.type == "cuda"}  # fmt: skip


def birdnet_rate(device: str, quick: bool) -> dict:
    """BirdNET embedding chunks/s (front-end + ONNX body), or why it was not measured."""
    try:
        from birdpipe.models.birdnet import CHUNK_SAMPLES, BirdnetModel, find_birdnet, onnx_model

        model = BirdnetModel(onnx_model(find_birdnet()), threads=os.cpu_count() or 1, batch_size=32, device="cuda" if device == "cuda" else "cpu")
    except (ImportError, FileNotFoundError) as exc:
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:160]}"}
    import numpy as np

    chunks = np.random.default_rng(0).normal(0, 0.1, (2 if quick else 256, CHUNK_SAMPLES)).astype(np.float32)
    model.run(chunks[:2])
    t0 = time.perf_counter()
    model.run(chunks)
    return {"chunks_per_s": len(chunks) / (time.perf_counter() - t0)}


def summary(result: dict) -> str:
    lines = [f"{result['device_name']} ({result['device']}), {result['workers']} loader workers, mels 128 x 313",
             "| backbone | batch | model only | loader (wait) | waveform | infer win/s | peak MB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["configs"]:
        m, ld, wv = r["model_only"]["samples_per_s"], r["loader"]["samples_per_s"], r["waveform"]["samples_per_s"]
        lines.append(f"| {r['backbone']} | {r['batch']} | {m:.0f}/s | {ld:.0f}/s = {ld / m:.0%} ({r['loader']['wait_share']:.0%}) "
                     f"| {wv:.0f}/s = {wv / m:.0%} | {r['inference_windows_per_s']:.0f} | {r['peak_memory_mb']:.0f} |")  # fmt: skip
    lines.append(f"targets: loader >= {TARGETS['loader']:.0%}, waveform >= {TARGETS['waveform']:.0%} of model only; "
                 f"BirdNET: {result['birdnet']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny data, one batch size, one backbone: checks the code, not the card")
    ap.add_argument("--workers", type=int, default=0, help="loader and cache workers (0: all cores)")
    ap.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    args = ap.parse_args(argv)

    import torch

    from birdpipe.config import load_config
    from birdpipe.parallel import resolve_workers

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --quick to check the code")
    workers = resolve_workers(args.workers)
    started = time.perf_counter()
    config_backbone = load_config(ROOT / "configs" / "xc-puerto-rico.toml").train.model.backbone
    backbones = [config_backbone] if args.quick else list(dict.fromkeys(["efficientnet_b0", config_backbone]))
    batches = [4] if args.quick else [64, 128, 256]
    with tempfile.TemporaryDirectory() as tmp:
        data, report = build_data(Path(tmp), args.quick, workers)
        built = time.perf_counter() - started
        configs = [measure_config(data, b, n, args.device, 0 if args.quick else workers, args.quick, Path(tmp) / "runs")
                   for b in backbones for n in batches]  # fmt: skip
    result = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "workers": workers, "quick": args.quick, "data_seconds": built,
        "cache_audio_s_per_s": report.throughput, "configs": configs, "birdnet": birdnet_rate(args.device, args.quick),
        "targets": TARGETS, "wall_seconds": time.perf_counter() - started,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(summary(result))
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
