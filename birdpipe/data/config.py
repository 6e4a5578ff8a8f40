"""Parameters of the data stage: where a dataset's files are, and how recordings are split into folds."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from birdpipe.schema import NonNegativeInt, Section


class DatasetConfig(Section):
    """Overrides of what `data.layout.detect_layout` finds, each relative to the dataset root.

    Unset, every BirdCLEF year's download (2021-2025) is recognised as it is.
    """

    #: Recording metadata CSV (default: train_metadata.csv, else train.csv).
    metadata: str | None = None
    #: Folder of the training recordings (default: train_audio, else train_short_audio).
    audio_dir: str | None = None
    #: CSV whose `primary_label` column is the class list in model order (default: taxonomy.csv;
    #: without it the columns of sample_submission.csv, else the sorted primary labels).
    taxonomy: str | None = None
    #: Submission template whose columns after `row_id` give the class order (default: sample_submission.csv).
    sample_submission: str | None = None
    #: JSON list of the species a 2022-format submission scores (default: scored_birds.json).
    scored_birds: str | None = None
    #: Per-window labels of soundscapes, used as a validation source (default:
    #: train_soundscape_labels.csv for train_soundscapes/, test_soundscape_labels.csv for test_soundscapes/).
    soundscape_labels: str | None = None
    #: The folder of the soundscapes those labels describe.
    labelled_soundscapes: str | None = None
    #: Unlabeled soundscapes (default: unlabeled_soundscapes, else an unlabelled train_soundscapes).
    unlabeled_soundscapes: str | None = None
    #: Metadata file names without a folder live in `<audio_dir>/<primary_label>/` (default: true for train_short_audio).
    label_folders: bool | None = None


class FoldConfig(Section):
    n_folds: Annotated[int, Field(ge=2)] = 5
    seed: NonNegativeInt = 42
    #: Keep recordings sharing this metadata column (e.g. "author") in one fold.
    group_column: str | None = None
    #: Species with fewer recordings are never held out (fold -1): every fold model learns
    #: them, and they get no out-of-fold prediction. Unset: `n_folds`, so a species too rare
    #: to be validated in every fold is trained on in every fold. 0 holds every recording out
    #: once; species with fewer recordings than folds are then validated in some folds only.
    always_train_below: NonNegativeInt | None = None

    @property
    def always_train_threshold(self) -> int:
        """`always_train_below`, its default resolved."""
        return self.n_folds if self.always_train_below is None else self.always_train_below
