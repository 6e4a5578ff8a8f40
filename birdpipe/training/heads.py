"""Training classifier heads on frozen embeddings (BirdNET's), one per fold.

Inputs are one embedding per 5 s window (the mean of its BirdNET chunks) with the
recording's labels as soft targets (primary 1, secondary `secondary_weight`), since focal
recordings are labelled per file. Training is full-batch-free minibatch AdamW on BCE with
optional mixup in embedding space (targets: max of both), seeded, on CPU: a head trains in
seconds. The result is a `models.heads.Head` (arrays), which inference runs in numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.labels import target_matrix
from birdpipe.models.heads import Head
from birdpipe.training.config import HeadConfig


def fit_head(kind: str, x: np.ndarray, y: np.ndarray, classes: list[str], cfg: HeadConfig, w: np.ndarray | None = None) -> Head:
    """A `kind` head ("logistic" or "mlp") fitted on embeddings `x [n, d]`, targets `y [n, C]`
    and sample weights `w [n]` (default 1)."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    d, n_classes = x.shape[1], y.shape[1]
    if kind == "logistic":
        model = nn.Sequential(nn.Linear(d, n_classes))
    else:
        model = nn.Sequential(nn.Dropout(cfg.dropout / 2), nn.Linear(d, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                              nn.Linear(cfg.hidden, n_classes))  # fmt: skip
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    wt = torch.from_numpy(np.ones(len(x), np.float32) if w is None else np.asarray(w, np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    for _ in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(xt))
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[i : i + cfg.batch_size])
            xb, yb, wb = xt[idx], yt[idx], wt[idx]
            if cfg.mixup > 0:
                mixed = torch.from_numpy(rng.random(len(idx)) < cfg.mixup)
                perm = torch.from_numpy(rng.permutation(len(idx)))
                lam = torch.from_numpy(rng.beta(0.5, 0.5, len(idx)).astype(np.float32))[:, None]
                xb = torch.where(mixed[:, None], lam * xb + (1 - lam) * xb[perm], xb)
                yb = torch.where(mixed[:, None], torch.maximum(yb, yb[perm]), yb)
                wb = torch.where(mixed, torch.maximum(wb, wb[perm]), wb)
            opt.zero_grad(set_to_none=True)
            per_sample = nn.functional.binary_cross_entropy_with_logits(model(xb), yb, reduction="none").mean(dim=1)
            ((per_sample * wb).sum() / wb.sum().clamp_min(1e-12)).backward()
            opt.step()
        sched.step()
    dense = [m for m in model if isinstance(m, nn.Linear)]
    layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in dense]
    # Fold the input standardisation into the first layer: the head takes raw embeddings.
    w0, b0 = layers[0]
    layers[0] = ((w0 / std).astype(np.float32), (b0 - (w0 / std) @ mean).astype(np.float32))
    return Head(kind, list(classes), layers)


def train_fold_heads(
    x: np.ndarray, keys: pl.DataFrame, folds: pl.DataFrame, metadata: pl.DataFrame, classes: list[str],
    fold: int, cfg: HeadConfig, out_dir: Path, extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Every configured head of one fold, trained on the windows of the other folds' recordings
    plus `extra` (x, targets, sample weights; e.g. pseudo-labelled soundscape windows).

    `keys` (filename per row of `x`) ties windows to recordings; recordings in no fold
    (quarantined) are left out. Returns {kind: saved head}.
    """
    rows = keys.with_row_index("_row").join(folds.select("filename", "fold"), on="filename").filter(pl.col("fold") != fold)
    rows = rows.join(metadata.select("filename", "primary_label", "secondary_labels"), on="filename", how="left")
    y = target_matrix(rows["primary_label"].to_list(), rows["secondary_labels"].to_list(), classes, cfg.secondary_weight)
    xs, w = x[rows["_row"].to_numpy()], np.ones(len(y), np.float32)
    if extra is not None:
        xs, y, w = np.concatenate([xs, extra[0]]), np.concatenate([y, extra[1]]), np.concatenate([w, extra[2]])
    return {kind: fit_head(kind, xs, y, classes, cfg, w).save(out_dir / f"fold-{fold}" / f"{kind}.npz") for kind in cfg.kinds}
