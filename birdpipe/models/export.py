"""ONNX export of a fold model and its ONNX Runtime predictor (CPU inference, 2023-2025 style).

The exported graph takes log-mels `mel [batch, n_mels, n_frames]` (float32, dynamic batch)
and returns `probabilities [batch, n_classes]`: the clip/frame blend (`models.probabilities`
with the model's `clip_weight`) is baked in, so ONNX and torch predictors are
interchangeable in an ensemble. The checkpoint's meta (classes, model and mel configs) rides
along in the ONNX metadata, so a `.onnx` file alone is a complete deployable model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from birdpipe.models.sed import ProbabilityModel
from birdpipe.paths import atomic_write

INPUT, OUTPUT, META_KEY = "mel", "probabilities", "birdpipe_meta"


def export_onnx(
    model: nn.Module, path: str | Path, n_mels: int, n_frames: int, meta: dict[str, Any] | None = None
) -> Path:
    """Write `model` (an SedModel) as ONNX with a dynamic batch axis; `meta` as in checkpoints.

    The clip weight comes from `meta["model"]["clip_weight"]`, else the model's config.
    Written to a temporary name first, so a reader never sees half a file.
    """
    import onnx

    clip_weight = (meta or {}).get("model", {}).get("clip_weight", getattr(model.cfg, "clip_weight", 0.75))
    wrapper = ProbabilityModel(model, float(clip_weight)).eval().cpu()
    example = torch.zeros(2, n_mels, n_frames)
    with warnings.catch_warnings():  # the exporter's deprecation and dynamic-shape notes
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"mel": {0: torch.export.Dim("batch", min=1)}},
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    if meta is not None:
        proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    return atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


class OnnxModel:
    """ONNX Runtime CPU session with the torch predictor's interface: `predict(mels, batch_size)`."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # Idle worker threads sleep instead of spinning: on shared CPUs (and next to torch's own
        # pool) spinning steals the cores that decoding and mel extraction need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        #: classes, model and mel configs of the checkpoint it came from ({} if exported without).
        self.meta: dict[str, Any] = json.loads(props[META_KEY]) if META_KEY in props else {}

    def predict(self, mels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities `[n, C]` of log-mel windows `[n, n_mels, n_frames]`."""
        mels = np.asarray(mels, dtype=np.float32)
        if not len(mels):
            return np.zeros((0, len(self.meta.get("classes", []))), np.float32)
        return np.concatenate(
            [self.session.run([OUTPUT], {INPUT: mels[i : i + batch_size]})[0] for i in range(0, len(mels), batch_size)]
        )

