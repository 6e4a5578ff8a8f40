"""Multi-label losses on logits `[B, C]` with soft targets and per-sample weights.

Every loss reduces to one number per sample, then to a `sample_weight`-weighted mean over
the batch, so that rating weights and mixup apply to all of them the same way. Losses are
registered in `LOSSES` by the name the config uses (`[train] loss = "soft_auc"`); one that
needs more than logits, targets and weights reads it from `LossParams`.

torch is imported inside the functions, not with this module: the config validates loss
names against `LOSSES`, and loading a config (the Dagster code location, the CLI) must stay
fast. (A lazy module proxy breaks torch's own import when something inspects sys.modules.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from birdpipe.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

LossFn = Callable[["Tensor", "Tensor", "Tensor | None"], "Tensor"]


@dataclass(frozen=True)
class LossParams:
    """What some losses need besides logits, targets and weights."""

    #: `[C]` per-class weights (weighted_bce).
    class_weight: Tensor | None = None
    #: Focusing exponent (focal).
    focal_gamma: float = 2.0


#: name -> `fn(logits, targets, sample_weight, params)`.
LOSSES: Registry[Callable[..., Tensor]] = Registry("loss")


def _weighted_mean(per_sample: Tensor, sample_weight: Tensor | None) -> Tensor:
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight).sum() / sample_weight.sum().clamp_min(1e-12)


@LOSSES.register("bce")
def bce(logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None, params: LossParams = LossParams()) -> Tensor:
    """Binary cross-entropy averaged over classes, then over samples."""
    import torch.nn.functional as F

    per_elem = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _weighted_mean(per_elem.mean(dim=1), sample_weight)


@LOSSES.register("weighted_bce")
def weighted_bce(
    logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None, params: LossParams = LossParams()
) -> Tensor:
    """BCE with each class's term scaled by `params.class_weight [C]` (rare species count more)."""
    if params.class_weight is None:
        raise ValueError("loss 'weighted_bce' needs class weights (LossParams.class_weight)")
    import torch.nn.functional as F

    per_elem = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per_elem = per_elem * params.class_weight.to(logits.device)
    return _weighted_mean(per_elem.mean(dim=1), sample_weight)


@LOSSES.register("focal")
def focal_bce(logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None, params: LossParams = LossParams()) -> Tensor:
    """BCE scaled by `(1 - p_t) ** gamma`: easy (mostly negative) terms fade out."""
    import torch.nn.functional as F

    per_elem = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    return _weighted_mean((per_elem * (1 - p_t) ** params.focal_gamma).mean(dim=1), sample_weight)


@LOSSES.register("soft_auc")
def soft_auc(logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None, params: LossParams = LossParams()) -> Tensor:
    """Pairwise soft-AUC: `log(1 + exp(-(s_pos - s_neg)))` over positive/negative pairs per class.

    A sample is a positive of a class in proportion to `2 * max(y - 0.5, 0)` and a negative in
    proportion to `2 * max(0.5 - y, 0)`, so soft labels near 0.5 count little and hard labels
    fully; a pair weighs the product (times both samples' weights). Scores are logits, so the
    surrogate optimises the ranking that macro ROC-AUC measures. Classes without a pair add nothing.
    """
    import torch.nn.functional as F

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


def make_loss(name: str, params: LossParams = LossParams()) -> LossFn:
    """The registered loss `name` as `fn(logits, targets, sample_weight)`."""
    return partial(LOSSES.get(name), params=params)
