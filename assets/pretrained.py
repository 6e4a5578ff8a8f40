"""Pretrained bird model members: BirdNET embeddings, heads on them, and the tuned blend."""

from functools import partial
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from birdpipe import tracking as mlf
from birdpipe.config import PipelineConfig
from birdpipe.evaluation.members import BirdnetWindows
from birdpipe.models.birdnet import (
    BirdnetClassifier, BirdnetFeatures, BirdnetFiles, SpeciesMap, find_birdnet, load_labels, map_species, onnx_model,
)  # fmt: skip

from .meta import cache_metadata, md_table, mlflow_links, png, run_list
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


def birdnet_scores_version(cfg: PipelineConfig, files: BirdnetFiles) -> str:
    return cfg.stage_version("birdnet_scores") + files.digest[:6]


def species_map(cfg: PipelineConfig, files: BirdnetFiles, taxonomy: pl.DataFrame) -> SpeciesMap:
    return map_species(taxonomy, load_labels(files.labels), Path(cfg.birdnet.mapping) if cfg.birdnet.mapping else None)


def build(cfg: PipelineConfig, files: BirdnetFiles) -> list:
    from .features import cache_partitions

    partitions = cache_partitions(cfg)
    heads_version = cfg.stage_version("embedding_heads")
    ensemble_version = cfg.stage_version("ensemble")
    scores_version = birdnet_scores_version(cfg, files)
    soundscapes_version = cfg.stage_version("soundscape_embeddings") + files.digest[:6]
    pseudo_version = cfg.stage_version("pseudo_labels") + files.digest[:6]
    #: The heads the blend uses: the best noisy-student round's, or the heads trained on labels alone.
    heads_asset = "pseudo_labels" if cfg.pseudo.rounds else "embedding_heads"

    def windows(dataset: Dataset, taxonomy: pl.DataFrame, cache_dir: Path | None = None) -> BirdnetWindows:
        """BirdNET per 5 s window of the training recordings' embeddings cache (or of `cache_dir`)."""
        from birdpipe.evaluation.members import cached_birdnet_windows
        from birdpipe.features.reader import WindowCacheReader

        reader = WindowCacheReader(cache_dir or dataset.birdnet_dir(featurizer(cfg, files).version()))
        classifier = partial(BirdnetClassifier.from_onnx, onnx_model(files))  # loaded only when not stored yet
        return cached_birdnet_windows(reader, cfg.mel.window_seconds, classifier, species_map(cfg, files, taxonomy))

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
        w = windows(dataset, taxonomy)
        keys, x = w.keys, w.embedding
        classes = taxonomy["primary_label"].to_list()
        out = dataset.work.stage("embedding_heads", heads_version)
        fold_ids = [int(k) for k in fold_partitions(cfg).get_partition_keys()]
        heads, runs = {}, {}
        trk = tracking.config_for(dataset)
        tags = lineage_tags(context, dataset) | {"birdpipe.birdnet_sha256": files.digest, "birdpipe.embeddings_digest": reader.digest}
        for fold in fold_ids:
            heads[fold] = {k: str(p) for k, p in train_fold_heads(x, keys, folds, train_metadata, classes, fold, cfg.heads, out).items()}
            with mlf.stage_run(trk, f"heads-fold-{fold}", tags | {"birdpipe.fold": str(fold)}) as run:
                mlf.log_params(cfg.heads, "heads.")
                mlf.log_params({"fold": fold, "windows": int(len(x))})
                mlf.log_artifacts(out / f"fold-{fold}", "heads")
            runs[f"fold {fold}"] = mlf.run_url(trk, run.info.run_id, run.info.experiment_id)
            context.log.info(f"fold {fold}: heads {', '.join(cfg.heads.kinds)} trained")
        return dg.Output({"heads": heads, "windows": int(len(x))}, metadata={"folds": len(fold_ids), "windows": int(len(x)),
                                                                           "heads": ", ".join(cfg.heads.kinds),
                                                                           "mlflow_runs": run_list(runs)})  # fmt: skip

    @dg.asset(group_name="features", code_version=scores_version, deps=[birdnet_embeddings], kinds={"onnx", "parquet"})
    def birdnet_scores(context: dg.AssetExecutionContext, dataset: Dataset, taxonomy: pl.DataFrame) -> dg.Output[str]:
        """BirdNET V2.4 zero-shot probabilities of the dataset's species per 5 s window (max over its
        3 s chunks): an ensemble member, and the SED's teacher when `[train.distill]` is on."""
        from birdpipe.paths import atomic_write

        frame = windows(dataset, taxonomy).zero_shot_frame(taxonomy["primary_label"].to_list())
        path = atomic_write(dataset.birdnet_scores(scores_version), frame.write_parquet)
        species = species_map(cfg, files, taxonomy)
        return dg.Output(
            str(path),
            metadata={"windows": frame.height, "birdnet_species": int(species.matched.sum()),
                      "birdnet_unmatched": dg.MetadataValue.json(species.unmatched),
                      "scores_parquet": dg.MetadataValue.path(str(path))},  # fmt: skip
            data_version=dg.DataVersion(str(frame.hash_rows().sum())),
        )

    @dg.asset(group_name="evaluation", code_version=ensemble_version, deps=[birdnet_embeddings, birdnet_scores],
              ins={"heads": dg.AssetIn(heads_asset)}, kinds={"mlflow"})  # fmt: skip
    def ensemble(
        context: dg.AssetExecutionContext, dataset: Dataset, tracking: Tracking, oof_predictions: str,
        heads: dict, trained_model: dict[str, dict], folds: pl.DataFrame, train_metadata: pl.DataFrame,
        taxonomy: pl.DataFrame,
    ) -> dg.Output[dict]:  # fmt: skip
        """Every member's out-of-fold scores side by side, and the blend tuned on them (registered in MLflow)."""
        from birdpipe.evaluation.blend import Blend, scores, tune
        from birdpipe.evaluation.members import blended_windows, head_oof, oof_set
        from birdpipe.inference.blended import save_blend_model
        from birdpipe.evaluation.oof import class_columns
        from birdpipe.evaluation.plots import plot_members
        from birdpipe.features.reader import WindowCacheReader

        classes = taxonomy["primary_label"].to_list()
        reader = WindowCacheReader(dataset.birdnet_dir(featurizer(cfg, files).version()))
        species = species_map(cfg, files, taxonomy)
        w = windows(dataset, taxonomy)
        keys, x = w.keys, w.embedding
        sed = pl.read_parquet(oof_predictions)
        members = {"sed": (sed.select("filename", "window_index"), sed.select(class_columns(sed)).to_numpy())}
        members["birdnet"] = (keys, w.zero_shot)
        for kind in cfg.heads.kinds:
            hk, hp = head_oof(keys, x, folds, {int(f): p[kind] for f, p in heads["heads"].items()})
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
        side_by_side = plot_members(table, out / "members.png")
        blended_windows(members, blend, folds, train_metadata, classes).write_parquet(out / "oof_blend.parquet")
        by_kind = {kind: {int(f): p[kind] for f, p in heads["heads"].items()} for kind in cfg.heads.kinds}
        sed = {int(k): v["best_checkpoint"] for k, v in trained_model.items()}
        model_dir = save_blend_model(out / "model", blend, files.digest, cfg.birdnet.hop_seconds, species.index, by_kind, sed)
        tags = lineage_tags(context, dataset) | {"birdpipe.birdnet_sha256": files.digest, "birdpipe.embeddings_digest": reader.digest}
        trk = tracking.config_for(dataset, model="blend")
        with mlf.stage_run(trk, "ensemble", tags) as run:
            mlf.log_params({"blend.weights": blend.weights, "blend.shrink": blend.shrink, "birdnet.unmatched": len(species.unmatched)})
            mlf.log_metrics({f"{r['member']}_{k}": v for r in table.iter_rows(named=True) for k, v in r.items() if k != "member"})
            mlf.log_artifact(out / "members.csv", "ensemble")
            mlf.log_artifact(side_by_side, "ensemble")
            description = (f"Blend of {', '.join(members)} (weights {blend.weights}, shrink {blend.shrink}) tuned out of fold "
                           f"on {dataset.root}: {folds.height} recordings in {cfg.folds.n_folds} folds, BirdNET weights "
                           f"{files.digest[:12]}. Config version {ensemble_version}.")  # fmt: skip
            _, version = mlf.log_folder_model(model_dir, "birdpipe.inference.blended:load_blend_model", trk, (trk.model_alias,),
                                              {k: v for k, v in tags.items() if k.startswith("birdpipe.")}, description)  # fmt: skip
        blend_row = table.filter(pl.col("member") == "blend").row(0, named=True)
        context.log.info("members (recording level, out of fold):\n" + str(table))
        return dg.Output(
            {"model_dir": str(model_dir), "oof_parquet": str(out / "oof_blend.parquet"), "birdnet_sha256": files.digest,
             "unmatched": species.unmatched},  # fmt: skip
            metadata={
                "members": md_table(table),
                "members_plot": png(side_by_side),
                **{f"blend_{k}": v for k, v in blend_row.items() if k != "member"},
                "tuned_file_auc_fold_mean": tuned,
                "weights": dg.MetadataValue.json(blend.weights),
                "shrink": blend.shrink,
                "birdnet_species": int(species.matched.sum()),
                "birdnet_unmatched": dg.MetadataValue.json(species.unmatched),
                **mlflow_links(trk, run.info.run_id, run.info.experiment_id, version),
            },
        )

    def unlabeled_dirs(dataset: Dataset) -> tuple[str, ...]:
        from birdpipe.training.pseudo import pseudo_dirs

        return pseudo_dirs(dataset.layout(cfg.dataset), cfg.pseudo.dirs, bool(cfg.dataset.unlabeled_soundscapes))

    def pseudo_assets() -> list:
        @dg.asset(group_name="features", code_version=soundscapes_version, kinds={"onnx", "parquet"})
        def soundscape_embeddings(context: dg.AssetExecutionContext, dataset: Dataset) -> dg.Output[str]:
            """BirdNET embeddings of the unlabeled soundscapes (`[pseudo] dirs` as the dataset's layout sees
            them), which pseudo-labelling scores; incremental and quarantining like the other caches."""
            from birdpipe.features.cache import build_window_cache
            from birdpipe.training.pseudo import unlabeled_recordings

            layout = dataset.layout(cfg.dataset)
            recordings = unlabeled_recordings(layout.root, unlabeled_dirs(dataset))
            features = featurizer(cfg, files)
            report = build_window_cache(recordings, layout.root, dataset.soundscape_birdnet_dir(features.version()),
                                        features, cfg.cache, log=context.log.info)  # fmt: skip
            folders = sorted({f.split("/")[0] for f in recordings["filename"]})
            return dg.Output(
                str(report.cache_dir),
                metadata={**cache_metadata(report), "folders": ", ".join(folders) or "none found"},
                data_version=dg.DataVersion(report.digest),
            )

        @dg.asset(group_name="training", code_version=pseudo_version, deps=[birdnet_scores], kinds={"pytorch", "mlflow"})
        def pseudo_labels(
            context: dg.AssetExecutionContext, dataset: Dataset, tracking: Tracking, embedding_heads: dict,
            soundscape_embeddings: str, folds: pl.DataFrame, train_metadata: pl.DataFrame, taxonomy: pl.DataFrame,
        ) -> dg.Output[dict]:  # fmt: skip
            """Noisy-student rounds: the blend of BirdNET and each fold's heads labels the soundscapes' windows,
            the heads retrain on labels + confident pseudo-labels; every round scored out of fold, the best
            round's heads go to the ensemble."""
            from birdpipe.paths import atomic_write
            from birdpipe.training.pseudo import best_round, pseudo_label_frame, run_rounds

            classes = taxonomy["primary_label"].to_list()
            train, sound = windows(dataset, taxonomy), windows(dataset, taxonomy, Path(soundscape_embeddings))
            out = dataset.work.stage("pseudo_labels", pseudo_version)
            heads0 = {int(f): {k: Path(p) for k, p in h.items()} for f, h in embedding_heads["heads"].items()}
            if not sound.keys.height:
                context.log.warning(f"no soundscape windows to pseudo-label ({', '.join(unlabeled_dirs(dataset))} "
                                    f"under {dataset.root}); the heads trained on labels alone go to the ensemble")  # fmt: skip
            rounds = run_rounds(train, sound, folds, train_metadata, classes, heads0, cfg.blend.members, cfg.pseudo, cfg.heads,
                                cfg.blend.weight_grid, cfg.blend.shrink_grid, out, log=context.log.info) if sound.keys.height else []  # fmt: skip
            labels = atomic_write(out / "pseudo_labels.parquet", pseudo_label_frame(rounds, sound, classes).write_parquet)
            tags = lineage_tags(context, dataset) | {"birdpipe.birdnet_sha256": files.digest}
            trk, runs = tracking.config_for(dataset), {}
            for r in rounds:
                with mlf.stage_run(trk, f"pseudo-round-{r.round}", tags | {"birdpipe.round": str(r.round)}) as run:
                    mlf.log_params(cfg.pseudo, "pseudo.")
                    mlf.log_metrics({k: v for k, v in r.row().items() if isinstance(v, (int, float))})
                runs[f"round {r.round}"] = mlf.run_url(trk, run.info.run_id, run.info.experiment_id)
            best = best_round(rounds) if rounds else None
            table = pl.DataFrame([r.row() for r in rounds]) if rounds else pl.DataFrame({"round": []})
            heads = {f: {k: str(p) for k, p in h.items()} for f, h in (best.heads if best else heads0).items()}
            return dg.Output(
                {"heads": heads, "round": best.round if best else 0, "labels_parquet": str(labels)},
                metadata={"rounds": md_table(table), "best_round": best.round if best else 0,
                          "soundscape_windows": sound.keys.height, "labels_parquet": dg.MetadataValue.path(str(labels)),
                          "mlflow_runs": run_list(runs)},  # fmt: skip
            )

        return [soundscape_embeddings, pseudo_labels]

    return [birdnet_embeddings, birdnet_scores, embedding_heads, ensemble] + (pseudo_assets() if cfg.pseudo.rounds else [])
