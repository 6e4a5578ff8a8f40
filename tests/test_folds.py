import polars as pl
import pytest

from birdpipe.config import FoldConfig
from birdpipe.data.folds import ALWAYS_TRAIN, always_train_species, assign_folds, fold_summary


def _recordings(counts: dict[str, int]) -> pl.DataFrame:
    rows = [(f"{sp}/XC{sp}{i}.ogg", sp, f"author{i % 3}") for sp, n in counts.items() for i in range(n)]
    return pl.DataFrame(rows, schema=["filename", "primary_label", "author"], orient="row")


def test_every_recording_gets_one_fold_and_classes_are_spread():
    recs = _recordings({"aaa": 10, "bbb": 10, "ccc": 5, "ddd": 1})
    folds = assign_folds(recs, FoldConfig(n_folds=5, seed=0, always_train_below=0))
    assert folds.height == recs.height and set(folds["fold"]) == set(range(5))
    assert sorted(folds["filename"]) == sorted(recs["filename"])
    per_class = folds.filter(pl.col("primary_label") == "aaa").group_by("fold").len()
    assert per_class["len"].to_list() == [2] * 5
    assert fold_summary(folds)["recordings"].sum() == recs.height


def test_deterministic_for_a_seed_and_independent_of_row_order():
    recs = _recordings({"aaa": 7, "bbb": 6})
    a = assign_folds(recs, FoldConfig(n_folds=3, seed=1))
    b = assign_folds(recs.reverse(), FoldConfig(n_folds=3, seed=1))
    c = assign_folds(recs, FoldConfig(n_folds=3, seed=2))
    assert a.equals(b)
    assert not a.equals(c)


def test_group_column_keeps_groups_together():
    recs = _recordings({"aaa": 9, "bbb": 9})
    folds = assign_folds(recs, FoldConfig(n_folds=3, seed=0, group_column="author")).join(recs, on=["filename", "primary_label"])
    assert (folds.group_by("author").agg(pl.col("fold").n_unique())["fold"] == 1).all()


def test_too_few_recordings_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        assign_folds(_recordings({"aaa": 3}), FoldConfig(n_folds=5))


def test_rare_species_can_stay_in_every_training_set():
    from birdpipe.training.samples import fold_windows

    recs = _recordings({"aaa": 10, "bbb": 6, "ccc": 2, "ddd": 1})
    folds = assign_folds(recs, FoldConfig(n_folds=3, seed=0, always_train_below=3))
    always = folds.filter(pl.col("fold") == ALWAYS_TRAIN)
    assert sorted(always["primary_label"].unique()) == ["ccc", "ddd"] and always.height == 3
    assert set(folds.filter(pl.col("fold") >= 0)["fold"]) == {0, 1, 2}
    windows = recs.select("filename").with_row_index("row").with_columns(
        pl.lit(0).alias("window_index"), pl.lit(0.0).alias("start_seconds"), pl.lit(5.0).alias("end_seconds")
    )
    meta = recs.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("secondary_labels"))
    for k in range(3):
        train, valid = fold_windows(windows, folds, meta, k)
        assert set(always["filename"]) <= set(train["filename"]) and not set(always["filename"]) & set(valid["filename"])


def test_by_default_species_rarer_than_the_folds_stay_in_every_training_set():
    recs = _recordings({"aaa": 10, "bbb": 5, "ccc": 4, "ddd": 1})
    folds = assign_folds(recs, FoldConfig(n_folds=5, seed=0))
    assert FoldConfig(n_folds=5).always_train_threshold == 5
    assert always_train_species(folds).rows() == [("ccc", 4), ("ddd", 1)]
    assert set(folds.filter(pl.col("fold") >= 0)["primary_label"]) == {"aaa", "bbb"}
    assert set(folds["fold"]) == {ALWAYS_TRAIN, 0, 1, 2, 3, 4}


@pytest.mark.parametrize("group_column", [None, "author"])
def test_held_out_species_all_rarer_than_the_folds_do_not_crash_the_split(group_column):
    # scikit-learn's stratified splitters refuse when no species has a recording per fold.
    recs = _recordings({"aaa": 2, "bbb": 2, "ccc": 2, "ddd": 1}).with_row_index().with_columns(
        pl.format("author{}", pl.col("index") % 4).alias("author")
    ).drop("index")
    cfg = FoldConfig(n_folds=3, seed=0, always_train_below=0, group_column=group_column)
    folds = assign_folds(recs, cfg)
    assert sorted(folds["filename"]) == sorted(recs["filename"]) and set(folds["fold"]) == {0, 1, 2}
    if group_column:
        grouped = folds.join(recs, on=["filename", "primary_label"]).group_by("author").agg(pl.col("fold").n_unique())
        assert (grouped["fold"] == 1).all()
    else:
        assert fold_summary(folds)["recordings"].to_list() == [3, 2, 2]
        assert folds.group_by("primary_label").agg(pl.col("fold").n_unique() == pl.len())["fold"].all()  # spread
    assert assign_folds(recs.reverse(), cfg).equals(folds)


def test_a_split_left_without_recordings_to_validate_names_the_settings():
    recs = _recordings({"aaa": 2, "bbb": 2, "ccc": 2})  # every species rarer than 5 folds
    with pytest.raises(ValueError, match=r"0 recordings to validate cannot fill 5 folds \(\[folds\] n_folds = 5; 6 recordings .* "
                       r"\(\[folds\] always_train_below = unset, i.e. n_folds\)\): lower n_folds or always_train_below"):
        assign_folds(recs, FoldConfig(n_folds=5))
    with pytest.raises(ValueError, match=r"\[folds\] group_column = 'author': 3 groups to validate cannot fill 5 folds"):
        assign_folds(_recordings({"aaa": 9, "bbb": 9}), FoldConfig(n_folds=5, group_column="author"))
