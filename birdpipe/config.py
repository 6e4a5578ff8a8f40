"""The whole pipeline's config: one section per stage, read from one TOML file.

Each stage's section is defined beside its code (`birdpipe/<stage>/config.py`) and composed
here; `birdpipe config` prints every key with its default. A file names only what it changes:

    [train]
    loss = "soft_auc"
    [train.model]
    backbone = "tf_efficientnetv2_b0"

The whole file is validated when it loads (types, choices, ranges, registered names): an
error names the file, the section, the key, the bad value and what is allowed, before any
work starts. Each stage's `stage_version` hashes the sections it reads plus a code revision,
and becomes its Dagster `code_version` and output folder name, so a changed parameter marks
that stage and everything after it as unsynced, and two parameter sets coexist on disk.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from birdpipe.data.config import DatasetConfig, FoldConfig
from birdpipe.deploy import PROFILE_ENV, DeployConfig
from birdpipe.evaluation.config import BlendConfig, ThresholdConfig
from birdpipe.features.cache import cache_version
from birdpipe.features.config import CacheConfig, MelConfig
from birdpipe.inference.config import SubmissionConfig
from birdpipe.models.config import BirdnetConfig, ModelConfig
from birdpipe.schema import Section, version
from birdpipe.tracking import TrackingConfig
from birdpipe.training.config import AugmentConfig, HeadConfig, PseudoLabelConfig, TrainConfig

__all__ = [
    "BirdnetConfig", "CacheConfig", "ConfigError", "DatasetConfig", "DeployConfig", "FoldConfig", "MelConfig", "ModelConfig", "AugmentConfig", "PipelineConfig",
    "SubmissionConfig", "ThresholdConfig", "TrackingConfig", "TrainConfig", "load_config", "parse_config",
]  # fmt: skip

CONFIG_ENV = "BIRDPIPE_CONFIG"

#: Code revision of each stage: bump one when its output changes without a parameter change
#: (an algorithm fix), so that stage and everything after it become unsynced. The mel cache
#: keeps its own (`features.featurizer.REVISION`): its folders are named outside Dagster too.
REVISIONS = {
    "taxonomy": 1,
    "train_metadata": 1,
    "audio_manifest": 1,
    "folds": 1,
    "trained_model": 1,
    "oof_predictions": 1,
    "thresholds": 1,
    "submission": 2,
    "soundscape_validation": 1,
    "birdnet_embeddings": 1,
    "embedding_heads": 1,
    "ensemble": 1,
    "birdnet_scores": 1,
    "soundscape_embeddings": 1,
    "pseudo_labels": 1,
}


class ConfigError(ValueError):
    """A config file that does not validate; the message lists every problem."""


class PipelineConfig(Section):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    mel: MelConfig = Field(default_factory=MelConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    folds: FoldConfig = Field(default_factory=FoldConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    birdnet: BirdnetConfig = Field(default_factory=BirdnetConfig)
    heads: HeadConfig = Field(default_factory=HeadConfig)
    pseudo: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    blend: BlendConfig = Field(default_factory=BlendConfig)
    thresholds: ThresholdConfig = Field(default_factory=ThresholdConfig)
    submission: SubmissionConfig = Field(default_factory=SubmissionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    @model_validator(mode="after")
    def _deploy_defaults(self) -> PipelineConfig:
        """Outside `local`, the cache and embedding stages fan out over `[deploy] shards` partitions
        unless `[cache] partitions` says otherwise (the cache's content does not depend on it)."""
        if self.deploy.distributed and "partitions" not in self.cache.model_fields_set:
            self.__dict__["cache"] = self.cache.replace(partitions=self.deploy.shards)
        return self

    def stage_version(self, stage: str) -> str:
        """Hash of a stage's code revision and of every section its output depends on."""
        if stage == "mel_cache":
            return cache_version(self.mel)
        sections = _STAGE_INPUTS[stage]
        #: DDP's processes multiply the effective batch: a fold trained by N > 1 is another model.
        ddp = [self.deploy.nproc_per_fold] if stage == "trained_model" and self.deploy.nproc_per_fold > 1 else []
        return version(stage, REVISIONS[stage], *(getattr(self, s) for s in sections), *(
            self.stage_version(up) for up in self.upstream(stage)
        ), *ddp)  # fmt: skip

    def upstream(self, stage: str) -> tuple[str, ...]:
        """The stages whose versions `stage`'s own follows, with those the config switches on."""
        up = _STAGE_UPSTREAM.get(stage, ())
        if stage == "trained_model" and self.train.distill.teacher:
            up += ("birdnet_scores",)
        if stage == "ensemble" and self.pseudo.rounds:
            up += ("pseudo_labels",)
        return up


#: Sections each stage reads itself...
_STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "taxonomy": ("dataset",),
    "train_metadata": ("dataset",),
    "audio_manifest": ("dataset",),
    "folds": ("folds",),
    "trained_model": ("train",),
    "oof_predictions": (),
    "thresholds": ("thresholds",),
    "submission": ("submission", "blend", "dataset"),
    "soundscape_validation": ("submission", "blend", "dataset"),
    "birdnet_embeddings": ("birdnet",),
    "embedding_heads": ("birdnet", "heads"),
    "ensemble": ("blend", "birdnet"),
    "birdnet_scores": ("birdnet",),
    "soundscape_embeddings": ("birdnet", "pseudo", "dataset"),
    "pseudo_labels": ("pseudo", "heads", "blend"),
}
#: ...and the stages whose versions its own folder must follow (a model trained on other
#: features or splits must not resume or be scored as this one).
_STAGE_UPSTREAM: dict[str, tuple[str, ...]] = {
    "trained_model": ("mel_cache", "folds"),
    "oof_predictions": ("trained_model",),
    "thresholds": ("oof_predictions",),
    "submission": ("thresholds", "ensemble"),
    "soundscape_validation": ("thresholds", "ensemble"),
    "embedding_heads": ("folds", "birdnet_embeddings"),
    "ensemble": ("oof_predictions", "embedding_heads", "birdnet_scores"),
    "birdnet_scores": ("birdnet_embeddings",),
    "pseudo_labels": ("embedding_heads", "birdnet_scores", "soundscape_embeddings"),
}


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read and validate a TOML config (default: $BIRDPIPE_CONFIG); missing keys keep their defaults.
    $BIRDPIPE_PROFILE, when set, replaces `[deploy] profile`."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return parse_config(_with_profile({}), f"${PROFILE_ENV}")
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: birdpipe config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(_with_profile(data), str(path))


def _with_profile(data: dict[str, Any]) -> dict[str, Any]:
    profile = os.environ.get(PROFILE_ENV)
    return {**data, "deploy": {**data.get("deploy", {}), "profile": profile}} if profile else data


def parse_config(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.from_dict(data)
    except ValidationError as exc:
        problems = [_describe(err, data) for err in exc.errors()]
        raise ConfigError(f"{where}: {len(problems)} invalid setting(s)\n" + "\n".join(f"  {p}" for p in problems)) from None


def _describe(err: dict[str, Any], data: dict[str, Any]) -> str:
    """`[train] loss = 'focall': unknown loss 'focall'; known: ...` from a pydantic error."""
    loc = [str(part) for part in err["loc"]]
    # A dict key's own validation is reported under "[key]"; a model-level check has no key.
    loc = [part for part in loc if part != "[key]"]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section, key = loc[:-1], loc[-1]
        return f"[{'.'.join(section) or 'top level'}] {key}: unknown key"
    section, key = (loc[:-1], loc[-1]) if loc else ([], "")
    value = _lookup(data, loc)
    if isinstance(value, dict) or not key:
        return f"[{'.'.join(loc) or 'top level'}]: {msg}"
    return f"[{'.'.join(section) or 'top level'}] {key} = {value!r}: {msg}"


def _lookup(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data
