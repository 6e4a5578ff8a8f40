"""The base of every config section, and the hashes that version stage outputs.

Sections are frozen pydantic models validated strictly: a TOML `"false"` is not a bool and
`"128"` is not an int, so a typo fails at load with the key named instead of changing
behaviour quietly. The only coercions are the lossless ones JSON allows (an int where a
float is expected, an array where a tuple is expected).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

S = TypeVar("S", bound="Section")

#: A probability.
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
#: A web UI's base URL (links in metadata and run descriptions), checked at load rather than when clicked.
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]


class Section(BaseModel):
    """A frozen, strictly typed config section that rejects unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_default=True)

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """Validate plain data (TOML, JSON, checkpoint metadata) under the JSON coercion rules."""
        return cls.model_validate_json(json.dumps(data))

    def replace(self: S, **changes: Any) -> S:
        """A validated copy with `changes` (unlike `model_copy`, which skips validation)."""
        return type(self).from_dict({**self.to_dict(), **{k: _plain(v) for k, v in changes.items()}})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def version(*parts: Any) -> str:
    """Short stable hash of configs and values: the code_version and folder name of a stage."""
    payload = json.dumps([_plain(p) for p in parts], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train.model.backbone": ...}`: flat keys for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in _plain(cfg).items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
