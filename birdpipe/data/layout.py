"""Which files of a dataset folder are what: the one place that names a dataset's files.

Every BirdCLEF year ships a different set: 2021 `train_short_audio/` with bare file names and
labelled `train_soundscapes/`, 2022 `scored_birds.json` and `test.csv`, 2023-2024 the class
list only as `sample_submission.csv` columns, 2025 `train.csv` and `taxonomy.csv`. Detection
finds each part by the names the competitions used; `[dataset]` overrides any of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from birdpipe.data.config import DatasetConfig
from birdpipe.paths import AUDIO_SUFFIXES, file_digest, list_audio

METADATA_FILES = ("train_metadata.csv", "train.csv")
AUDIO_DIRS = ("train_audio", "train_short_audio")
TAXONOMY_FILE = "taxonomy.csv"
SAMPLE_SUBMISSION_FILE = "sample_submission.csv"
SCORED_BIRDS_FILE = "scored_birds.json"
TEST_ROWS_FILE = "test.csv"
#: Labelled soundscape folders and their labels: 2021's train soundscapes, the demo's test ones.
LABELLED_SOUNDSCAPES = (("train_soundscapes", "train_soundscape_labels.csv"), ("test_soundscapes", "test_soundscape_labels.csv"))
UNLABELED_DIRS = ("unlabeled_soundscapes", "train_soundscapes")
TEST_DIR = "test_soundscapes"
#: Where a submission is predicted, in order of preference.
SOUNDSCAPE_DIRS = ("test_soundscapes", "unlabeled_soundscapes", "train_soundscapes")


@dataclass(frozen=True)
class DatasetLayout:
    """The detected files of one dataset; None where the dataset has no such part."""

    root: Path
    #: The competition year whose layout this is ("2021" ... "2025"), or "birdpipe" for a
    #: train_metadata.csv + taxonomy.csv folder (the demo, xc-puerto-rico).
    name: str
    metadata: Path
    audio_dir: Path
    #: Bare metadata file names are under `<audio_dir>/<primary_label>/` (2021).
    label_folders: bool
    taxonomy: Path | None
    sample_submission: Path | None
    #: True when sample_submission.csv has a column per class (2023 on), not 2021/2022's decisions.
    sample_has_classes: bool
    scored_birds: Path | None
    #: 2022's `test.csv`: the rows a submission must have.
    test_rows: Path | None
    soundscape_labels: Path | None
    labelled_soundscapes: Path | None
    unlabeled_soundscapes: Path | None
    test_soundscapes: Path | None

    @property
    def class_source(self) -> str:
        """Where the class list comes from: a taxonomy, a submission template's columns, or the metadata."""
        if self.taxonomy:
            return self.taxonomy.name
        if self.sample_has_classes:
            return f"{self.sample_submission.name} columns"
        return f"sorted primary labels of {self.metadata.name}"

    @property
    def submission_format(self) -> str:
        """The `inference.formats.FORMATS` name the year's competition expected."""
        return self.name if self.name in ("2021", "2022", "2023", "2024") else "2025"

    def soundscapes(self, subdir: str | None = None) -> Path | None:
        """The soundscape folder to predict a submission on: `subdir` if given, else the
        first of SOUNDSCAPE_DIRS that holds audio (Kaggle's public test folders are empty)."""
        if subdir:
            path = self.root / subdir
            if not path.is_dir():
                raise FileNotFoundError(f"{path}: soundscape folder not found")
            return path
        return next((self.root / d for d in SOUNDSCAPE_DIRS if _has_audio(self.root / d)), None)

    def fingerprint(self) -> str:
        """Cheap change detector: metadata and class-list contents plus every audio file's name, size and mtime."""
        sources = [p for p in (self.metadata, self.taxonomy, self.sample_submission) if p]
        h = hashlib.sha256(file_digest(*sources).encode())
        for path in list_audio(self.audio_dir):
            stat = path.stat()
            h.update(f"{path.relative_to(self.audio_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, str | None]:
        """Every detected part, relative to the root, for reports."""
        parts = {
            "metadata_file": self.metadata, "audio_dir": self.audio_dir, "taxonomy": self.taxonomy,
            "sample_submission": self.sample_submission, "scored_birds": self.scored_birds, "test_rows": self.test_rows,
            "soundscape_labels": self.soundscape_labels, "labelled_soundscapes": self.labelled_soundscapes,
            "unlabeled_soundscapes": self.unlabeled_soundscapes, "test_soundscapes": self.test_soundscapes,
        }  # fmt: skip
        return {"layout": self.name, **{k: _relative(p, self.root) for k, p in parts.items()}}


def detect_layout(root: str | Path, cfg: DatasetConfig | None = None) -> DatasetLayout:
    """The layout of the dataset at `root`; an override that does not exist, or a folder
    with no metadata or audio folder, fails naming what was looked for."""
    root, cfg = Path(root), cfg or DatasetConfig()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    metadata = _required(root, cfg.metadata, METADATA_FILES, "metadata", Path.is_file)
    audio_dir = _required(root, cfg.audio_dir, AUDIO_DIRS, "audio_dir", Path.is_dir)
    labelled, labels = _labelled_soundscapes(root, cfg)
    unlabeled = _optional(root, cfg.unlabeled_soundscapes, [d for d in UNLABELED_DIRS if root / d != labelled], "unlabeled_soundscapes", Path.is_dir)
    layout = dict(
        root=root,
        metadata=metadata,
        audio_dir=audio_dir,
        taxonomy=_optional(root, cfg.taxonomy, (TAXONOMY_FILE,), "taxonomy", Path.is_file),
        sample_submission=_optional(root, cfg.sample_submission, (SAMPLE_SUBMISSION_FILE,), "sample_submission", Path.is_file),
        scored_birds=_optional(root, cfg.scored_birds, (SCORED_BIRDS_FILE,), "scored_birds", Path.is_file),
        test_rows=_optional(root, None, (TEST_ROWS_FILE,), "", Path.is_file),
        soundscape_labels=labels,
        labelled_soundscapes=labelled,
        unlabeled_soundscapes=unlabeled,
        test_soundscapes=_optional(root, None, (TEST_DIR,), "", Path.is_dir),
    )
    name = _year(**layout)
    label_folders = cfg.label_folders if cfg.label_folders is not None else audio_dir.name == "train_short_audio"
    sample = layout["sample_submission"]
    return DatasetLayout(name=name, label_folders=label_folders, sample_has_classes=bool(sample and _has_class_columns(sample)), **layout)


def _year(root: Path, metadata: Path, audio_dir: Path, **parts: Path | None) -> str:
    """The competition whose download this looks like, from the parts only it shipped."""
    if audio_dir.name == "train_short_audio" or (root / LABELLED_SOUNDSCAPES[0][1]).is_file():
        return "2021"
    if parts["scored_birds"]:
        return "2022"
    if metadata.name == "train.csv":
        return "2025"
    if parts["sample_submission"] and (root / UNLABELED_DIRS[0]).is_dir():
        return "2024"
    if parts["sample_submission"]:
        return "2023"
    return "birdpipe"


def _labelled_soundscapes(root: Path, cfg: DatasetConfig) -> tuple[Path | None, Path | None]:
    if cfg.soundscape_labels or cfg.labelled_soundscapes:
        if not (cfg.soundscape_labels and cfg.labelled_soundscapes):
            raise ValueError("[dataset] soundscape_labels and labelled_soundscapes are set together or not at all")
        return (
            _optional(root, cfg.labelled_soundscapes, (), "labelled_soundscapes", Path.is_dir),
            _optional(root, cfg.soundscape_labels, (), "soundscape_labels", Path.is_file),
        )
    for folder, labels in LABELLED_SOUNDSCAPES:
        if (root / folder).is_dir() and (root / labels).is_file():
            return root / folder, root / labels
    return None, None


def _optional(root: Path, override: str | None, names, key: str, exists) -> Path | None:
    if override:
        path = root / override
        if not exists(path):
            raise FileNotFoundError(f"{path}: not found ([dataset] {key} = {override!r})")
        return path
    return next((root / n for n in names if exists(root / n)), None)


def _required(root: Path, override: str | None, names: tuple[str, ...], key: str, exists) -> Path:
    path = _optional(root, override, names, key, exists)
    if path is None:
        raise FileNotFoundError(f"{root}: no {' or '.join(names)} found (set [dataset] {key} for another name)")
    return path


def _has_class_columns(sample_submission: Path) -> bool:
    """A probability template (row_id + one column per class), not a `row_id,target` / `row_id,birds` one."""
    try:
        columns = pl.read_csv(sample_submission, n_rows=0, infer_schema=False).columns
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{sample_submission}: not a readable CSV: {exc}") from None
    return columns[1:] not in (["target"], ["birds"], [])


def _has_audio(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in AUDIO_SUFFIXES for p in folder.rglob("*"))


def _relative(path: Path | None, root: Path) -> str | None:
    return None if path is None else str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
