"""Every BirdCLEF year's download opens as it is: detection, class lists, quirks, `birdpipe validate`,
the submission the year expects, and the whole graph on the 2021 and 2025 layouts."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from birdclef_years import EXPECTED, NUMERIC, YEARS, write_year
from birdpipe.cli import main
from birdpipe.data.config import DatasetConfig
from birdpipe.data.layout import detect_layout
from birdpipe.data.metadata import load_classes, load_dataset_metadata, parse_list_column
from birdpipe.data.soundscape_labels import read_soundscape_labels
from birdpipe.inference.formats import format_frame, window_row_id
from birdpipe.inference.soundscapes import submission_template


@pytest.fixture(scope="module")
def years(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("birdclef-years")
    return {year: write_year(year, tiny_dataset, root / year) for year in YEARS}


@pytest.mark.parametrize("year", YEARS)
def test_validate_reports_each_year_as_downloaded(years, year, capsys):
    assert main(["validate", "--data", str(years[year]), "--json", "--workers", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = EXPECTED[year]
    assert report["layout"] == year
    assert {k: report[k] for k in ("metadata_file", "audio_dir", "class_source", "quarantined", "missing_audio")} == {
        k: want[k] for k in ("metadata_file", "audio_dir", "class_source", "quarantined", "missing_audio")
    }
    assert report["classes"] == 4 and report["submission_format"] == want["format"]
    assert report["recordings"] == 24 - want["quarantined"] - want["missing_audio"]
    assert report["unknown_secondary_labels"] == {"zzzzz1": 1}


def test_validate_lists_reasons_and_exits_1_when_nothing_is_trainable(years, tmp_path, capsys):
    assert main(["validate", "--data", str(years["2022"]), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "row 4: " in out and "secondary_labels: " in out  # the malformed list literal, with its row
    data = tmp_path / "empty"
    (data / "train_audio").mkdir(parents=True)
    (data / "train.csv").write_text("primary_label,secondary_labels,filename\nabc,[],abc/XC1.ogg\n")
    assert main(["validate", "--data", str(data), "--json", "--workers", "1"]) == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["recordings"], report["missing_audio"], report["classes"]) == (0, 1, 1)


def test_a_folder_without_metadata_fails_naming_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no train_metadata.csv or train.csv found \(set \[dataset\] metadata"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"meta.csv: not found \(\[dataset\] metadata = 'meta.csv'\)"):
        detect_layout(tmp_path, DatasetConfig(metadata="meta.csv"))


def test_overrides_replace_detection(years, tmp_path):
    layout = detect_layout(years["2023"], DatasetConfig(taxonomy="eBird_Taxonomy_v2021.csv", sample_submission="sample_submission.csv"))
    with pytest.raises(ValueError, match="missing required column"):  # the eBird file has no primary_label column
        load_classes(layout)


def test_quirks_of_the_real_files(years):
    classes, meta = load_dataset_metadata(detect_layout(years["2025"]))
    rec = meta.recordings
    assert classes.labels[:2] == list(NUMERIC) and rec["primary_label"].dtype == pl.String
    assert set(NUMERIC) <= set(rec["primary_label"].to_list())
    first = rec.row(0, named=True)
    assert first["secondary_labels"] == []  # its own label listed as secondary, dropped
    assert rec["secondary_labels"].list.len().max() <= 1 and not rec["secondary_labels"].list.contains("").any()  # ['']
    assert rec["type"].to_list()[0] == ["call", "song"] and rec["type"].to_list()[3] == ["alarm call", "flight call"]
    assert sorted(rec["rating"].unique()) == [0.0, 2.5, 4.5, 5.0]
    assert rec["latitude"][0] is None and rec["latitude"][5] is None
    assert "Pic épeiche " in rec["common_name"].to_list()


def test_2021_bare_names_are_read_from_label_folders(years):
    layout = detect_layout(years["2021"])
    assert layout.label_folders and layout.name == "2021"
    _, meta = load_dataset_metadata(layout)
    assert all((layout.audio_dir / f).is_file() for f in meta.recordings["filename"])
    assert meta.recordings["filename"][0].startswith(meta.recordings["primary_label"][0] + "/")


def test_class_order_follows_the_sample_submission(years):
    layout = detect_layout(years["2023"])
    header = pl.read_csv(layout.sample_submission, n_rows=0).columns
    assert load_classes(layout).labels == header[1:] != sorted(header[1:])


def test_list_literals_vectorised_with_a_per_row_fallback():
    texts = pl.Series("t", ["['a', 'b']", None, "", "['']", "[]", " [ 'q' ] ", '["x y", \'z\']', "['a'", "[1, 2]"])
    values, errors = parse_list_column(texts)
    assert values.to_list()[:7] == [["a", "b"], [], [], [], [], ["q"], ["x y", "z"]]
    assert values.to_list()[7:] == [None, None] and sorted(errors) == [7, 8]
    assert "not a list of strings" in errors[8]


def test_2021_soundscape_labels_meet_their_files(years):
    layout = detect_layout(years["2021"])
    labels = read_soundscape_labels(layout.soundscape_labels, layout.labelled_soundscapes)
    stems = {p.stem for p in layout.labelled_soundscapes.glob("*.ogg")}
    assert set(labels["soundscape_id"].to_list()) == stems and labels["end_seconds"].dtype == pl.Int64
    assert layout.soundscapes() == layout.root / "test_soundscapes"


def _predictions(ids: list[str], classes: list[str]) -> pl.DataFrame:
    keys = pl.DataFrame({"soundscape_id": [s for s in ids for _ in range(5)], "end_seconds": list(range(5, 30, 5)) * len(ids)})
    probs = np.random.default_rng(0).random((keys.height, len(classes)))
    return keys.with_columns(window_row_id()).select("row_id", "soundscape_id", "end_seconds").hstack(pl.DataFrame(probs, schema=classes))


def test_submission_follows_the_dataset(years):
    layout = detect_layout(years["2024"])
    template = submission_template(layout)
    classes = sorted(template.columns)
    wide = format_frame(_predictions(["460830"], classes), classes, "2024", np.full(4, 0.5), template=template)
    assert wide.columns == ["row_id", *template.columns]

    layout = detect_layout(years["2022"])
    template, classes = submission_template(layout), load_classes(layout).labels
    scored = json.loads(layout.scored_birds.read_text())
    rows = format_frame(_predictions(["soundscape_453028782"], classes), classes, "2022", np.full(4, 0.5), scored, template)
    assert rows["row_id"].to_list() == pl.read_csv(layout.test_rows)["row_id"].to_list() and rows["target"].null_count() == 0

    layout = detect_layout(years["2021"])
    birds = format_frame(_predictions(["2782_SSW_20170701"], load_classes(layout).labels), load_classes(layout).labels, "2021", np.full(4, 0.5))
    assert birds.columns == ["row_id", "birds"] and birds["row_id"][0] == "2782_SSW_5"


@pytest.mark.slow
@pytest.mark.parametrize("year", ["2021", "2025"])
def test_whole_graph_on_a_year_layout(years, year, tmp_path, capsys):
    import dagster as dg

    from assets.demo import report
    from test_pipeline import CONFIG, _defs, _metadata

    def _run(defs, instance, job, partition_key=None):
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition_key)
        assert result.success
        failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
        assert failed <= {"labels_in_taxonomy"}, failed  # the fixture's secondary label outside the class list warns
        return result

    data = years[year]
    config = CONFIG.replace(submission=CONFIG.submission.replace(format=None), train=CONFIG.train.replace(epochs=8))
    defs = _defs(data, tmp_path, config)
    with dg.DagsterInstance.ephemeral() as instance:
        _run(defs, instance, "prepare_job")
        for fold in [str(k) for k in range(config.folds.n_folds)]:
            _run(defs, instance, "train_job", fold)
        evaluation = _run(defs, instance, "evaluate_job")
        report(config, instance, evaluation)
    printed = capsys.readouterr().out

    layout = detect_layout(data)
    classes = load_classes(layout).labels
    folds = pl.read_parquet(next((tmp_path / "work").rglob("folds.parquet")))
    assert folds["primary_label"].dtype == pl.String and set(folds["primary_label"].to_list()) <= set(classes)
    sub = _metadata(evaluation, "submission")
    assert sub["format"] == year
    header = pl.read_csv(sub["submission_csv"], n_rows=0).columns
    if year == "2025":  # numeric iNaturalist labels survive as the template's columns
        assert header == pl.read_csv(layout.sample_submission, n_rows=0).columns and set(NUMERIC) <= set(header)
        materialized = {e.asset_key.path[-1] for e in evaluation.get_asset_materialization_events()}
        assert "soundscape_validation" not in materialized  # 2025's train soundscapes are unlabeled
    else:
        assert header == ["row_id", "birds"]
        assert pl.read_csv(sub["submission_csv"])["row_id"][0] == "2782_SSW_5"
        val = _metadata(evaluation, "soundscape_validation")
        assert {"soundscape_birdclef2021", "soundscape_birdclef2025"} <= set(val)
        assert val["year_format"] == "2021" and 0.0 <= val["soundscape_birdclef2021"] <= 1.0 and val["soundscape_birdclef2025"] > 0.5
        assert f"birdclef2021 {val['soundscape_birdclef2021']:.4f}" in printed  # in the make run report, beside the out-of-fold scores
        assert "--metric birdclef2021" in printed
