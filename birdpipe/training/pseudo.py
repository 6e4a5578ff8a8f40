"""Noisy-student pseudo-labelling of unlabeled soundscapes (the BirdCLEF 2025 winners' recipe).

Focal recordings are few and unlike the soundscapes a submission scores; unlabeled soundscapes
are plentiful. Each round, a teacher labels every soundscape window, the confident windows join
the training set with the teacher's soft scores as targets, and students (the embedding heads,
retrained with dropout and embedding mixup: the "noise") replace the teacher's heads.

The teacher of fold k is the blend of BirdNET zero-shot and fold k's heads, members that never
saw fold k's recordings: so the students' out-of-fold scores stay honest, and every round is
scored like round 0 (the heads without pseudo-labels). The blend weights are retuned on the
out-of-fold predictions each round. The SED CNNs neither teach nor learn here (their teacher
would need the soundscapes' mels and a retraining per round).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.layout import DatasetLayout
from birdpipe.evaluation.blend import Blend, fold_counts, scores, tune
from birdpipe.evaluation.members import BirdnetWindows, head_oof, oof_set
from birdpipe.models.heads import Head
from birdpipe.paths import list_audio
from birdpipe.training.config import HeadConfig, PseudoLabelConfig
from birdpipe.training.heads import train_fold_heads

#: fold -> head kind -> saved head.
FoldHeads = dict[int, dict[str, Path]]


@dataclass(frozen=True)
class PseudoRound:
    round: int
    heads: FoldHeads
    blend: Blend
    #: Out-of-fold scores of the tuned blend of BirdNET and this round's heads (`evaluation.blend.scores`).
    scores: dict[str, float]
    #: Per fold: (which soundscape windows trained this round's students, their soft targets).
    labels: dict[int, tuple[np.ndarray, np.ndarray]]

    @property
    def pseudo_windows(self) -> dict[int, int]:
        return {fold: int(mask.sum()) for fold, (mask, _) in self.labels.items()}

    def row(self) -> dict[str, float | int | str]:
        return {"round": self.round, "pseudo_windows": int(np.mean(list(self.pseudo_windows.values()) or [0])),
                "weights": str(self.blend.weights), "shrink": self.blend.shrink, **self.scores}  # fmt: skip


def pseudo_targets(teacher: np.ndarray, cfg: PseudoLabelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the windows that join training, their soft targets) from teacher probabilities."""
    confident = np.nan_to_num(teacher, nan=0.0).max(axis=1) >= cfg.min_confidence
    return confident, np.nan_to_num(teacher[confident], nan=0.0) ** cfg.power


def run_rounds(
    train: BirdnetWindows, soundscapes: BirdnetWindows, folds: pl.DataFrame, metadata: pl.DataFrame, classes: list[str],
    heads0: FoldHeads, members: tuple[str, ...], cfg: PseudoLabelConfig, heads_cfg: HeadConfig,
    weight_grid: tuple[float, ...], shrink_grid: tuple[float, ...], out_dir: Path,
    log: Callable[[str], None] = print,
) -> list[PseudoRound]:  # fmt: skip
    """Round 0 (the given heads) and `cfg.rounds` noisy-student rounds, each scored out of fold."""
    members = tuple(m for m in members if m == "birdnet" or m in heads_cfg.kinds)
    rounds = [_score(0, heads0, {}, train, folds, metadata, classes, members, weight_grid, shrink_grid)]
    log(f"round 0 (no pseudo-labels): {_summary(rounds[0])}")
    for r in range(1, cfg.rounds + 1):
        teacher, heads, labels = rounds[-1], {}, {}
        for fold, by_kind in teacher.heads.items():
            probs = _member_probs(soundscapes, by_kind, members)
            counts = fold_counts(folds, [fold], classes)[0]  # fold k's training recordings per species
            mask, y = pseudo_targets(teacher.blend.apply(probs, counts), cfg)
            labels[fold] = (mask, y)
            extra = (soundscapes.embedding[mask], y, np.full(int(mask.sum()), cfg.weight, np.float32))
            heads[fold] = train_fold_heads(train.embedding, train.keys, folds, metadata, classes, fold, heads_cfg,
                                           out_dir / f"round-{r}", extra)  # fmt: skip
        rounds.append(_score(r, heads, labels, train, folds, metadata, classes, members, weight_grid, shrink_grid))
        log(f"round {r}: {_summary(rounds[-1])}")
    return rounds


def pseudo_dirs(layout: DatasetLayout, dirs: Sequence[str], named_unlabeled: bool) -> tuple[str, ...]:
    """`dirs` (`[pseudo] dirs`) less the folder the layout knows as labelled soundscapes
    (validation data, also when `[dataset]` names it), plus the layout's unlabeled folder when
    `[dataset] unlabeled_soundscapes` names one of another name (`named_unlabeled`)."""
    kept = [d for d in dirs if layout.root / d != layout.labelled_soundscapes]
    if named_unlabeled and layout.unlabeled_soundscapes and layout.unlabeled_soundscapes.is_relative_to(layout.root):
        kept.append(layout.unlabeled_soundscapes.relative_to(layout.root).as_posix())
    return tuple(dict.fromkeys(kept))


def unlabeled_recordings(root: Path, dirs: tuple[str, ...]) -> pl.DataFrame:
    """Audio below the dataset's unlabeled soundscape folders, as cache input (`filename` relative
    to `root`, no labels). A `train_soundscapes` folder labelled by `train_soundscape_labels.csv`
    (BirdCLEF 2021) is validation data, not unlabeled, and is left out."""
    files = []
    for d in dirs:
        folder = Path(root) / d
        if folder.is_dir() and not (d == "train_soundscapes" and (Path(root) / "train_soundscape_labels.csv").exists()):
            files += [p.relative_to(root).as_posix() for p in list_audio(folder)]
    return pl.DataFrame({"filename": files, "primary_label": [""] * len(files), "secondary_labels": [[]] * len(files)},
                        schema={"filename": pl.String, "primary_label": pl.String, "secondary_labels": pl.List(pl.String)})  # fmt: skip


def pseudo_label_frame(rounds: list[PseudoRound], soundscapes: BirdnetWindows, classes: list[str]) -> pl.DataFrame:
    """Every round's pseudo-labels: `round, fold, filename, window_index` and one soft target per class."""
    schema = {"round": pl.Int64, "fold": pl.Int64, "filename": pl.String, "window_index": pl.Int64} | {c: pl.Float32 for c in classes}
    parts = [
        soundscapes.keys.filter(pl.Series(mask)).select(pl.lit(r.round).alias("round"), pl.lit(fold).alias("fold"), "filename",
                                                        "window_index").hstack(pl.DataFrame(y.astype(np.float32), schema=classes))
        for r in rounds for fold, (mask, y) in r.labels.items()
    ]  # fmt: skip
    return pl.concat([p.cast(schema) for p in parts]) if parts else pl.DataFrame(schema=schema)


def best_round(rounds: list[PseudoRound]) -> PseudoRound:
    """The round whose blend scores best out of fold (mean over folds of recording macro ROC-AUC);
    ties keep the earlier round."""
    return max(rounds, key=lambda r: (np.nan_to_num(r.scores["file_auc_fold_mean"], nan=-1.0), -r.round))


def _member_probs(windows: BirdnetWindows, heads: Mapping[str, Path], members: tuple[str, ...]) -> dict[str, np.ndarray]:
    probs = {m: Head.load(heads[m]).predict(windows.embedding) for m in members if m in heads}
    if "birdnet" in members:
        probs["birdnet"] = windows.zero_shot
    return probs


def _score(
    r: int, heads: FoldHeads, labels: dict[int, tuple[np.ndarray, np.ndarray]], train: BirdnetWindows, folds: pl.DataFrame, metadata: pl.DataFrame,
    classes: list[str], members: tuple[str, ...], weight_grid: tuple[float, ...], shrink_grid: tuple[float, ...],
) -> PseudoRound:  # fmt: skip
    windows = {"birdnet": (train.keys, train.zero_shot)} if "birdnet" in members else {}
    for kind in (m for m in members if m != "birdnet"):
        keys, probs = head_oof(train.keys, train.embedding, folds, {f: h[kind] for f, h in heads.items()})
        windows[kind] = (keys.select("filename", "window_index"), probs)
    oof = oof_set(windows, folds, metadata, classes)
    blend, _ = tune(oof, list(windows), weight_grid, shrink_grid)
    return PseudoRound(r, heads, blend, scores(oof, oof.blended(blend)), labels)


def _summary(r: PseudoRound) -> str:
    return (f"out-of-fold recording macro ROC-AUC {r.scores['file_auc_fold_mean']:.4f} (mean of folds), "
            f"pooled {r.scores['file_auc']:.4f}; {r.row()['pseudo_windows']} pseudo-labelled windows per fold")  # fmt: skip
