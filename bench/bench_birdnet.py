"""BirdNET V2.4: birdpipe's ONNX Runtime path against the TFLite reference, same chunks, same threads.

Prints max abs differences of embeddings and logits, and chunks/s of each runtime (rounds
interleaved, median), per thread count; writes bench/out/birdnet.json.

    python bench/bench_birdnet.py [--data DIR] [--chunks 64] [--threads 1 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "xc-puerto-rico"


def real_chunks(data: Path, n: int) -> np.ndarray:
    """`n` 3 s chunks at 48 kHz from the dataset's recordings (a few per file)."""
    from birdpipe.data.audio import load
    from birdpipe.models.birdnet import SAMPLE_RATE, chunk_audio, chunk_starts
    from birdpipe.paths import list_audio

    chunks = []
    for path in list_audio(data / "train_audio"):
        wave = load(path, SAMPLE_RATE)
        chunks.append(chunk_audio(wave, chunk_starts(len(wave), 3.0))[:3])
        if sum(len(c) for c in chunks) >= n:
            break
    return np.concatenate(chunks)[:n]


def rate(run, chunks: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(chunks), batch):
        run(chunks[i : i + batch])
    return len(chunks) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from birdpipe.models.birdnet import BirdnetModel, TfliteReference, find_birdnet, onnx_model

    files = find_birdnet()
    chunks = real_chunks(args.data, args.chunks)
    start = time.perf_counter()
    onnx = onnx_model(files)
    convert_s = time.perf_counter() - start
    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "chunks": len(chunks),
              "batch": args.batch, "weights_sha256": files.digest, "convert_or_load_seconds": round(convert_s, 1), "threads": {}}  # fmt: skip
    for threads in args.threads:
        ours, ref = BirdnetModel(onnx, threads=threads, batch_size=args.batch, device="cpu"), TfliteReference(files.model, threads)
        e1, l1 = ours.run(chunks)
        e2, l2 = ref.run(chunks)
        rates = {"onnxruntime": [], "tflite": []}
        for _ in range(args.rounds):  # interleaved, so load changes hit both alike
            rates["onnxruntime"].append(rate(ours.run, chunks, args.batch))
            rates["tflite"].append(rate(ref.run, chunks, args.batch))
        med = {k: statistics.median(v) for k, v in rates.items()}
        result["threads"][threads] = {"embedding_max_abs_diff": float(np.abs(e1 - e2).max()),
                                      "logits_max_abs_diff": float(np.abs(l1 - l2).max()),
                                      "chunks_per_s": med, "ratio": med["onnxruntime"] / med["tflite"]}  # fmt: skip
    out = ROOT / "bench" / "out" / "birdnet.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"BirdNET V2.4, {len(chunks)} real 3 s chunks, batch {args.batch}; sha256 {files.digest}")
    print("threads | max |d| embedding | max |d| logits | ONNX Runtime chunks/s | TFLite chunks/s | ratio")
    for threads, r in result["threads"].items():
        print(f"{threads} | {r['embedding_max_abs_diff']:.2e} | {r['logits_max_abs_diff']:.2e} | "
              f"{r['chunks_per_s']['onnxruntime']:.1f} | {r['chunks_per_s']['tflite']:.1f} | {r['ratio']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
