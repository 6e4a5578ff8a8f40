"""`birdpipe` command line: the library's stages for use outside Dagster.

Every command validates its config and inputs first, so a typo fails in a second with the
key named, not after minutes of work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from birdpipe.config import PipelineConfig


def _load_config(path: str | None) -> PipelineConfig:
    """Imported on use: spawned worker processes import this module again (it is the main
    module of `birdpipe ...`), and should not pay for every stage's config and its imports."""
    from birdpipe.config import load_config as load

    return load(path)


def _cmd_config(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    print(json.dumps(config.to_dict(), indent=2))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from birdpipe.data.synth import SynthConfig, generate_dataset

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
    config = _load_config(args.config)
    mel = config.mel if args.noise_reduce is None else config.mel.replace(noise_reduce=args.noise_reduce)
    cache = config.cache if args.workers is None else config.cache.replace(workers=args.workers)

    from birdpipe.data.layout import detect_layout
    from birdpipe.data.metadata import read_metadata
    from birdpipe.features.cache import build_mel_cache

    layout = detect_layout(Path(args.data), config.dataset)
    meta = read_metadata(layout)
    recordings = meta.recordings.head(args.limit) if args.limit else meta.recordings
    report = build_mel_cache(recordings, layout.audio_dir, Path(args.out), mel, cache)
    rows = meta.recordings.height + meta.quarantine.height
    print(f"{layout.metadata}: {rows} rows, {meta.quarantine.height} quarantined")
    for row, filename, reason in meta.quarantine.iter_rows():
        print(f"  quarantined row {row} ({filename}): {reason}")
    print(report.summary())
    for filename, _, reason in report.quarantined.iter_rows():
        print(f"  quarantined {filename}: {reason}")
    for filename, reason in report.damaged.iter_rows():
        print(f"  damaged {filename}: {reason}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    config = _load_config(args.config)

    from birdpipe.data.layout import detect_layout
    from birdpipe.data.validate import validate_dataset

    layout = detect_layout(Path(args.data), config.dataset)
    workers = config.cache.workers if args.workers is None else args.workers
    report = validate_dataset(layout, workers=workers, timeout_s=config.cache.file_timeout_s, few_below=args.few)
    print(report.summary(limit=args.limit))
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    return 0 if report.trainable.height else 1


def _cmd_score(args: argparse.Namespace) -> int:
    from birdpipe.evaluation.metrics import score_files

    value = score_files(Path(args.solution), Path(args.submission), args.metric)
    print(f"{value:.6f}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    from birdpipe.inference.formats import DEFAULT_FORMAT

    fmt = args.format or config.submission.format or DEFAULT_FORMAT
    sub_cfg = config.submission.replace(format=fmt, batch_size=args.batch_size)
    audio, out = Path(args.audio), Path(args.out)
    report = Path(args.report) if args.report else out.with_name(f"{out.stem}.files.csv")

    from birdpipe.paths import list_audio

    files = [audio] if audio.is_file() else list_audio(audio) if audio.is_dir() else None
    if files is None:
        raise FileNotFoundError(f"{audio}: no such audio file or folder")
    if not files:
        raise ValueError(f"{audio}: no audio files below it")
    # Inputs are checked before the model libraries load (a minute on a busy machine).
    if not args.model.startswith("models:/") and not Path(args.model).exists():
        raise FileNotFoundError(f"{args.model}: no such model file or folder")
    if args.thresholds and not Path(args.thresholds).is_file():
        raise FileNotFoundError(f"{args.thresholds}: no such thresholds file")
    if args.scored_birds and not Path(args.scored_birds).is_file():
        raise FileNotFoundError(f"{args.scored_birds}: no such scored birds file")
    if args.model.startswith("models:/"):
        from birdpipe.tracking import check_store

        check_store(config.tracking)

    from birdpipe.evaluation.thresholds import Thresholds
    from birdpipe.inference.formats import load_scored_birds, raven_tables, write_submission
    from birdpipe.inference.predict import predict_soundscapes

    ensemble = _load_model(args.model, not args.no_onnx, sub_cfg.ensemble, config.tracking)
    th = Thresholds.from_json(args.thresholds) if args.thresholds else None
    if th is None and sub_cfg.format in ("2021", "2022"):
        print("no --thresholds given: deciding at 0.5 for every species", file=sys.stderr)
    preds = predict_soundscapes(ensemble, files, ensemble.mel, sub_cfg, skip_errors=True)
    scored = load_scored_birds(args.scored_birds) if sub_cfg.format == "2022" and args.scored_birds else None
    write_submission(preds.windows, ensemble.classes, th, sub_cfg, out, scored_birds=scored)
    preds.files.write_csv(report)
    if args.raven:
        raven_tables(preds.windows, ensemble.classes, th, Path(args.raven), ensemble.mel)
    backend = "torch" if args.no_onnx else "onnxruntime"
    what = f"blend of {', '.join(ensemble.members)}" if hasattr(ensemble, "blend") else f"{len(ensemble.members)} fold model(s)"
    print(f"{preds.summary()}, {what} ({backend}) -> {out} (format {sub_cfg.format}); every file's status: {report}")
    for line in preds.problems():
        print(f"  {line}")
    skipped = preds.skipped.height
    if skipped and not args.allow_skips:
        print(f"birdpipe predict: error: {skipped} of {len(files)} file(s) skipped, their windows are missing from {out} "
              "(listed above and in the report); --allow-skips accepts that", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _load_model(ref: str, use_onnx: bool, combine: str, tracking):
    """A blend (a folder with blend.json, or a registered blend model) or a fold ensemble."""
    from birdpipe.inference.blended import is_blend_model, load_blend_model
    from birdpipe.inference.ensemble import load_ensemble
    from birdpipe.paths import default_work_root
    from birdpipe.tracking import download_blend

    folder = Path(ref) if is_blend_model(Path(ref)) else None
    if folder is None and ref.startswith("models:/") and "blend" in ref:
        folder = download_blend(ref, tracking, default_work_root() / "registered-models")
    if folder is not None:
        return load_blend_model(folder, use_onnx=use_onnx)
    return load_ensemble(ref, use_onnx=use_onnx, combine=combine, tracking=tracking)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birdpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="validate a config and print every setting (defaults filled in)")
    p.add_argument("--config", default=None, help="TOML config (default: $BIRDPIPE_CONFIG)")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("synth", help="generate a synthetic BirdCLEF-layout dataset")
    p.add_argument("--out", default="data/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--species", type=int, default=8)
    p.add_argument("--recordings", type=int, default=12, help="recordings per species")
    p.add_argument("--seconds", type=float, default=12.0, help="mean recording length")
    p.add_argument("--soundscapes", type=int, default=4)
    p.add_argument("--soundscape-seconds", type=float, default=60.0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("validate", help="what a dataset folder holds and what of it is trainable (run this first)")
    p.add_argument("--data", required=True, help="dataset root: any BirdCLEF year's download as it is")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON object last")
    p.add_argument("--workers", type=int, default=None, help="header-probe processes (default: config, 0 = all cores)")
    p.add_argument("--few", type=int, default=5, help="list species with fewer trainable recordings than this")
    p.add_argument("--limit", type=int, default=10, help="examples shown per problem")
    p.add_argument("--config", default=None, help="TOML config; its [dataset] section overrides detection")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("cache", help="build the mel / noise-reduced spectrogram cache")
    p.add_argument("--data", required=True, help="dataset root (any BirdCLEF year's layout)")
    p.add_argument("--out", required=True, help="cache folder (a versioned subfolder is made)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: config, 0 = all cores); 1 computes in this process, where a crashing decoder ends the run")
    p.add_argument("--limit", type=int, default=None, help="only the first N recordings")
    p.add_argument("--noise-reduce", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--config", default=None, help="TOML config (default: $BIRDPIPE_CONFIG)")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("score", help="score a submission against a solution")
    p.add_argument("--solution", required=True)
    p.add_argument("--submission", required=True)
    p.add_argument("--metric", required=True, help="birdclef2021 ... birdclef2025 (or the year)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("predict", help="predict species on recordings with trained fold models")
    p.add_argument("--model", required=True, help="checkpoint dir, or models:/name@alias")
    p.add_argument("--audio", required=True, help="audio file or folder")
    p.add_argument("--out", required=True)
    p.add_argument("--format", default=None, help="2021, 2022 or 2023-2025 (default: config, else 2025)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-onnx", action="store_true", help="run torch even when ONNX is available")
    p.add_argument("--thresholds", default=None, help="thresholds.json for the 2021/2022 formats (default 0.5)")
    p.add_argument("--scored-birds", default=None, help="2022 format: JSON list of the scored species (default: every class)")
    p.add_argument("--raven", default=None, help="also write a Raven selection table per file into this folder")
    p.add_argument("--report", default=None, help="CSV of every file's status (ok / damaged / skipped) and reason (default: <out>.files.csv)")
    p.add_argument("--allow-skips", action="store_true", help="exit 0 even when files could not be read (their windows are missing)")
    p.add_argument("--config", default=None)
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:  # missing files, a full disk, an unreachable server, bad values
        print(f"birdpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
