"""Submission: the fold ensemble on the soundscapes, in every BirdCLEF format."""

from pathlib import Path

import dagster as dg
import polars as pl

from birdpipe import tracking as mlf
from birdpipe.config import version
from birdpipe.inference import load_ensemble, predict_soundscapes
from birdpipe.paths import list_audio
from birdpipe.soundscapes import FORMAT_FILES, expected_windows, find_labels, score_formats, write_all_formats
from birdpipe.submission import check_submission, expected_rows, load_scored_birds, raven_tables
from birdpipe.thresholds import Thresholds

from .meta import md_table
from .resources import CONFIG, Dataset, Tracking, lineage_tags
from .training import TRAIN_VERSION

GROUP = "submission"


@dg.asset(group_name=GROUP, code_version=version(CONFIG.submission), kinds={"onnx", "csv", "mlflow"})
def submission(
    context: dg.AssetExecutionContext,
    dataset: Dataset,
    tracking: Tracking,
    trained_model: dict[str, dict],
    thresholds: Thresholds,
) -> dg.Output[dict]:
    """Fold-ensemble predictions per 5 s window of every soundscape, written in each format."""
    cfg = CONFIG.submission
    soundscape_dir = dataset.layout.soundscapes(cfg.soundscape_dir)
    if soundscape_dir is None:
        raise FileNotFoundError(f"{dataset.root}: no test_soundscapes/, unlabeled_soundscapes/ or train_soundscapes/")
    files = list_audio(soundscape_dir)
    checkpoints = [Path(trained_model[k]["best_checkpoint"]) for k in sorted(trained_model, key=int)]
    ensemble = load_ensemble(checkpoints, use_onnx=cfg.use_onnx, combine=cfg.ensemble)
    preds = predict_soundscapes(ensemble, files, ensemble.mel, cfg, progress=False, skip_errors=True)
    out = dataset.work.stage("submission", version(TRAIN_VERSION, CONFIG.thresholds, cfg))
    scored = load_scored_birds(dataset.layout.root / cfg.scored_birds) if cfg.scored_birds else None
    paths = write_all_formats(preds, ensemble.classes, thresholds, cfg, out, scored)
    preds.write_parquet(out / "window_probabilities.parquet")
    if cfg.raven_tables:
        raven_tables(preds, ensemble.classes, thresholds, out / "raven", ensemble.mel)
    labels = find_labels(dataset.layout.root)
    scores = score_formats(labels, paths, ensemble.classes, out, scored) if labels else []
    with mlf.stage_run(tracking.config_for(dataset), "submission", lineage_tags(context, dataset)) as run:
        mlf.log_metrics({f"soundscape_{s.metric}": s.value for s in scores})
        mlf.log_artifacts(out)
    return dg.Output(
        {
            "path": str(paths["submission"]),
            "files": {fmt: str(p) for fmt, p in paths.items()},
            "classes": ensemble.classes,
            "scored_birds": scored,
            "windows": expected_windows(files, ensemble.mel.window_seconds),
        },
        metadata={
            "submission_csv": dg.MetadataValue.path(str(paths["submission"])),
            "format": cfg.format,
            "soundscapes": len(files),
            "rows": preds.height,
            "models": len(ensemble.members),
            "backend": "onnxruntime" if cfg.use_onnx else "torch",
            **{f"soundscape_{s.metric}": s.value for s in scores},
            "score_commands": [[str(s.solution), str(s.submission), s.metric] for s in scores],
            "mlflow_run_id": run.info.run_id,
        },
    )


def _schema_check(fmt: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=submission, name=f"submission_{fmt}_schema", description=f"The {fmt}-format file's schema.")
    def check(submission: dict) -> dg.AssetCheckResult:
        classes, scored = submission["classes"], submission["scored_birds"]
        rows = expected_rows(submission["windows"], fmt, len(scored or classes))
        problems = check_submission(submission["files"][fmt], fmt, classes, rows, scored)
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={"expected_rows": rows, "problems": md_table(pl.DataFrame({"problem": problems}, schema={"problem": pl.String}))},
        )

    return check


submission_schema_checks = [_schema_check(fmt) for fmt in FORMAT_FILES]
