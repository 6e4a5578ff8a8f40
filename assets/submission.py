"""Submission: the fold ensemble on the soundscapes, in every BirdCLEF format.

A dataset without a soundscape folder has nothing to submit on: the asset then skips its
output (`output_required=False`), records why and how to predict on other audio as an
observation of the asset (and in the log), and its checks are skipped with it; the run stays
green, and evaluation and the registered model are unaffected.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from birdpipe import tracking as mlf
from birdpipe.config import PipelineConfig
from birdpipe.evaluation.thresholds import Thresholds
from birdpipe.inference.formats import check_submission, expected_rows, layouts, load_scored_birds, raven_tables
from birdpipe.inference.soundscapes import expected_windows, find_labels, score_formats, write_all_formats
from birdpipe.paths import SOUNDSCAPE_DIRS, list_audio

from .meta import md_table
from .resources import Dataset, Tracking, lineage_tags

GROUP = "submission"


def build(cfg: PipelineConfig, blended: bool = False) -> list:
    """`blended`: the submission comes from the tuned blend (`ensemble`), not the SED folds alone."""
    sub_cfg = cfg.submission
    submission_version = cfg.stage_version("submission")

    @dg.asset(group_name=GROUP, code_version=submission_version, kinds={"onnx", "csv", "mlflow"}, output_required=False,
              ins={"model": dg.AssetIn("ensemble" if blended else "trained_model")})  # fmt: skip
    def submission(
        context: dg.AssetExecutionContext,
        dataset: Dataset,
        tracking: Tracking,
        model: dict,
        thresholds: Thresholds,
    ) -> Iterator:
        """The model's predictions per 5 s window of every soundscape (the blend of SED folds,
        BirdNET and heads when BirdNET is installed, else the SED fold ensemble), written in each
        format (skipped, with the reason, when the dataset has no soundscape folder)."""
        from birdpipe.inference.blended import load_blend_model
        from birdpipe.inference.ensemble import load_ensemble
        from birdpipe.inference.predict import predict_soundscapes

        soundscape_dir = dataset.layout.soundscapes(sub_cfg.soundscape_dir)
        if soundscape_dir is None:
            trk = tracking.config_for(dataset, model="blend" if blended else "sed")
            reason = skipped_reason(dataset.root, f"models:/{trk.registered_model}@{trk.model_alias}")
            context.log.warning(reason)
            yield dg.AssetObservation(asset_key=context.asset_key, metadata={"skipped": reason})
            return
        files = list_audio(soundscape_dir)
        if blended:
            ensemble = load_blend_model(Path(model["model_dir"]), use_onnx=sub_cfg.use_onnx)
        else:
            checkpoints = [Path(model[k]["best_checkpoint"]) for k in sorted(model, key=int)]
            ensemble = load_ensemble(checkpoints, use_onnx=sub_cfg.use_onnx, combine=sub_cfg.ensemble)
        predictions = predict_soundscapes(ensemble, files, ensemble.mel, sub_cfg, progress=False, skip_errors=True)
        preds, by_file = predictions.windows, predictions.files
        for path, status, reason, _, filled in by_file.filter(pl.col("status") != "ok").iter_rows():
            context.log.warning(f"{status} {path}: {reason}" + (f" ({filled} window(s) predicted on silence)" if filled else ""))
        out = dataset.work.stage("submission", submission_version)
        scored = load_scored_birds(dataset.layout.root / sub_cfg.scored_birds) if sub_cfg.scored_birds else None
        paths = write_all_formats(preds, ensemble.classes, thresholds, sub_cfg, out, scored)
        preds.write_parquet(out / "window_probabilities.parquet")
        by_file.write_csv(out / "files.csv")
        if sub_cfg.raven_tables:
            raven_tables(preds, ensemble.classes, thresholds, out / "raven", ensemble.mel)
        labels = find_labels(dataset.layout.root)
        scores = score_formats(labels, paths, ensemble.classes, out, scored) if labels else []
        with mlf.stage_run(tracking.config_for(dataset), "submission", lineage_tags(context, dataset)) as run:
            mlf.log_metrics({f"soundscape_{s.metric}": s.value for s in scores})
            mlf.log_artifacts(out)
        yield dg.Output(
            {
                "path": str(paths["submission"]),
                "files": {fmt: str(p) for fmt, p in paths.items()},
                "classes": ensemble.classes,
                "scored_birds": scored,
                "windows": expected_windows(files, ensemble.mel.window_seconds),
            },
            metadata={
                "submission_csv": dg.MetadataValue.path(str(paths["submission"])),
                "format": sub_cfg.format,
                "soundscapes": len(files),
                "rows": preds.height,
                "damaged": by_file.filter(pl.col("status") == "damaged").height,
                "skipped": predictions.skipped.height,
                "files_not_ok": md_table(by_file.filter(pl.col("status") != "ok")),
                "windows_on_silence": int(by_file["filled_windows"].sum()),
                "models": len(ensemble.members),
                "backend": "onnxruntime" if sub_cfg.use_onnx else "torch",
                **{f"soundscape_{s.metric}": s.value for s in scores},
                "score_commands": [[str(s.solution), str(s.submission), s.metric] for s in scores],
                "mlflow_run_id": run.info.run_id,
            },
        )

    def schema_check(fmt: str) -> dg.AssetChecksDefinition:
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

    return [submission, *(schema_check(fmt) for fmt in layouts())]


def skipped_reason(root: str | Path, model_uri: str) -> str:
    """Why there is no submission, and how to make one from the registered fold models."""
    folders = ", ".join(f"{d}/" for d in SOUNDSCAPE_DIRS)
    return (
        f"submission skipped: {root} has no soundscape folder ({folders}) to predict on. Training, evaluation and "
        f"the registered model are complete; predict on any folder of recordings with "
        f"`birdpipe predict --model {model_uri} --audio DIR --out submission.csv`"
    )
