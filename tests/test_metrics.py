"""Every year's metric against a computation written independently here (by hand or pairwise)."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from birdpipe.evaluation import metrics
from birdpipe.cli import main

CLASSES = ["aaa", "bbb", "ccc", "ddd"]


def _set_f1(true: set, pred: set) -> float:
    tp = len(true & pred)
    return 2 * tp / (len(true) + len(pred))


def _pairwise_auc(t: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[t == 1], s[t == 0]
    wins = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    return float(np.mean(wins))


def _ap_by_hand(t: np.ndarray, s: np.ndarray) -> float:
    """Step-wise AP: mean over positives of precision at that positive's score (ties grouped)."""
    precisions = []
    for score in s[t == 1]:
        above = s >= score
        precisions.append(t[above].sum() / above.sum())
    return float(np.mean(precisions))


@pytest.fixture
def matrices():
    rng = np.random.default_rng(7)
    y_true = (rng.random((40, 4)) < 0.3).astype(int)
    y_true[:, 3] = 0  # a species without positives
    y_true[0, 3] = 0
    y_prob = np.clip(0.4 * y_true + rng.random((40, 4)) * 0.7, 0, 1).round(2)  # ties on purpose
    return y_true, y_prob


# --- 2021 ----------------------------------------------------------------------------------


def test_2021_by_hand_with_nocall():
    sol = pl.DataFrame({"row_id": ["s_5", "s_10", "s_15", "s_20"], "birds": ["aaa", "nocall", "aaa bbb", "ccc"]})
    sub = pl.DataFrame(
        {"row_id": ["s_20", "s_5", "s_10", "s_15"], "birds": ["nocall", "aaa ccc", "nocall", "bbb nocall"]}
    )
    expected = np.mean([_set_f1({"aaa"}, {"aaa", "ccc"}), 1.0, _set_f1({"aaa", "bbb"}, {"bbb", "nocall"}), 0.0])
    assert metrics.birdclef2021(sol, sub) == pytest.approx(expected)


def test_2021_matrix_form_matches_sets(matrices):
    y_true, y_prob = matrices
    pred = y_prob >= 0.5
    sets = lambda row: {CLASSES[i] for i in np.flatnonzero(row)} or {"nocall"}  # noqa: E731
    expected = np.mean([_set_f1(sets(t), sets(p)) for t, p in zip(y_true, pred)])
    assert metrics.oof_scores(y_true, y_prob, CLASSES)["birdclef2021"] == pytest.approx(expected)


# --- 2022 ----------------------------------------------------------------------------------


def test_2022_weighted_accuracy_by_hand():
    # bird aaa: 2 positives (1 hit), 2 negatives (2 correct) -> (0.5 + 1) / 2
    # bird bbb: no positives -> not scored, whatever is predicted
    # bird ccc: 1 positive (hit), 3 negatives (1 false alarm) -> (1 + 2/3) / 2
    ids = [f"soundscape_1_{b}_{e}" for b in ("aaa", "bbb", "ccc") for e in (5, 10, 15, 20)]
    truth = [True, True, False, False, False, False, False, False, True, False, False, False]
    pred = [True, False, False, False, True, True, False, False, True, True, False, False]
    sol = pl.DataFrame({"row_id": ids, "target": truth})
    sub = pl.DataFrame({"row_id": ids[::-1], "target": pred[::-1]})
    assert metrics.birdclef2022(sol, sub) == pytest.approx(np.mean([0.75, (1 + 2 / 3) / 2]))


def test_2022_matrix_form_matches_hand(matrices):
    y_true, y_prob = matrices
    pred = y_prob >= 0.5
    per = []
    for c in range(3):  # column 3 has no positives
        t, p = y_true[:, c] == 1, pred[:, c]
        per.append(((t & p).sum() / t.sum() + (~t & ~p).sum() / (~t).sum()) / 2)
    assert metrics.oof_scores(y_true, y_prob, CLASSES)["birdclef2022"] == pytest.approx(np.mean(per))


# --- 2023 ----------------------------------------------------------------------------------


def test_2023_padded_cmap_by_hand(matrices):
    y_true, y_prob = matrices
    padded_t = np.vstack([y_true, np.ones((5, 4))])
    padded_s = np.vstack([y_prob, np.ones((5, 4))])
    expected = np.mean([_ap_by_hand(padded_t[:, c], padded_s[:, c]) for c in range(4)])
    assert metrics.oof_scores(y_true, y_prob, CLASSES)["birdclef2023"] == pytest.approx(expected)
    sol, sub = _wide(y_true), _wide(y_prob)
    assert metrics.score("birdclef2023", sol, sub) == pytest.approx(expected)


# --- 2024 / 2025 ---------------------------------------------------------------------------


def test_2024_2025_macro_auc_skips_columns_without_positives(matrices):
    y_true, y_prob = matrices
    expected = np.mean([_pairwise_auc(y_true[:, c], y_prob[:, c]) for c in range(3)])
    scores = metrics.oof_scores(y_true, y_prob, CLASSES)
    assert scores["birdclef2024"] == scores["birdclef2025"] == pytest.approx(expected)
    assert metrics.score("2025", _wide(y_true).to_pandas(), _wide(y_prob)) == pytest.approx(expected)


def test_macro_auc_leaves_out_all_positive_column():
    y_true = np.array([[1, 1], [0, 1], [1, 1]])
    y_prob = np.array([[0.9, 0.1], [0.2, 0.5], [0.3, 0.7]])
    assert metrics.macro_auc(y_true, y_prob) == pytest.approx(1.0)


def test_constant_predictions_score_chance():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = metrics.oof_scores(y, np.full(y.shape, 0.3), ["a", "b"])
    assert scores["birdclef2024"] == 0.5 and scores["birdclef2022"] == 0.5
    assert scores["birdclef2021"] == pytest.approx(0.25)  # only the nocall row is right


def test_per_species_table(matrices):
    y_true, y_prob = matrices
    table = metrics.per_species_table(y_true, y_prob, CLASSES)
    assert table.columns == ["species", "positives", "ap", "auc"]
    row = table.filter(pl.col("species") == "bbb").row(0, named=True)
    assert row["positives"] == y_true[:, 1].sum()
    assert row["auc"] == pytest.approx(_pairwise_auc(y_true[:, 1], y_prob[:, 1]))
    assert row["ap"] == pytest.approx(_ap_by_hand(y_true[:, 1], y_prob[:, 1]))
    empty = table.filter(pl.col("species") == "ddd").row(0, named=True)
    assert empty["ap"] is None and empty["auc"] is None


# --- files and errors ----------------------------------------------------------------------


def _wide(matrix: np.ndarray) -> pl.DataFrame:
    ids = {"row_id": [f"s_{5 * (i + 1)}" for i in range(len(matrix))]}
    return pl.DataFrame(ids | {c: matrix[:, i] for i, c in enumerate(CLASSES)})


def test_score_cli_prints_number_last(tmp_path, matrices, capsys):
    y_true, y_prob = matrices
    _wide(y_true).write_csv(tmp_path / "sol.csv")
    _wide(y_prob).write_csv(tmp_path / "sub.csv")
    args = ["score", "--solution", str(tmp_path / "sol.csv"), "--submission", str(tmp_path / "sub.csv")]
    assert main([*args, "--metric", "birdclef2024"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(last) == pytest.approx(metrics.oof_scores(y_true, y_prob, CLASSES)["birdclef2024"], abs=1e-6)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.head(30), "missing from submission s_155"),
        (lambda df: df.with_columns(pl.col("row_id").str.replace("s_5$", "x_5")), "not in solution x_5"),
        (lambda df: df.rename({"ccc": "zzz"}), "missing: ccc; unknown: zzz"),
        (lambda df: df.with_columns(extra=pl.lit(0.1)), "unknown: extra"),
        (lambda df: df.with_columns(pl.when(pl.col("row_id") == "s_10").then(None).otherwise(pl.col("bbb")).alias("bbb")), "column 'bbb' at row_id s_10"),
        (lambda df: df.with_columns(pl.when(pl.col("row_id") == "s_15").then(float("nan")).otherwise(pl.col("aaa")).alias("aaa")), "column 'aaa' at row_id s_15"),
        (lambda df: pl.concat([df, df.head(1)]), "duplicated row_id s_5"),
        (lambda df: df.with_columns(pl.col("aaa").cast(pl.String) + "x"), "non-numeric values in column(s) aaa"),
        (lambda df: df.with_columns(pl.when(pl.col("row_id") == "s_20").then(1.5).otherwise(pl.col("bbb")).alias("bbb")),
         "probabilities outside [0, 1] in column(s) bbb at row_id s_20"),
        (lambda df: df.with_columns(pl.col("ccc") - 2), "probabilities outside [0, 1] in column(s) ccc at row_id s_5"),
    ],
)
def test_score_files_bad_submission(tmp_path, matrices, edit, message):
    y_true, y_prob = matrices
    _wide(y_true).write_csv(tmp_path / "sol.csv")
    edit(_wide(y_prob)).write_csv(tmp_path / "sub.csv")
    with pytest.raises(ValueError, match="submission|row ids") as err:
        metrics.score_files(tmp_path / "sol.csv", tmp_path / "sub.csv", "birdclef2023")
    assert message in str(err.value)


def test_score_cli_reports_errors(tmp_path, capsys):
    pl.DataFrame({"row_id": ["a_5"], "birds": ["aaa"]}).write_csv(tmp_path / "sol.csv")
    pl.DataFrame({"row_id": ["a_5"], "target": ["True"]}).write_csv(tmp_path / "sub.csv")
    args = ["score", "--solution", str(tmp_path / "sol.csv"), "--submission", str(tmp_path / "sub.csv")]
    assert main([*args, "--metric", "birdclef2021"]) == 2
    assert "submission: birds columns do not match; missing: birds; unknown: target" in capsys.readouterr().err
    assert main([*args, "--metric", "f1"]) == 2
    assert "unknown metric 'f1'" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "nope.csv"), "--metric", "2021"]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err


def test_2022_rejects_non_boolean_target():
    sol = pl.DataFrame({"row_id": ["f_aaa_5"], "target": ["True"]})
    sub = pl.DataFrame({"row_id": ["f_aaa_5"], "target": ["0.7"]})
    with pytest.raises(ValueError, match="submission: target must be True/False; got 0.7"):
        metrics.birdclef2022(sol, sub)
