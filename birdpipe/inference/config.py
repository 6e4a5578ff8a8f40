"""Parameters of soundscape inference and the submission files."""

from __future__ import annotations

from pydantic import field_validator

from birdpipe.inference.ensemble import COMBINATIONS
from birdpipe.inference.formats import FORMATS
from birdpipe.schema import PositiveInt, Section


class SubmissionConfig(Section):
    #: `inference.formats.FORMATS`: "2021" row_id,birds; "2022" row_id,target; "2023"-"2025"
    #: probabilities. Unset: the format of the dataset's year (`DatasetLayout.submission_format`).
    format: FORMATS.choice() | None = None
    #: How fold models' probabilities combine (`inference.ensemble.COMBINATIONS`).
    ensemble: COMBINATIONS.choice() = "mean"
    #: Kernel smoothing probabilities across neighbouring windows; empty disables it.
    smoothing: tuple[float, ...] = ()
    #: Soundscape folder relative to the dataset root; default: the first that holds audio of
    #: test_soundscapes, unlabeled_soundscapes, train_soundscapes.
    soundscape_dir: str | None = None
    batch_size: PositiveInt = 64
    use_onnx: bool = True
    raven_tables: bool = True

    @field_validator("smoothing")
    @classmethod
    def _kernel(cls, kernel: tuple[float, ...]) -> tuple[float, ...]:
        if kernel and (len(kernel) % 2 == 0 or min(kernel) < 0 or sum(kernel) <= 0):
            raise ValueError(f"a smoothing kernel needs odd length and non-negative weights, got {list(kernel)}")
        return kernel
