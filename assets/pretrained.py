"""Pretrained bird model members: BirdNET embeddings, heads on them, and the tuned blend."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from birdpipe import tracking as mlf
from birdpipe.config import PipelineConfig
from birdpipe.models.birdnet import BirdnetFeatures, BirdnetFiles, find_birdnet, onnx_model

from .meta import cache_metadata, md_table
from .resources import Dataset, Tracking, lineage_tags
from .training import fold_partitions


def birdnet_files(cfg: PipelineConfig) -> BirdnetFiles | None:
    """BirdNET's files when the config uses it; None when it is off, or "auto" and not installed."""
    if cfg.birdnet.enabled is False:
        return None
    try:
        return find_birdnet(cfg.birdnet.model, cfg.birdnet.labels)
    except FileNotFoundError:
        if cfg.birdnet.enabled == "auto":
            return None
        raise


def featurizer(cfg: PipelineConfig, files: BirdnetFiles) -> BirdnetFeatures:
    b = cfg.birdnet
    return BirdnetFeatures(str(onnx_model(files)), files.digest, b.hop_seconds, b.dtype, b.batch_size, b.threads, b.device)


def build(cfg: PipelineConfig, files: BirdnetFiles) -> list:
    from .features import cache_partitions

    partitions = cache_partitions(cfg)
    heads_version = cfg.stage_version("embedding_heads")
    ensemble_version = cfg.stage_version("ensemble")

    @dg.asset(group_name="features", code_version=cfg.stage_version("birdnet_embeddings") + files.digest[:6],
              partitions_def=partitions, kinds={"onnx", "parquet"})  # fmt: skip
    def birdnet_embeddings(
        context: dg.AssetExecutionContext, dataset: Dataset, train_metadata: pl.DataFrame, audio_manifest: pl.DataFrame
    ) -> dg.Output[str]:
        """BirdNET V2.4 embeddings of every recording's 3 s chunks (48 kHz), incremental like the mel cache."""
        from birdpipe.features.cache import build_window_cache

        features = featurizer(cfg, files)
        readable = audio_manifest.filter(pl.col("readable")).select("filename")
        report = build_window_cache(
            train_metadata.join(readable, on="filename", how="semi"), dataset.layout(cfg.dataset).audio_dir,
            dataset.birdnet_dir(features.version()), features, cfg.cache,
            partition=(int(context.partition_key), cfg.cache.partitions) if partitions else None, log=context.log.info,
        )  # fmt: skip
        return dg.Output(
            str(report.cache_dir),
            metadata={**cache_metadata(report), "birdnet_weights_sha256": files.digest},
            data_version=dg.DataVersion(report.digest),
        )

    @dg.asset(group_name="training", code_version=heads_version, deps=[birdnet_embeddings], kinds={"pytorch", "mlflow"})
    def embedding_heads(
        context: dg.AssetExecutionContext, dataset: Dataset, tracking: Tracking,
        folds: pl.DataFrame, train_metadata: pl.DataFrame, taxonomy: pl.DataFrame,
    ) -> dg.Output[dict]:  # fmt: skip
        """Logistic and MLP heads on BirdNET embeddings (one 5 s window = its chunks' mean), one per fold."""
        from birdpipe.features.reader import WindowCacheReader
        from birdpipe.training.heads import train_fold_heads

        reader = WindowCacheReader(dataset.birdnet_dir(featurizer(cfg, files).version()))
        keys, x = _window_embeddings(reader, cfg)
        classes = taxonomy["primary_label"].to_list()
        out = dataset.work.stage("embedding_heads", heads_version)
        fold_ids = [int(k) for k in fold_partitions(cfg).get_partition_keys()]
        heads = {}
        tags = lineage_tags(context, dataset) | {"birdpipe.birdnet_sha256": files.digest, "birdpipe.embeddings_digest": reader.digest}
        for fold in fold_ids:
            heads[fold] = {k: str(p) for k, p in train_fold_heads(x, keys, folds, train_metadata, classes, fold, cfg.heads, out).items()}
            with mlf.stage_run(tracking.config_for(dataset), f"heads-fold-{fold}", tags | {"birdpipe.fold": str(fold)}):
                mlf.log_params(cfg.heads, "heads.")
                mlf.log_params({"fold": fold, "windows": int(len(x))})
                mlf.log_artifacts(out / f"fold-{fold}", "heads")
            context.log.info(f"fold {fold}: heads {', '.join(cfg.heads.kinds)} trained")
        return dg.Output({"heads": heads, "windows": int(len(x))}, metadata={"folds": len(fold_ids), "windows": int(len(x)),
                                                                           "heads": ", ".join(cfg.heads.kinds)})  # fmt: skip

    @dg.asset(group_name="evaluation", code_version=ensemble_version, deps=[birdnet_embeddings], kinds={"mlflow"})
    def ensemble(
        context: dg.AssetExecutionContext, dataset: Dataset, tracking: Tracking, oof_predictions: str,
        embedding_heads: dict, trained_model: dict[str, dict], folds: pl.DataFrame, train_metadata: pl.DataFrame,
        taxonomy: pl.DataFrame,
    ) -> dg.Output[dict]:  # fmt: skip
        """Every member's out-of-fold scores side by side, and the blend tuned on them (registered in MLflow)."""
        from birdpipe.evaluation.blend import Blend, scores, tune
        from birdpipe.evaluation.members import birdnet_windows, blended_windows, head_oof, oof_set
        from birdpipe.inference.blended import save_blend_model
        from birdpipe.evaluation.oof import class_columns
        from birdpipe.features.reader import WindowCacheReader
        from birdpipe.models.birdnet import BirdnetClassifier, load_labels, map_species

        classes = taxonomy["primary_label"].to_list()
        reader = WindowCacheReader(dataset.birdnet_dir(featurizer(cfg, files).version()))
        species = map_species(taxonomy, load_labels(files.labels), Path(cfg.birdnet.mapping) if cfg.birdnet.mapping else None)
        windows = reader.windows
        emb = reader.array(windows["row"].to_numpy(), "embedding")
        keys, x, zero_shot = birdnet_windows(windows["filename"].to_list(), windows["start_seconds"].to_numpy(), emb,
                                             cfg.mel.window_seconds, BirdnetClassifier.from_onnx(onnx_model(files)), species)  # fmt: skip
        sed = pl.read_parquet(oof_predictions)
        members = {"sed": (sed.select("filename", "window_index"), sed.select(class_columns(sed)).to_numpy())}
        members["birdnet"] = (keys, zero_shot)
        for kind in cfg.heads.kinds:
            hk, hp = head_oof(keys, x, folds, {int(f): p[kind] for f, p in embedding_heads["heads"].items()})
            members[kind] = (hk.select("filename", "window_index"), hp)
        members = {m: v for m, v in members.items() if m in cfg.blend.members}
        oof = oof_set(members, folds, train_metadata, classes)
        blend, tuned = tune(oof, list(members), cfg.blend.weight_grid, cfg.blend.shrink_grid)
        counts = folds.group_by("primary_label").len()
        blend = Blend(blend.weights, blend.shrink, [int(dict(counts.iter_rows()).get(c, 0)) for c in classes], classes)
        table = pl.DataFrame([{"member": m, **scores(oof, oof.probs[m])} for m in members]
                             + [{"member": "blend", **scores(oof, oof.blended(blend))}])  # fmt: skip
        out = dataset.work.stage("ensemble", ensemble_version)
        out.mkdir(parents=True, exist_ok=True)
        table.write_csv(out / "members.csv")
        blended_windows(members, blend, folds, train_metadata, classes).write_parquet(out / "oof_blend.parquet")
        heads = {kind: {int(f): p[kind] for f, p in embedding_heads["heads"].items()} for kind in cfg.heads.kinds}
        sed = {int(k): v["best_checkpoint"] for k, v in trained_model.items()}
        model_dir = save_blend_model(out / "model", blend, files.digest, cfg.birdnet.hop_seconds, species.index, heads, sed)
        tags = lineage_tags(context, dataset) | {"birdpipe.birdnet_sha256": files.digest, "birdpipe.embeddings_digest": reader.digest}
        trk = tracking.config_for(dataset, model="blend")
        with mlf.stage_run(trk, "ensemble", tags) as run:
            mlf.log_params({"blend.weights": blend.weights, "blend.shrink": blend.shrink, "birdnet.unmatched": len(species.unmatched)})
            mlf.log_metrics({f"{r['member']}_{k}": v for r in table.iter_rows(named=True) for k, v in r.items() if k != "member"})
            mlf.log_artifact(out / "members.csv", "ensemble")
            _, version = mlf.log_folder_model(model_dir, "birdpipe.inference.blended:load_blend_model", trk, (trk.model_alias,),
                                              {k: v for k, v in tags.items() if k.startswith("birdpipe.")})  # fmt: skip
        blend_row = table.filter(pl.col("member") == "blend").row(0, named=True)
        context.log.info("members (recording level, out of fold):\n" + str(table))
        return dg.Output(
            {"model_dir": str(model_dir), "oof_parquet": str(out / "oof_blend.parquet"), "birdnet_sha256": files.digest,
             "unmatched": species.unmatched},  # fmt: skip
            metadata={
                "members": md_table(table),
                **{f"blend_{k}": v for k, v in blend_row.items() if k != "member"},
                "tuned_file_auc_fold_mean": tuned,
                "weights": dg.MetadataValue.json(blend.weights),
                "shrink": blend.shrink,
                "birdnet_species": int(species.matched.sum()),
                "birdnet_unmatched": dg.MetadataValue.json(species.unmatched),
                "mlflow_run_id": run.info.run_id,
                "registered_model": f"models:/{trk.registered_model}/{version}" if version else "",
            },
        )

    return [birdnet_embeddings, embedding_heads, ensemble]


def _window_embeddings(reader, cfg: PipelineConfig) -> tuple[pl.DataFrame, np.ndarray]:
    """Mean BirdNET embedding per 5 s window."""
    from birdpipe.features.windows import pool_windows

    windows = reader.windows
    emb = reader.array(windows["row"].to_numpy(), "embedding")
    return pool_windows(windows["filename"].to_list(), windows["start_seconds"].to_numpy(), emb, cfg.mel.window_seconds, "mean")
