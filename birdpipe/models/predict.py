"""Running a trained SED model on mels: device choice and batched, blended probabilities.

Validation during training, out-of-fold prediction and torch inference all go through
`predict_batches`, so the three see the same clip/frame blend in the same eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from birdpipe.models.sed import probabilities


def select_device(pref: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; an explicit choice is taken as is."""
    if pref != "auto":
        return torch.device(pref)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device, clip_weight: float) -> np.ndarray:
    """Blended probabilities `[n, C]` of mel batches, in eval mode (the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    out = []
    for x in batches:
        clip, frame = model(x.to(device, non_blocking=True))
        out.append(probabilities(clip.float(), frame.float(), clip_weight).cpu().numpy())
    model.train(was_training)
    n_classes = getattr(model, "n_classes", 0)
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def predict_windows(model: nn.Module, mels: np.ndarray, batch_size: int, device: torch.device | str, clip_weight: float) -> np.ndarray:
    """Probabilities `[n, C]` of in-memory mels `[n, n_mels, T]`."""
    device = torch.device(device)
    batches = (torch.from_numpy(np.asarray(mels[i : i + batch_size], np.float32)) for i in range(0, len(mels), batch_size))
    return predict_batches(model.to(device), batches, device, clip_weight)


@dataclass
class TorchPredictor:
    """A torch fold model behind the same `predict` as `export.OnnxModel`."""

    model: nn.Module
    clip_weight: float
    device: str = "cpu"

    def predict(self, mels: np.ndarray, batch_size: int) -> np.ndarray:
        return predict_windows(self.model, mels, batch_size, self.device, self.clip_weight)
