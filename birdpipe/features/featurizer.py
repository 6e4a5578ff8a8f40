"""What a window cache computes per recording, in its worker processes.

Kept apart from the builder (`features.cache`, which needs polars to write shards): a
worker unpickles its function and featurizer by module, so every module it imports is paid
once per worker and, in a run of a few seconds per core, counts. This module needs only
numpy, the decoder and the mel code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from birdpipe.data import audio
from birdpipe.features.config import MelConfig
from birdpipe.features.mel import stream_log_mel_windows
from birdpipe.parallel import inject_fault
from birdpipe.schema import version

#: Bump when the mel cache's content changes without a parameter change (an algorithm fix):
#: the cache gets a new folder, and every stage after it becomes unsynced.
REVISION = 1


class Featurizer(Protocol):
    """What a window cache computes per recording. Sent to worker processes, so picklable."""

    #: Folder prefix and `cache.json` kind, e.g. "mel".
    kind: str
    #: Length of one window (its `end_seconds - start_seconds`).
    window_seconds: float

    def version(self) -> str:
        """Hash of everything that changes the arrays: the cache folder's name."""
        ...

    def params(self) -> dict[str, Any]:
        """What `cache.json` records under `kind`."""
        ...

    def compute(self, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, audio.AudioStream]:
        """Arrays `{column: [n_windows, ...]}`, window starts (s) and the decoded stream
        (duration, damage) of one recording; raises `audio.AudioError` when it cannot be read."""
        ...


def cache_version(mel: MelConfig) -> str:
    return version("mel_cache", REVISION, mel)


@dataclass(frozen=True)
class MelFeatures:
    """Log-mel windows (float16 by default), streamed in chunks of `noise_chunk_seconds`."""

    mel: MelConfig
    kind: str = "mel"

    @property
    def window_seconds(self) -> float:
        return self.mel.window_seconds

    def version(self) -> str:
        return cache_version(self.mel)

    def params(self) -> dict[str, Any]:
        return self.mel.to_dict()

    def compute(self, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, audio.AudioStream]:
        mel = self.mel
        stream = audio.iter_blocks(path, mel.sample_rate, mel.noise_chunk_seconds)
        chunks = [(m.astype(mel.dtype), s) for m, s in stream_log_mel_windows(stream, mel)]
        return {"mel": np.concatenate([c[0] for c in chunks])}, np.concatenate([c[1] for c in chunks]), stream


def content_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def compute_recording(job: tuple[str, str, Featurizer]) -> dict[str, Any]:
    """One recording, in a worker: the featurizer's arrays per window, or why not."""
    filename, path, featurizer = job
    inject_fault(filename)
    out: dict[str, Any] = {"filename": filename, "damaged": False, "reason": None}
    try:
        out["content_hash"] = content_hash(Path(path))
        out["arrays"], out["starts"], stream = featurizer.compute(Path(path))
        out.update(status="ok", damaged=stream.damaged, reason=stream.reason, duration_s=stream.samples / stream.sr, notes=stream.notes)
    except audio.AudioError as exc:
        out.update(status="quarantined", reason=exc.reason)
    except Exception as exc:  # noqa: BLE001 - one file must never stop the build
        out.update(status="quarantined", reason=f"{type(exc).__name__}: {exc}"[:200])
    return out
