"""`birdpipe` command line: the library's stages for use outside Dagster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from birdpipe import config as cfgmod


def _cmd_synth(args: argparse.Namespace) -> int:
    from birdpipe.synth import SynthConfig, generate_dataset

    cfg = SynthConfig(
        n_species=args.species,
        recordings_per_species=args.recordings,
        recording_seconds=args.seconds,
        n_soundscapes=args.soundscapes,
        soundscape_seconds=args.soundscape_seconds,
        seed=args.seed,
    )
    summary = generate_dataset(Path(args.out), cfg)
    print(summary)
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from birdpipe.cache import build_mel_cache_cli

    config = cfgmod.load_config(args.config)
    return build_mel_cache_cli(
        data_root=Path(args.data),
        out=Path(args.out),
        mel=_replace(config.mel, noise_reduce=args.noise_reduce),
        cache=_replace(config.cache, workers=args.workers) if args.workers is not None else config.cache,
        limit=args.limit,
    )


def _cmd_score(args: argparse.Namespace) -> int:
    from birdpipe.metrics import score_files

    value = score_files(Path(args.solution), Path(args.submission), args.metric)
    print(f"{value:.6f}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from birdpipe.inference import predict_cli

    config = cfgmod.load_config(args.config)
    return predict_cli(
        model=args.model,
        audio=Path(args.audio),
        out=Path(args.out),
        fmt=args.format,
        submission=config.submission,
        tracking=config.tracking,
        batch_size=args.batch_size,
        use_onnx=not args.no_onnx,
        thresholds=Path(args.thresholds) if args.thresholds else None,
        raven=Path(args.raven) if args.raven else None,
    )


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birdpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic BirdCLEF-layout dataset")
    p.add_argument("--out", default="data/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--species", type=int, default=8)
    p.add_argument("--recordings", type=int, default=12, help="recordings per species")
    p.add_argument("--seconds", type=float, default=12.0, help="mean recording length")
    p.add_argument("--soundscapes", type=int, default=4)
    p.add_argument("--soundscape-seconds", type=float, default=60.0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("cache", help="build the mel / noise-reduced spectrogram cache")
    p.add_argument("--data", required=True, help="BirdCLEF-layout dataset root")
    p.add_argument("--out", required=True, help="cache folder (a versioned subfolder is made)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--limit", type=int, default=None, help="only the first N recordings")
    p.add_argument("--noise-reduce", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--config", default=None, help="TOML config (default: $BIRDPIPE_CONFIG)")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("score", help="score a submission against a solution")
    p.add_argument("--solution", required=True)
    p.add_argument("--submission", required=True)
    p.add_argument("--metric", required=True)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("predict", help="predict species on recordings with trained fold models")
    p.add_argument("--model", required=True, help="checkpoint dir, or models:/name@alias")
    p.add_argument("--audio", required=True, help="audio file or folder")
    p.add_argument("--out", required=True)
    p.add_argument("--format", default=None, help="2021, 2022 or 2023-2025 (default: config)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-onnx", action="store_true", help="run torch even when ONNX is available")
    p.add_argument("--thresholds", default=None, help="thresholds.json for the 2021/2022 formats (default 0.5)")
    p.add_argument("--raven", default=None, help="also write a Raven selection table per file into this folder")
    p.add_argument("--config", default=None)
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"birdpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
