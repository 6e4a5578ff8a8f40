"""Evaluation: out-of-fold predictions and their scores, and thresholds calibrated on them."""

from typing import Any

import dagster as dg
import polars as pl

from birdpipe import tracking as mlf
from birdpipe.config import PipelineConfig
from birdpipe.data.folds import ALWAYS_TRAIN
from birdpipe.evaluation.metrics import oof_scores, per_species_table
from birdpipe.evaluation.thresholds import Thresholds, calibrate
from birdpipe.features.reader import MelCacheReader

from .meta import md_table, mlflow_links, png
from .resources import Dataset, Tracking, lineage_tags

GROUP = "evaluation"


def build(cfg: PipelineConfig, blended: bool = False) -> list:
    """`blended`: thresholds calibrate on the blend's out-of-fold windows (`ensemble`)."""
    oof_version = cfg.stage_version("oof_predictions")
    thresholds_version = cfg.stage_version("thresholds")

    @dg.asset(group_name=GROUP, code_version=oof_version, deps=["mel_cache"], kinds={"parquet", "mlflow"})
    def oof_predictions(
        context: dg.AssetExecutionContext,
        dataset: Dataset,
        tracking: Tracking,
        folds: pl.DataFrame,
        trained_model: dict[str, dict],
    ) -> dg.Output[str]:
        """Every window's prediction from the fold model that did not see it, scored with every year's metric."""
        from birdpipe.evaluation.oof import fold_scores, label_matrix, predict_out_of_fold, probability_matrix
        from birdpipe.evaluation.plots import plot_species_scores

        checkpoints = {int(k): v["best_checkpoint"] for k, v in trained_model.items()}
        cache = MelCacheReader(dataset.mel_cache_dir(cfg.mel))
        oof, classes = predict_out_of_fold(cache, folds, checkpoints, device=cfg.train.device, log=context.log.info)
        out = dataset.work.stage("oof_predictions", oof_version)
        out.mkdir(parents=True, exist_ok=True)
        oof.write_parquet(out / "oof.parquet")
        y_true, y_prob = label_matrix(oof, classes), probability_matrix(oof, classes)
        scores = oof_scores(y_true, y_prob, classes)
        per_fold = fold_scores(oof, classes)
        species = per_species_table(y_true, y_prob, classes)
        species.write_csv(out / "per_species.csv")
        bars = plot_species_scores(species, out / "per_species.png")
        trk = tracking.config_for(dataset)
        with mlf.stage_run(trk, "oof_predictions", lineage_tags(context, dataset)) as run:
            mlf.log_metrics({f"oof_{k}": v for k, v in scores.items()} | per_fold)
            mlf.log_artifacts(out)
        return dg.Output(
            str(out / "oof.parquet"),
            metadata={
                **scores,
                **{k: v for k, v in per_fold.items() if k.startswith("fold_mean_")},
                "windows": oof.height,
                "always_train_recordings": folds.filter(pl.col("fold") == ALWAYS_TRAIN).height,
                "per_species": md_table(species, 30),
                "per_species_plot": png(bars),
                **mlflow_links(trk, run.info.run_id, run.info.experiment_id),
                "oof_parquet": dg.MetadataValue.path(str(out / "oof.parquet")),
            },
        )

    @dg.asset(group_name=GROUP, code_version=thresholds_version, kinds={"mlflow"},
              ins={"predictions": dg.AssetIn("ensemble" if blended else "oof_predictions")})  # fmt: skip
    def thresholds(
        context: dg.AssetExecutionContext, dataset: Dataset, tracking: Tracking, predictions: Any
    ) -> dg.Output[Thresholds]:
        """Global and per-species thresholds maximising the configured F1-type metric out of fold."""
        from birdpipe.evaluation.oof import class_columns, label_matrix, probability_matrix
        from birdpipe.evaluation.plots import plot_threshold_curve

        oof = pl.read_parquet(predictions["oof_parquet"] if blended else predictions)
        classes = class_columns(oof)
        y_true, y_prob = label_matrix(oof, classes), probability_matrix(oof, classes)
        result = calibrate(y_true, y_prob, classes, cfg.thresholds)
        out = dataset.work.stage("thresholds", thresholds_version)
        result.to_json(out / "thresholds.json")
        plot = plot_threshold_curve(result, out / "threshold_curve.png")
        calibrated = oof_scores(y_true, y_prob, classes, threshold=result.vector(classes))
        trk = tracking.config_for(dataset)
        with mlf.stage_run(trk, "thresholds", lineage_tags(context, dataset)) as run:
            mlf.log_params(cfg.thresholds, "thresholds.")
            mlf.log_metrics(
                {"global_threshold": result.global_threshold, "global_score": result.global_score,
                 "per_species_score": result.per_species_score,
                 **{f"calibrated_{k}": calibrated[k] for k in ("birdclef2021", "birdclef2022")}}
            )  # fmt: skip
            mlf.log_artifacts(out)
        per_species = pl.DataFrame(
            {"species": classes, "threshold": result.vector(classes), "positives": [result.positives[c] for c in classes]}
        )
        return dg.Output(
            result,
            metadata={
                "objective": result.objective,
                "global_threshold": result.global_threshold,
                "global_score": result.global_score,
                "per_species_score": result.per_species_score,
                "calibrated_birdclef2021": calibrated["birdclef2021"],
                "calibrated_birdclef2022": calibrated["birdclef2022"],
                "curve": png(plot),
                "per_species": md_table(per_species, 30),
                **mlflow_links(trk, run.info.run_id, run.info.experiment_id),
                "thresholds_json": dg.MetadataValue.path(str(out / "thresholds.json")),
            },
        )

    return [oof_predictions, thresholds]
