from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from birdpipe.data.labels import class_weights, rating_weights, target_matrix
from birdpipe.training.losses import LOSSES, LossParams, bce, focal_bce, make_loss, soft_auc, weighted_bce

LOGITS = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
Y = torch.tensor([[1.0, 0.0], [0.0, 0.6]])


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _bce(z: float, y: float) -> float:
    p = _sig(z)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


HAND = [[_bce(2, 1), _bce(-1, 0)], [_bce(0, 0), _bce(1, 0.6)]]


def test_bce_and_sample_weights_by_hand():
    per_sample = [sum(r) / 2 for r in HAND]
    assert bce(LOGITS, Y).item() == pytest.approx(sum(per_sample) / 2, rel=1e-6)
    w = torch.tensor([1.0, 3.0])
    assert bce(LOGITS, Y, w).item() == pytest.approx((per_sample[0] + 3 * per_sample[1]) / 4, rel=1e-6)


def test_weighted_bce_scales_each_class():
    cw = torch.tensor([2.0, 0.5])
    hand = sum((2 * r[0] + 0.5 * r[1]) / 2 for r in HAND) / 2
    assert weighted_bce(LOGITS, Y, None, LossParams(class_weight=cw)).item() == pytest.approx(hand, rel=1e-6)


def test_focal_bce_by_hand_and_gamma_zero_is_bce():
    def pt(z, y):
        p = _sig(z)
        return p * y + (1 - p) * (1 - y)

    zs, ys = [[2, -1], [0, 1]], [[1, 0], [0, 0.6]]
    hand = sum(sum(HAND[i][j] * (1 - pt(zs[i][j], ys[i][j])) ** 2 for j in range(2)) / 2 for i in range(2)) / 2
    assert focal_bce(LOGITS, Y, params=LossParams(focal_gamma=2.0)).item() == pytest.approx(hand, rel=1e-6)
    assert focal_bce(LOGITS, Y, params=LossParams(focal_gamma=0.0)).item() == pytest.approx(bce(LOGITS, Y).item(), rel=1e-6)


def test_soft_auc_by_hand_with_soft_labels():
    logits = torch.tensor([[3.0], [1.0], [0.0]])
    y = torch.tensor([[1.0], [0.8], [0.1]])
    # positives: sample 0 (weight 1), 1 (0.6); negative: sample 2 (0.8)
    pairs = [(1.0 * 0.8, 3.0 - 0.0), (0.6 * 0.8, 1.0 - 0.0)]
    hand = sum(w * math.log(1 + math.exp(-m)) for w, m in pairs) / sum(w for w, _ in pairs)
    assert soft_auc(logits, y).item() == pytest.approx(hand, rel=1e-6)


def test_soft_auc_rewards_correct_ranking_and_handles_no_pairs():
    y = torch.tensor([[1.0], [0.0]])
    assert soft_auc(torch.tensor([[5.0], [-5.0]]), y) < soft_auc(torch.tensor([[-5.0], [5.0]]), y)
    logits = torch.zeros(2, 1, requires_grad=True)
    loss = soft_auc(logits, torch.ones(2, 1))
    loss.backward()
    assert loss.item() == 0.0


def test_make_loss_names():
    for name in ("bce", "focal", "soft_auc"):
        assert torch.isfinite(make_loss(name)(LOGITS, Y, None))
    assert torch.isfinite(make_loss("weighted_bce", LossParams(class_weight=torch.ones(2)))(LOGITS, Y, None))
    with pytest.raises(ValueError, match="needs class weights"):
        make_loss("weighted_bce")(LOGITS, Y, None)
    with pytest.raises(ValueError, match="unknown loss 'hinge'; known: bce, weighted_bce, focal, soft_auc"):
        make_loss("hinge")


def test_a_registered_loss_is_accepted_by_the_config():
    from birdpipe.config import TrainConfig

    @LOSSES.register("test_l1")
    def l1(logits, targets, sample_weight=None, params=LossParams()):
        return (logits.sigmoid() - targets).abs().mean()

    try:
        assert TrainConfig(loss="test_l1").loss == "test_l1"
        assert torch.isfinite(make_loss("test_l1")(LOGITS, Y, None))
    finally:
        LOSSES._entries.pop("test_l1")


def test_targets_primary_secondary_and_smoothing():
    y = target_matrix(["a", "b"], [["b", "zzz"], []], ["a", "b", "c"], secondary_weight=0.3)
    np.testing.assert_allclose(y, [[1, 0.3, 0], [0, 1, 0]])
    ys = target_matrix(["a"], [[]], ["a", "b"], smoothing=0.1)
    np.testing.assert_allclose(ys, [[0.95, 0.05]])


def test_rating_and_class_weights():
    np.testing.assert_allclose(rating_weights(np.array([5.0, 2.5, 0.2, 0.0, np.nan])), [1, 0.5, 0.1, 1, 1])
    w = class_weights(np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32), power=1.0)
    assert w.mean() == pytest.approx(1.0) and w[1] == pytest.approx(3 * w[0])
