"""Multi-label losses on logits `[B, C]` with soft targets and per-sample weights.

Every loss reduces to one number per sample, then to a `sample_weight`-weighted mean over
the batch, so that rating weights and mixup apply to all of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _weighted_mean(per_sample: Tensor, sample_weight: Tensor | None) -> Tensor:
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight).sum() / sample_weight.sum().clamp_min(1e-12)


def bce(logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy averaged over classes, then over samples."""
    per_elem = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _weighted_mean(per_elem.mean(dim=1), sample_weight)


def weighted_bce(
    logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None, class_weight: Tensor | None = None
) -> Tensor:
    """BCE with each class's term scaled by `class_weight [C]` (rare species count more)."""
    per_elem = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if class_weight is not None:
        per_elem = per_elem * class_weight
    return _weighted_mean(per_elem.mean(dim=1), sample_weight)


def focal_bce(logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None, gamma: float = 2.0) -> Tensor:
    """BCE scaled by `(1 - p_t) ** gamma`: easy (mostly negative) terms fade out."""
    per_elem = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    return _weighted_mean((per_elem * (1 - p_t) ** gamma).mean(dim=1), sample_weight)


def soft_auc(logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> Tensor:
    """Pairwise soft-AUC: `log(1 + exp(-(s_pos - s_neg)))` over positive/negative pairs per class.

    A sample is a positive of a class in proportion to `2 * max(y - 0.5, 0)` and a negative in
    proportion to `2 * max(0.5 - y, 0)`, so soft labels near 0.5 count little and hard labels
    fully; a pair weighs the product (times both samples' weights). Scores are logits, so the
    surrogate optimises the ranking that macro ROC-AUC measures. Classes without a pair add nothing.
    """
    pos = (2 * (targets - 0.5)).clamp_min(0)  # [B, C]
    neg = (2 * (0.5 - targets)).clamp_min(0)
    if sample_weight is not None:
        pos, neg = pos * sample_weight[:, None], neg * sample_weight[:, None]
    pair_weight = pos[:, None, :] * neg[None, :, :]  # [B_pos, B_neg, C]
    margin = logits[:, None, :] - logits[None, :, :]
    total = pair_weight.sum()
    if total <= 0:
        return logits.sum() * 0.0  # keeps the graph for a batch without any pair
    return (pair_weight * F.softplus(-margin)).sum() / total


def make_loss(name: str, focal_gamma: float = 2.0, class_weight: Tensor | None = None) -> LossFn:
    """The configured loss as `fn(logits, targets, sample_weight)`."""
    if name == "bce":
        return bce
    if name == "weighted_bce":
        if class_weight is None:
            raise ValueError("loss 'weighted_bce' needs class weights")
        return lambda lg, y, w=None: weighted_bce(lg, y, w, class_weight.to(lg.device))
    if name == "focal":
        return lambda lg, y, w=None: focal_bce(lg, y, w, focal_gamma)
    if name == "soft_auc":
        return soft_auc
    raise ValueError(f"unknown loss {name!r}; known: bce, weighted_bce, focal, soft_auc")
