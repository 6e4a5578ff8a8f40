"""Where inputs are read and outputs written.

A dataset root is any folder in BirdCLEF layout and may be read-only (a Kaggle input, a
shared drive); everything birdpipe writes goes under a work folder of its own, one per
dataset, so several datasets and parameter sets live side by side.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "BIRDPIPE_DATA"
WORK_ENV = "BIRDPIPE_WORK"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
AUDIO_SUFFIXES = (".ogg", ".mp3", ".wav", ".flac", ".oga", ".opus", ".m4a", ".aif", ".aiff")


def default_data_root() -> Path:
    return Path(os.environ.get(DATA_ENV, PROJECT_ROOT / "data" / "demo"))


def default_work_root() -> Path:
    return Path(os.environ.get(WORK_ENV, PROJECT_ROOT / "data" / "work"))


@dataclass(frozen=True)
class WorkLayout:
    """Outputs of one dataset; each stage's folder is named by its config version."""

    root: Path

    @classmethod
    def for_dataset(cls, data_root: Path, work_root: Path | None = None) -> "WorkLayout":
        data_root = Path(data_root).resolve()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", data_root.name) or "dataset"
        digest = hashlib.sha256(str(data_root).encode()).hexdigest()[:6]
        return cls((work_root or default_work_root()) / f"{slug}-{digest}")

    def stage(self, name: str, version: str) -> Path:
        return self.root / name / f"{name}-{version}"


def file_digest(*paths: Path) -> str:
    """Content hash of files, for data versions and lineage."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def list_audio(folder: Path) -> list[Path]:
    """Audio files below `folder`, sorted, by suffix."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def inside(root: Path, name: str) -> Path:
    """`root / name` for a file name read from a metadata file; ValueError when the name leads
    out of `root` (an absolute path, or `..` past it), so metadata never makes birdpipe read
    elsewhere. Decided on the name, not by resolving links: a symlink inside the folder was put
    there by the dataset's owner."""
    rel = os.path.normpath(name)
    if os.path.isabs(rel) or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{name!r} leads outside the audio folder {root}")
    return Path(root) / rel


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write` a temporary sibling, then rename it over `path`: a reader (or a run killed
    mid-write) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk names the file it could not write
        raise OSError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path
