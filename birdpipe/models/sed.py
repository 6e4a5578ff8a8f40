"""timm backbone + PANNs-style attention (SED) head, and checkpoints that load with `weights_only`.

The backbone turns a log-mel image `[B, C_in, n_mels, T]` into a feature map `[B, F, n_mels', T']`;
averaging over frequency leaves one feature vector per time step, and the attention head
(PANNs `AttBlock`, with the avg + max time smoothing of the 2022 BirdCLEF winners) gives a
class logit per frame plus an attention-weighted clip logit. `forward` returns a tuple so the
model exports to ONNX unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from birdpipe.models.config import ModelConfig
from birdpipe.paths import atomic_write
from birdpipe.schema import Section


class AttentionHead(nn.Module):
    """Frame-wise class logits and their attention-weighted sum over time (PANNs `AttBlock`)."""

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        self.att = nn.Conv1d(in_features, n_classes, kernel_size=1)
        self.cla = nn.Conv1d(in_features, n_classes, kernel_size=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x [B, F, T]` -> `(clip_logits [B, C], frame_logits [B, T, C])`."""
        # tanh bounds the attention logits so that one frame cannot take all the weight early on.
        weights = torch.softmax(torch.tanh(self.att(x)), dim=-1)
        frame = self.cla(x)
        clip = (weights * frame).sum(dim=-1)
        return clip, frame.transpose(1, 2)


class SedModel(nn.Module):
    """Sound event detection model: any timm CNN backbone with an attention head."""

    def __init__(self, cfg: ModelConfig, n_classes: int):
        super().__init__()
        self.cfg = cfg
        self.n_classes = n_classes
        self.backbone = timm.create_model(
            cfg.backbone,
            in_chans=cfg.in_chans,
            num_classes=0,
            global_pool="",
            drop_path_rate=cfg.drop_path_rate,
            **_pretrained_kwargs(cfg.pretrained_weights),
        )
        width = self.backbone.num_features
        self.fc = nn.Linear(width, width)
        self.dropout = nn.Dropout(cfg.drop_rate)
        self.head = AttentionHead(width, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x [B, n_mels, T]` or `[B, 1, n_mels, T]` -> `(clip_logits [B, C], frame_logits [B, T', C])`."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if self.cfg.in_chans != x.shape[1]:
            x = x.expand(-1, self.cfg.in_chans, -1, -1)
        feats = self.backbone.forward_features(x).mean(dim=2)  # [B, F, T']
        # Smooth over neighbouring frames: max keeps short calls, avg keeps their context.
        feats = F.max_pool1d(feats, 3, 1, 1) + F.avg_pool1d(feats, 3, 1, 1)
        feats = self.dropout(feats).transpose(1, 2)
        feats = self.dropout(F.relu(self.fc(feats))).transpose(1, 2)
        return self.head(feats)


def _pretrained_kwargs(weights: str | None) -> dict[str, Any]:
    """timm arguments that load a local weight file; without one, random init (never a download)."""
    if not weights:
        return {"pretrained": False}
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: pretrained weights file not found (weights are never downloaded)")
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights), "source": ""}}


def build_model(cfg: ModelConfig, n_classes: int) -> SedModel:
    return SedModel(cfg, n_classes)


def probabilities(clip_logits: Tensor, frame_logits: Tensor, clip_weight: float) -> Tensor:
    """Mix of clip-wise and frame-wise-max probabilities `[B, C]` (the usual 0.75 / 0.25 blend)."""
    frame_max = torch.sigmoid(frame_logits).amax(dim=1)
    return clip_weight * torch.sigmoid(clip_logits) + (1.0 - clip_weight) * frame_max


class ProbabilityModel(nn.Module):
    """What is deployed (ONNX, MLflow): mels `[B, n_mels, T]` -> blended probabilities `[B, C]`."""

    def __init__(self, model: SedModel, clip_weight: float):
        super().__init__()
        self.model, self.clip_weight = model, clip_weight

    def forward(self, mel: Tensor) -> Tensor:
        return probabilities(*self.model(mel), self.clip_weight)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any], **state: Any) -> Path:
    """Write `{"model", "meta", **state}` atomically, so a run killed mid-write keeps the old file.

    `meta` and `state` must hold only tensors and plain Python types: they are read back
    with `torch.load(weights_only=True)`.
    """
    return atomic_write(path, lambda tmp: torch.save({"model": model.state_dict(), "meta": meta, **state}, tmp))


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(path), map_location=device, weights_only=True)


def model_meta(model: SedModel, classes: list[str], mel: Section, **extra: Any) -> dict[str, Any]:
    """The `meta` that makes a checkpoint self-describing: classes, model and mel configs."""
    return {"classes": list(classes), "model": model.cfg.to_dict(), "mel": mel.to_dict(), **extra}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[SedModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes (no pretrained file needed) in eval mode."""
    ckpt = read_checkpoint(path, device)
    meta = ckpt["meta"]
    cfg = ModelConfig.from_dict({**meta["model"], "pretrained_weights": None})
    model = build_model(cfg, len(meta["classes"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), meta
