"""Which timm backbones exist, without importing timm on every config load.

`timm.list_models()` needs the whole of timm (and torchvision) imported, seconds on a small
machine; the names only change with timm's version, so they are listed once per version and
kept in a small JSON file under the user's cache folder.
"""

from __future__ import annotations

import difflib
import json
import os
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _cache_file(timm_version: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "birdpipe" / f"timm-{timm_version}-models.json"


@cache
def known_backbones() -> frozenset[str]:
    """Every model name timm can build (pretrained or not)."""
    try:
        timm_version = version("timm")
    except PackageNotFoundError:
        raise ValueError("timm is not installed: no backbone can be built") from None
    path = _cache_file(timm_version)
    try:
        return frozenset(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    import timm

    names = sorted(timm.list_models())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(names))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the timm import next time
    return frozenset(names)


def check_backbone(name: str) -> str:
    names = known_backbones()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm backbone {name!r}{hint} (see timm.list_models())")
    return name
