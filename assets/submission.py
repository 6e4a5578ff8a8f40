"""Submission: the fold ensemble on the soundscapes, in every BirdCLEF format, shaped by the
dataset's own files (its year's format, sample_submission.csv's columns, 2022's test.csv rows);
and the validation on labelled soundscapes (2021's train soundscapes, the demo's test set).

A dataset without a soundscape folder has nothing to submit on: the asset then skips its
output (`output_required=False`), records why and how to predict on other audio as an
observation of the asset (and in the log), and its checks are skipped with it; the run stays
green, and evaluation and the registered model are unaffected. The soundscape validation
skips the same way on a dataset without labelled soundscapes.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from birdpipe import tracking as mlf
from birdpipe.config import PipelineConfig
from birdpipe.data.layout import SOUNDSCAPE_DIRS
from birdpipe.data.soundscape_labels import read_soundscape_labels
from birdpipe.evaluation.thresholds import Thresholds
from birdpipe.inference.formats import check_submission, expected_rows, layouts, load_scored_birds, raven_tables, window_row_id
from birdpipe.inference.soundscapes import expected_windows, score_formats, submission_template, write_all_formats
from birdpipe.paths import list_audio

from .meta import md_table, mlflow_links
from .resources import Dataset, Tracking, lineage_tags

GROUP = "submission"


def build(cfg: PipelineConfig, blended: bool = False) -> list:
    """`blended`: the submission comes from the tuned blend (`ensemble`), not the SED folds alone."""
    sub_cfg = cfg.submission
    submission_version = cfg.stage_version("submission")
    validation_version = cfg.stage_version("soundscape_validation")
    model_in = {"model": dg.AssetIn("ensemble" if blended else "trained_model")}

    def load_model(model: dict):
        from birdpipe.inference.blended import load_blend_model
        from birdpipe.inference.ensemble import load_ensemble

        if blended:
            return load_blend_model(Path(model["model_dir"]), use_onnx=sub_cfg.use_onnx)
        checkpoints = [Path(model[k]["best_checkpoint"]) for k in sorted(model, key=int)]
        return load_ensemble(checkpoints, use_onnx=sub_cfg.use_onnx, combine=sub_cfg.ensemble)

    def predict(context: dg.AssetExecutionContext, ensemble, files: list[Path]):
        """Predictions of every window of `files`; each file not read whole is logged with its reason."""
        from birdpipe.inference.predict import predict_soundscapes

        predictions = predict_soundscapes(ensemble, files, ensemble.mel, sub_cfg, progress=False, skip_errors=True, log=context.log.info)
        for line in predictions.problems():
            context.log.warning(line)
        return predictions

    def skip(context: dg.AssetExecutionContext, reason: str) -> dg.AssetObservation:
        context.log.warning(reason)
        return dg.AssetObservation(asset_key=context.asset_key, metadata={"skipped": reason})

    @dg.asset(group_name=GROUP, code_version=submission_version, kinds={"onnx", "csv", "mlflow"}, output_required=False, ins=model_in)
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
        layout = dataset.layout(cfg.dataset)
        soundscape_dir = layout.soundscapes(sub_cfg.soundscape_dir)
        if soundscape_dir is None:
            trk = tracking.config_for(dataset, model="blend" if blended else "sed")
            yield skip(context, skipped_reason(dataset.root, f"models:/{trk.registered_model}@{trk.model_alias}"))
            return
        files = list_audio(soundscape_dir)
        ensemble = load_model(model)
        predictions = predict(context, ensemble, files)
        preds, by_file = predictions.windows, predictions.files
        out = dataset.work.stage("submission", submission_version)
        fmt_cfg = sub_cfg.replace(format=sub_cfg.format or layout.submission_format)
        scored = load_scored_birds(layout.scored_birds) if layout.scored_birds else None
        template = submission_template(layout)
        classes = template.classes(ensemble.classes)
        paths = write_all_formats(preds, classes, thresholds, fmt_cfg, out, scored, template)
        preds.write_parquet(out / "window_probabilities.parquet")
        by_file.write_csv(out / "files.csv")
        if sub_cfg.raven_tables:
            raven_tables(preds, ensemble.classes, thresholds, out / "raven", ensemble.mel)
        trk = tracking.config_for(dataset)
        with mlf.stage_run(trk, "submission", lineage_tags(context, dataset)) as run:
            mlf.log_artifacts(out)
        yield dg.Output(
            {
                "path": str(paths["submission"]),
                "files": {fmt: str(p) for fmt, p in paths.items()},
                "classes": classes,
                "scored_birds": scored,
                "template_rows": len(template.row_ids) if template.row_ids is not None else None,
                "windows": expected_windows(files, ensemble.mel.window_seconds),
            },
            metadata={
                "submission_csv": dg.MetadataValue.path(str(paths["submission"])),
                "format": fmt_cfg.format,
                "soundscapes": len(files),
                "rows": preds.height,
                "damaged": by_file.filter(pl.col("status") == "damaged").height,
                "skipped": predictions.skipped.height,
                "files_not_ok": md_table(by_file.filter(pl.col("status") != "ok")),
                "windows_on_silence": int(by_file["filled_windows"].sum()),
                "models": len(ensemble.members),
                "backend": "onnxruntime" if sub_cfg.use_onnx else "torch",
                **mlflow_links(trk, run.info.run_id, run.info.experiment_id),
            },
        )

    @dg.asset(group_name="evaluation", code_version=validation_version, kinds={"csv", "mlflow"}, output_required=False, ins=model_in)
    def soundscape_validation(
        context: dg.AssetExecutionContext,
        dataset: Dataset,
        tracking: Tracking,
        model: dict,
        thresholds: Thresholds,
    ) -> Iterator:
        """The model on the dataset's labelled soundscapes (2021's train soundscapes), every
        format scored with its years' metrics, beside the out-of-fold scores (skipped, with
        the reason, when the dataset has no labelled soundscapes)."""
        layout = dataset.layout(cfg.dataset)
        if layout.soundscape_labels is None:
            yield skip(context, f"soundscape validation skipped: {dataset.root} has no labelled soundscapes")
            return
        labels = read_soundscape_labels(layout.soundscape_labels, layout.labelled_soundscapes)
        stems = set(labels["soundscape_id"].to_list())
        files = [f for f in list_audio(layout.labelled_soundscapes) if f.stem in stems]
        ensemble = load_model(model)
        predictions = predict(context, ensemble, files)
        preds = predictions.windows.join(labels.select(window_row_id()), on="row_id", how="semi")
        out = dataset.work.stage("soundscape_validation", validation_version)
        scored = load_scored_birds(layout.scored_birds) if layout.scored_birds else None
        fmt_cfg = sub_cfg.replace(format=sub_cfg.format or layout.submission_format)
        paths = write_all_formats(preds, ensemble.classes, thresholds, fmt_cfg, out, scored)
        scores = score_formats(labels, paths, ensemble.classes, out, scored)
        metrics = {f"soundscape_{s.metric}": s.value for s in scores}
        trk = tracking.config_for(dataset)
        with mlf.stage_run(trk, "soundscape_validation", lineage_tags(context, dataset)) as run:
            mlf.log_metrics(metrics)
            mlf.log_artifacts(out)
        yield dg.Output(
            metrics,
            metadata={
                **metrics,
                "labels": dg.MetadataValue.path(str(layout.soundscape_labels)),
                "soundscapes": len(files),
                "windows": labels.height,
                "skipped": predictions.skipped.height,
                "year_format": fmt_cfg.format,
                "score_commands": [[str(s.solution), str(s.submission), s.metric] for s in scores],
                **mlflow_links(trk, run.info.run_id, run.info.experiment_id),
            },
        )

    def schema_check(fmt: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset=submission, name=f"submission_{fmt}_schema", description=f"The {fmt}-format file's schema.")
        def check(submission: dict) -> dg.AssetCheckResult:
            classes, scored = submission["classes"], submission["scored_birds"]
            rows = expected_rows(submission["windows"], fmt, len(scored or classes), submission["template_rows"])
            problems = check_submission(submission["files"][fmt], fmt, classes, rows, scored)
            return dg.AssetCheckResult(
                passed=not problems,
                metadata={"expected_rows": rows, "problems": md_table(pl.DataFrame({"problem": problems}, schema={"problem": pl.String}))},
            )

        return check

    return [submission, soundscape_validation, *(schema_check(fmt) for fmt in layouts())]


def skipped_reason(root: str | Path, model_uri: str) -> str:
    """Why there is no submission, and how to make one from the registered fold models."""
    folders = ", ".join(f"{d}/" for d in SOUNDSCAPE_DIRS)
    return (
        f"submission skipped: {root} has no soundscape folder ({folders}) to predict on. Training, evaluation and "
        f"the registered model are complete; predict on any folder of recordings with "
        f"`birdpipe predict --model {model_uri} --audio DIR --out submission.csv`"
    )
