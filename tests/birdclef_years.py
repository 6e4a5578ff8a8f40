"""Each BirdCLEF year's download, rebuilt in tmp from the tiny synthetic dataset.

Same recordings and soundscapes, laid out and written the way that year's competition
shipped them (file names, columns, class-list source, soundscape folders), with the quirks of
the real files: `['']` and `[]` for empty lists, a secondary list naming its own primary
label, latitude empty or `None`, half and zero ratings, trailing spaces, unicode names,
multi-item lists quoted in the CSV, and 2025's numeric iNaturalist labels.
"""

from __future__ import annotations

import ast
import csv
import json
import shutil
from pathlib import Path

import polars as pl

YEARS = ("2021", "2022", "2023", "2024", "2025")
#: 2025 names some classes by iNaturalist taxon id.
NUMERIC = ("1139490", "476537")

#: What each year's fixture holds, for the tests to compare against.
EXPECTED = {
    "2021": {"metadata_file": "train_metadata.csv", "audio_dir": "train_short_audio", "class_source": "sorted primary labels of train_metadata.csv", "quarantined": 0, "missing_audio": 0, "format": "2021"},
    "2022": {"metadata_file": "train_metadata.csv", "audio_dir": "train_audio", "class_source": "sorted primary labels of train_metadata.csv", "quarantined": 1, "missing_audio": 0, "format": "2022"},
    "2023": {"metadata_file": "train_metadata.csv", "audio_dir": "train_audio", "class_source": "sample_submission.csv columns", "quarantined": 0, "missing_audio": 0, "format": "2023"},
    "2024": {"metadata_file": "train_metadata.csv", "audio_dir": "train_audio", "class_source": "sample_submission.csv columns", "quarantined": 0, "missing_audio": 1, "format": "2024"},
    "2025": {"metadata_file": "train.csv", "audio_dir": "train_audio", "class_source": "taxonomy.csv", "quarantined": 0, "missing_audio": 0, "format": "2025"},
}  # fmt: skip


def write_year(year: str, source: Path, out: Path) -> Path:
    """`source` (a `birdpipe synth` dataset) laid out as BirdCLEF `year` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    meta = pl.read_csv(source / "train_metadata.csv", infer_schema=False)
    labels = sorted(meta["primary_label"].unique())
    rename = dict(zip(labels, NUMERIC)) if year == "2025" else {}
    meta = meta.with_columns(
        pl.col("primary_label").replace(rename),
        pl.col("filename").map_elements(lambda f: f"{rename.get(f.split('/')[0], f.split('/')[0])}/{f.split('/')[1]}", pl.String),
        pl.col("secondary_labels").map_elements(lambda s: str([rename.get(x, x) for x in ast.literal_eval(s)]), pl.String),
    )
    classes = sorted(rename.get(c, c) for c in labels)
    audio_dir = out / ("train_short_audio" if year == "2021" else "train_audio")
    for old, new in zip(pl.read_csv(source / "train_metadata.csv", infer_schema=False)["filename"], meta["filename"]):
        (audio_dir / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "train_audio" / old, audio_dir / new)
    rows = _quirky(meta.to_dicts(), year)
    _write_metadata(year, out, rows)
    _write_class_files(year, out, meta, classes)
    _write_soundscapes(year, source, out, classes)
    return out


def _quirky(rows: list[dict], year: str) -> list[dict]:
    """The oddities of the real files, spread over the first rows."""
    empty = "['']" if year == "2025" else "[]"
    for i, row in enumerate(rows):
        row["secondary_labels"] = row["secondary_labels"] if row["secondary_labels"] != "[]" else empty
        row["type"] = "['call', 'song']" if i % 3 == 0 else row["type"]  # a quoted multi-item list
        row["rating"] = ("0", "2.5", "4.5", "5.0")[i % 4]
        row["latitude"] = ("", "None")[i % 2] if i % 5 == 0 else row["latitude"]
        row["common_name"] = row["common_name"] + " " if i % 2 else row["common_name"]
    rows[0]["secondary_labels"] = str([rows[0]["primary_label"]])  # its own label as secondary
    rows[1]["common_name"] = "Pic épeiche "  # unicode
    rows[2]["secondary_labels"] = "['zzzzz1']"  # outside the class list
    rows[3]["type"] = "[\"alarm call\", 'flight call']"  # not plain single quotes: the per-row fallback
    if year == "2022":
        rows[4]["secondary_labels"] = "['aaa'"  # malformed: quarantined
    if year == "2024":
        rows[5]["filename"] = rows[5]["filename"].replace(".ogg", "-gone.ogg")  # audio missing
    return rows


def _write_metadata(year: str, out: Path, rows: list[dict]) -> None:
    if year == "2021":
        columns = ["primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name", "common_name",
                   "author", "date", "filename", "license", "rating", "time", "url"]  # fmt: skip
        for row in rows:
            row |= {"filename": row["filename"].split("/")[1], "date": "2019-05-04", "time": "08:00"}
    elif year == "2022":
        columns = ["primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name", "common_name",
                   "author", "license", "rating", "time", "url", "filename"]  # fmt: skip
        for i, row in enumerate(rows):
            row["time"] = ("?", "9:30", "10:00am", "xx:xx")[i % 4]
    elif year == "2025":
        columns = ["primary_label", "secondary_labels", "type", "filename", "collection", "rating", "url", "latitude",
                   "longitude", "scientific_name", "common_name", "author", "license"]  # fmt: skip
        for i, row in enumerate(rows):
            row["collection"] = ("XC", "iNat", "CSA")[i % 3]
    else:
        columns = ["primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name", "common_name",
                   "author", "license", "rating", "url", "filename"]  # fmt: skip
    name = "train.csv" if year == "2025" else "train_metadata.csv"
    with (out / name).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_class_files(year: str, out: Path, meta: pl.DataFrame, classes: list[str]) -> None:
    names = meta.unique("primary_label", keep="first").sort("primary_label")
    if year == "2025":
        names.select(
            "primary_label",
            pl.Series("inat_taxon_id", [c if c.isdigit() else "" for c in names["primary_label"]]),
            "scientific_name",
            "common_name",
            pl.Series("class_name", ["Amphibia" if c.isdigit() else "Aves" for c in names["primary_label"]]),
        ).write_csv(out / "taxonomy.csv")
    if year in ("2022", "2023", "2024"):  # the whole eBird taxonomy: not the class list
        text = "TAXON_ORDER,CATEGORY,SPECIES_CODE,PRIMARY_COM_NAME,SCI_NAME\r\n" + "".join(
            f"{i},species,{r['primary_label']},{r['common_name']},{r['scientific_name']}\r\n" for i, r in enumerate(names.to_dicts())
        ) + "99,species,zzzzz1,Other Bird,Alia avis\r\n"
        (out / "eBird_Taxonomy_v2021.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    if year in ("2023", "2024", "2025"):
        order = list(reversed(classes)) if year != "2025" else classes  # its own order, not sorted
        pl.DataFrame({"row_id": ["soundscape_1_5"], **{c: [0.0] for c in order}}).write_csv(out / "sample_submission.csv")
    if year == "2022":
        (out / "scored_birds.json").write_text(json.dumps(classes[:2]))
        pl.DataFrame({"row_id": ["soundscape_1_x_5"], "target": [False]}).write_csv(out / "sample_submission.csv")


def _write_soundscapes(year: str, source: Path, out: Path, classes: list[str]) -> None:
    scapes = sorted((source / "test_soundscapes").glob("*.ogg"))
    labels = pl.read_csv(source / "test_soundscape_labels.csv", schema_overrides={"soundscape_id": pl.String, "birds": pl.String})
    if year == "2021":  # labelled train soundscapes named <audio_id>_<site>_<date>, one test soundscape
        rows = []
        for i, path in enumerate(scapes):
            audio_id, site = str(7019 + i), ("COR", "SSW")[i % 2]
            _copy(path, out / "train_soundscapes" / f"{audio_id}_{site}_2019050{i + 1}.ogg")
            for end, birds in labels.filter(pl.col("soundscape_id") == path.stem).select("end_seconds", "birds").iter_rows():
                rows.append({"row_id": f"{audio_id}_{site}_{end}", "site": site, "audio_id": audio_id, "seconds": end, "birds": birds})
        pl.DataFrame(rows).write_csv(out / "train_soundscape_labels.csv")
        _copy(scapes[0], out / "test_soundscapes" / "2782_SSW_20170701.ogg")
        return
    if year == "2022":
        _copy(scapes[0], out / "test_soundscapes" / "soundscape_453028782.ogg")
        scored = classes[:2]
        rows = [{"row_id": f"soundscape_453028782_{b}_{end}", "file_id": "soundscape_453028782", "bird": b, "end_time": end}
                for end in range(5, 30, 5) for b in scored]  # fmt: skip
        pl.DataFrame(rows).write_csv(out / "test.csv")
        return
    (out / "test_soundscapes").mkdir()  # Kaggle's public test folder is empty from 2023 on
    if year == "2023":
        _copy(scapes[0], out / "test_soundscapes" / "soundscape_29201.ogg")
    if year == "2024":
        _copy(scapes[0], out / "unlabeled_soundscapes" / "460830.ogg")
    if year == "2025":
        for path in scapes:
            _copy(path, out / "train_soundscapes" / f"H02_20230420_{path.stem[-5:]}.ogg")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
