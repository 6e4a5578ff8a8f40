"""Parameters of the SED model: the timm backbone and the attention head."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from birdpipe.models.backbones import check_backbone
from birdpipe.schema import Probability, Section


def _existing_file(path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"{path}: pretrained weights file not found (weights are never downloaded)")
    return path


class ModelConfig(Section):
    """timm backbone + SED attention head."""

    #: A timm model name (`timm.list_models()`).
    backbone: Annotated[str, AfterValidator(check_backbone)] = "efficientnet_b0"
    in_chans: Annotated[int, Field(ge=1, le=3)] = 1
    #: Local weights file (timm checkpoint or state dict); never downloaded.
    pretrained_weights: Annotated[str | None, AfterValidator(_existing_file)] = None
    drop_rate: Probability = 0.2
    drop_path_rate: Probability = 0.1
    #: Inference mix of clip-wise and frame-wise-max probabilities.
    clip_weight: Probability = 0.75
