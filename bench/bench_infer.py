"""Inference throughput: windows per second of one fold model, torch eager against ONNX Runtime.

Same model (the configured backbone, random weights: speed does not depend on them), same
input, same thread count for both; rounds alternate between the two so that background load
hits both alike, and the best round of each is reported. Results replace the
"## Inference" section of docs/benchmarks.md.

    .venv/bin/python bench/bench_infer.py [--threads 2] [--windows 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from birdpipe.config import MelConfig, ModelConfig
from birdpipe.models.export import OnnxModel, export_onnx
from birdpipe.models.predict import TorchPredictor
from birdpipe.models.sed import build_model, model_meta
from docsection import publish

SECTION = "## Inference"


def windows_per_second(predict, mels: np.ndarray, batch_size: int) -> float:
    start = time.perf_counter()
    predict(mels, batch_size)
    return len(mels) / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mel = MelConfig()
    model = build_model(ModelConfig(backbone=args.backbone), args.classes).eval()
    meta = model_meta(model, [f"c{i}" for i in range(args.classes)], mel)
    eager = TorchPredictor(model, model.cfg.clip_weight)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = OnnxModel(export_onnx(model, Path(tmp) / "m.onnx", mel.n_mels, mel.n_frames, meta), threads=args.threads)
    mels = np.random.default_rng(0).random((args.windows, mel.n_mels, mel.n_frames), dtype=np.float32)
    max_diff = float(np.abs(onnx.predict(mels[:8], 8) - eager.predict(mels[:8], 8)).max())  # also warms up
    rates = {"torch": [], "onnx": []}
    for _ in range(args.rounds):
        rates["torch"].append(windows_per_second(eager.predict, mels, args.batch_size))
        rates["onnx"].append(windows_per_second(onnx.predict, mels, args.batch_size))
        print(f"torch {rates['torch'][-1]:7.1f}  onnx {rates['onnx'][-1]:7.1f} windows/s", flush=True)
    return {"rates": rates, "max_diff": max_diff, "mel": mel, "load": os.getloadavg()[0]}


def report(args: argparse.Namespace, result: dict) -> str:
    best = {k: max(v) for k, v in result["rates"].items()}
    median = {k: float(np.median(v)) for k, v in result["rates"].items()}
    mel = result["mel"]
    import onnxruntime

    return "\n".join(
        [
            SECTION,
            "",
            f"`make bench-infer` ({time.strftime('%Y-%m-%d')}): one `{args.backbone}` SED fold model, "
            f"{args.classes} classes, input {mel.n_mels} mels x {mel.n_frames} frames (5 s), "
            f"{args.windows} windows in batches of {args.batch_size}, {args.threads} threads for both, "
            f"{args.rounds} alternating rounds.",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"load average {result['load']:.1f} at the end (shared with other work: the best round is the "
            "least disturbed); "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}.",
            "",
            "| backend | windows/s (best) | windows/s (median) | speed-up (best) |",
            "|---|---|---|---|",
            f"| torch eager | {best['torch']:.1f} | {median['torch']:.1f} | 1.00x |",
            f"| ONNX Runtime (CPU) | {best['onnx']:.1f} | {median['onnx']:.1f} | {best['onnx'] / best['torch']:.2f}x |",
            "",
            f"Largest difference of the probabilities, ONNX vs torch: {result['max_diff']:.1e} (target <= 1e-4).",
            f"At this rate one 10-minute soundscape (120 windows) takes {120 / best['onnx']:.1f} s of model time "
            "with ONNX Runtime, before mel extraction.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=ModelConfig().backbone)
    parser.add_argument("--classes", type=int, default=206, help="BirdCLEF 2025 has 206")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    return publish(report(args, run(args)), SECTION, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
