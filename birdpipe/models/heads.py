"""Classifier heads on frozen embeddings, as plain arrays: what inference runs.

A head is a stack of dense layers (ReLU between them) ending in one logit per class. It is
trained with torch (`training.heads`), but applying it is a few matrix products, so it is
stored as arrays in an `.npz`: no torch needed to predict, in numpy or as part of the blend's
ONNX graph (`inference.blend_graph`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdpipe.paths import atomic_write


@dataclass(frozen=True)
class Head:
    kind: str
    classes: list[str]
    #: (weight [out, in], bias [out]) per dense layer.
    layers: list[tuple[np.ndarray, np.ndarray]]

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, np.float32)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities `[n, C]` of embeddings `[n, d]`."""
        return (1.0 / (1.0 + np.exp(-np.clip(self.logits(x), -30, 30)))).astype(np.float32)

    def save(self, path: Path) -> Path:
        arrays = {f"w{i}": w for i, (w, _) in enumerate(self.layers)} | {f"b{i}": b for i, (_, b) in enumerate(self.layers)}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, kind=np.array(self.kind), classes=np.array(self.classes, dtype=object), **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path, allow_pickle=True) as z:
            n = sum(1 for k in z.files if k.startswith("w"))
            return cls(str(z["kind"]), [str(c) for c in z["classes"]], [(z[f"w{i}"], z[f"b{i}"]) for i in range(n)])
