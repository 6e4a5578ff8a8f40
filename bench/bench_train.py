"""Training throughput: data-loader samples/s versus model-step samples/s.

The loader must outpace the model step (by 5x on CPU) or the accelerator waits on it. Measured:
the cached-mel loader (Parquet reads, batched per row group) and the waveform loader (decode +
augment + mel, used when waveform augmentations are on), each with 0 and N workers; and one
training step (forward, backward, AdamW) of the backbone on the chosen device, with AMP and
channels-last on CUDA. Results replace the "## Training" section of docs/benchmarks.md.

    python bench/bench_train.py [--device auto] [--backbone efficientnet_b0] [--workers 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from birdpipe.training.augment import WaveContext, batch_augment, waveform_augment
from birdpipe.config import AugmentConfig, ModelConfig, PipelineConfig
from birdpipe.training.samples import MelWindows, Targets, WaveWindows, epoch_crops, fold_windows, make_loader
from birdpipe.training.losses import bce
from birdpipe.models.sed import build_model
from birdpipe.models.predict import select_device

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Training"
WAVE_AUGMENT = AugmentConfig(waveform={"gaussian_noise": 0.5, "pink_noise": 0.3, "gain": 0.5, "time_shift": 0.5, "pitch_shift": 0.2})
BATCH_AUGMENT = AugmentConfig(batch={"time_mask": 0.5, "freq_mask": 0.5, "mixup": 0.5})


def prepare(data: Path | None, work: Path) -> tuple[Path, Path]:
    """A synthetic dataset (unless `data` is given) and its mel cache at the default MelConfig."""
    from birdpipe.features.cache import build_mel_cache
    from birdpipe.data.metadata import load_taxonomy, load_train_metadata
    from birdpipe.data.layout import detect_layout
    from birdpipe.data.synth import SynthConfig, generate_dataset

    if data is None:
        data = work / "data"
        generate_dataset(data, SynthConfig(n_species=6, recordings_per_species=10, recording_seconds=20.0, n_soundscapes=0))
    layout = detect_layout(data)
    recordings = load_train_metadata(layout.metadata, load_taxonomy(layout.taxonomy)).recordings
    cfg = PipelineConfig()
    report = build_mel_cache(recordings, layout.audio_dir, work / "cache", cfg.mel, cfg.cache, log=lambda m: None)
    return data, report.cache_dir


def loader_rate(dataset, batch_size: int, workers: int, max_batches: int) -> float:
    """Samples/s over up to `max_batches`, after the first batch (worker start-up excluded)."""
    loader = make_loader(dataset, batch_size, workers, seed=0)
    it = iter(loader)
    next(it)
    n, started = 0, time.perf_counter()
    for i, (x, _, _) in enumerate(it):
        n += len(x)
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - started)


def step_rate(backbone: str, n_classes: int, shape: tuple[int, int], batch_size: int, device: torch.device, steps: int) -> float:
    """Training samples/s of the model alone on random mels (batch augmentations included)."""
    model = build_model(ModelConfig(backbone=backbone), n_classes).to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, *shape, device=device)
    y = (torch.rand(batch_size, n_classes, device=device) > 0.9).float()
    w = torch.ones(batch_size, device=device)
    rng = np.random.default_rng(0)

    def step() -> None:
        xb, yb, wb = batch_augment(x, y, w, BATCH_AUGMENT, rng)
        xb = xb.unsqueeze(1)
        if cuda:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            clip, frame = model(xb)
        loss = bce(clip.float(), yb, wb) + 0.5 * bce(frame.float().amax(1), yb, wb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, cudnn autotune
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def write_section(text: str, doc: Path = DOC) -> None:
    """Replace (or append) this benchmark's section, leaving the others as they are."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        doc.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(SECTION))
    doc.write_text(old[:start] + text + (old[end + 1 :] if end >= 0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="BirdCLEF-layout dataset (default: a synthetic one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="efficientnet_b0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="loader batches measured")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    device = select_device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        data, cache_dir = prepare(args.data, Path(tmp))
        from birdpipe.features.cache import MelCacheReader

        cache = MelCacheReader(cache_dir)
        mel = cache.mel_config
        recordings = cache.windows.select("filename", "primary_label", "secondary_labels").unique("filename")
        folds = recordings.select("filename", fold=pl.lit(1))
        train, _ = fold_windows(cache.windows, folds, recordings, fold=0)
        classes = sorted(train["primary_label"].unique().to_list())
        targets = Targets.build(train, cache.windows.height, classes, 0.5, 0.0, use_rating=False)
        rng = np.random.default_rng(0)
        crops = pl.concat([epoch_crops(train, "random", 5.0, mel.window_seconds, True, rng) for _ in range(8)])
        files = train["filename"].unique(maintain_order=True).to_list()
        index = {f: i for i, f in enumerate(files)}
        file_of_row = {r: index[f] for r, f in train.select("row", "filename").iter_rows()}
        mel_ds = MelWindows(cache, crops["row"].to_numpy(), targets)
        wave_ds = WaveWindows([data / "train_audio" / f for f in files], crops, file_of_row, targets, mel,
                              waveform_augment(WAVE_AUGMENT, WaveContext(mel.sample_rate)))  # fmt: skip
        rows = []
        for name, ds in (("cached mels", mel_ds), ("decode + augment + mel", wave_ds)):
            for workers in sorted({0, args.workers}):
                rate = loader_rate(ds, args.batch_size, workers, args.batches)
                rows.append((f"loader: {name}, {workers} workers", rate))
                print(f"{rows[-1][0]:<45} {rate:8.1f} samples/s", flush=True)
        shape = (mel.n_mels, mel.n_frames)
        rate = step_rate(args.backbone, len(classes), shape, args.batch_size, device, args.steps)
        rows.append((f"model step: {args.backbone}, {device.type}", rate))
        print(f"{rows[-1][0]:<45} {rate:8.1f} samples/s", flush=True)

    step = rows[-1][1]
    best_mel = max(r for n, r in rows if "cached" in n)
    best_wave = max(r for n, r in rows if "decode" in n)
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    table = "\n".join(f"| {n} | {r:.1f} | {r / step:.1f}x |" for n, r in rows)
    text = (
        f"{SECTION}\n\n`make bench-train` (`bench/bench_train.py`): {cpu}, {torch.get_num_threads()} torch threads, "
        f"GPU {gpu}; batch {args.batch_size}, mels {shape[0]} x {shape[1]} frames "
        f"({mel.window_seconds:g} s at {mel.sample_rate} Hz), synthetic recordings; {time.strftime('%Y-%m-%d')}.\n\n"
        "| stage | samples/s | vs model step |\n|---|---|---|\n"
        f"{table}\n\n"
        f"Cached-mel loader / model step: {best_mel / step:.1f}x (target >= 5x); "
        f"waveform loader / model step: {best_wave / step:.1f}x.\n"
    )
    if not args.no_write:
        write_section(text)
    print(text)


if __name__ == "__main__":
    main()
