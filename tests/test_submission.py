"""Every submission format: schema checks, Raven tables, and a round trip through `birdpipe score`."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from birdpipe.evaluation import metrics
from birdpipe.cli import main
from birdpipe.config import MelConfig, SubmissionConfig
from birdpipe.inference.formats import (
    FORMATS,
    check_submission,
    expected_rows,
    raven_tables,
    solution_from_labels,
    write_submission,
)
from birdpipe.evaluation.thresholds import Thresholds

CLASSES = ["amecro", "norcar", "bkcchi", "rewbla"]
SOUNDSCAPES = ["7019_COR_20190904", "sc_b"]  # the first named like a 2021 test file


@pytest.fixture
def truth():
    rng = np.random.default_rng(3)
    rows = []
    for sid in SOUNDSCAPES:
        for end in range(5, 65, 5):
            birds = [c for c in CLASSES[:3] if rng.random() < 0.35]  # rewbla never present
            rows.append((f"{sid}_{end}", sid, end, " ".join(birds) or "nocall"))
    labels = pl.DataFrame(rows, schema=["row_id", "soundscape_id", "end_seconds", "birds"], orient="row")
    y = np.array([[c in b.split() for c in CLASSES] for b in labels["birds"]], dtype=int)
    probs = np.clip(0.45 * y + rng.random(y.shape) * 0.6, 0, 1)
    preds = labels.select("row_id", "soundscape_id", "end_seconds").hstack(pl.DataFrame(probs, schema=CLASSES))
    return labels, y, probs, preds


def _thresholds(value: float = 0.5) -> Thresholds:
    th = Thresholds.constant(value)
    return Thresholds(**{**th.__dict__, "per_species": {"norcar": 0.4}})


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_format_round_trips_through_score(tmp_path, truth, fmt, capsys):
    labels, y, probs, preds = truth
    th = _thresholds()
    sub = write_submission(preds, CLASSES, th, SubmissionConfig(format=fmt), tmp_path / "sub.csv")
    solution_from_labels(labels, CLASSES, fmt).write_csv(tmp_path / "sol.csv")
    n_rows = expected_rows(len(preds), fmt, len(CLASSES))
    assert check_submission(sub, fmt, CLASSES, n_rows) == []
    assert check_submission(tmp_path / "sol.csv", fmt, CLASSES, n_rows) == []

    metric = f"birdclef{fmt}"
    args = ["score", "--solution", str(tmp_path / "sol.csv"), "--submission", str(sub), "--metric", metric]
    assert main(args) == 0
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    # the file route and the matrix route (out-of-fold scores) agree
    expected = metrics.oof_scores(y, probs, CLASSES, threshold=th.vector(CLASSES))[metric]
    assert printed == pytest.approx(expected, abs=1e-6)
    # and the truth scores perfectly against itself
    assert metrics.score_files(tmp_path / "sol.csv", tmp_path / "sol.csv", metric) == pytest.approx(1.0)


def test_2021_and_2022_row_ids(truth):
    labels, *_ = truth
    sol21 = solution_from_labels(labels, CLASSES, "2021")
    assert sol21["row_id"][0] == "7019_COR_5" and sol21["row_id"][-1] == "sc_b_60"
    sol22 = solution_from_labels(labels, CLASSES, "2022", scored_birds=["norcar", "amecro"])
    assert sol22.height == 2 * labels.height
    assert sol22["row_id"][:2].to_list() == ["7019_COR_20190904_norcar_5", "7019_COR_20190904_amecro_5"]
    with pytest.raises(ValueError, match="scored birds not among"):
        solution_from_labels(labels, CLASSES, "2022", scored_birds=["zzz"])
    with pytest.raises(ValueError, match=r"lack column\(s\) \['soundscape_id'\]"):
        solution_from_labels(labels.drop("soundscape_id"), CLASSES, "2025")
    with pytest.raises(ValueError, match="unknown species"):
        solution_from_labels(labels.with_columns(birds=pl.lit("zzz")), CLASSES, "2025")


def test_check_submission_finds_problems(tmp_path, truth):
    labels, _, _, preds = truth
    path = tmp_path / "s.csv"
    wide = preds.select("row_id", *CLASSES)
    wide.with_columns(pl.lit(float("nan")).alias("norcar")).write_csv(path)
    assert check_submission(path, "2025", CLASSES, len(preds)) == [f"{len(preds)} missing or non-finite probabilities"]
    wide.with_columns(pl.lit(1.5).alias("norcar")).write_csv(path)
    assert check_submission(path, "2025", CLASSES, len(preds)) == ["probabilities outside [0, 1]"]
    wide.drop("rewbla").write_csv(path)
    assert "differ from" in check_submission(path, "2024", CLASSES, len(preds))[0]
    wide.head(3).write_csv(path)
    assert check_submission(path, "2023", CLASSES, len(preds)) == [f"3 rows, expected {len(preds)}"]
    pl.DataFrame({"row_id": ["a_5", "a_5"], "birds": ["zzz", "nocall amecro"]}).write_csv(path)
    assert check_submission(path, "2021", CLASSES, 2) == [
        "row_id has empty or duplicated values", "unknown species ['zzz']", "1 rows mix 'nocall' with species"
    ]
    pl.DataFrame({"row_id": ["a_norcar_5", "a_amecro_5"], "target": ["True", "0.3"]}).write_csv(path)
    assert check_submission(path, "2022", CLASSES, 2, scored_birds=["norcar"]) == [
        "target must be True or False", "row_id must be <soundscape>_<scored bird>_<end_s>; unscored: ['amecro']"
    ]


def test_raven_tables(tmp_path, truth):
    *_, probs, preds = truth
    mel = MelConfig()
    paths = raven_tables(preds, CLASSES, _thresholds(0.8), tmp_path, mel)
    assert [p.name for p in paths] == [f"{s}.birdpipe.selection.table.txt" for s in SOUNDSCAPES]
    table = pl.read_csv(paths[1], separator="\t")
    assert table.columns[:5] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)"]
    assert {"Low Freq (Hz)", "High Freq (Hz)", "Species", "Score"} <= set(table.columns)
    second = probs[preds["soundscape_id"].to_numpy() == "sc_b"]
    thr = _thresholds(0.8).vector(CLASSES)
    assert table.height == int((second >= thr).sum())
    assert (table["End Time (s)"] - table["Begin Time (s)"] == 5.0).all()
    assert (table["Score"] >= 0.4).all() and table["Low Freq (Hz)"][0] == mel.fmin
