import polars as pl
import pytest

from birdpipe.data.metadata import load_taxonomy, load_train_metadata, parse_list_literal

HEADER = "primary_label,secondary_labels,type,latitude,longitude,scientific_name,common_name,author,license,rating,url,filename\n"


def _write(tmp_path, rows, taxonomy="primary_label,scientific_name,common_name\naaa,A a,Aa\nbbb,B b,Bb\n"):
    (tmp_path / "taxonomy.csv").write_text(taxonomy)
    (tmp_path / "train_metadata.csv").write_text(HEADER + "".join(rows))
    tax = load_taxonomy(tmp_path / "taxonomy.csv")
    return load_train_metadata(tmp_path / "train_metadata.csv", tax)


def test_parse_list_literal():
    assert parse_list_literal("['a', 'b']") == ["a", "b"]
    assert parse_list_literal("[]") == []
    assert parse_list_literal("") == []
    assert parse_list_literal(None) == []
    with pytest.raises(ValueError):
        parse_list_literal("[1, 2]")
    with pytest.raises(SyntaxError):
        parse_list_literal("['a'")


def test_good_rows_parse_lists_and_numbers(tmp_path):
    meta = _write(tmp_path, [
        "aaa,\"['bbb']\",\"['call', 'song']\",18.1,-66.9,A a,Aa,X,cc,4.5,u,aaa/XC1.ogg\n",
        "bbb,[],\"['song']\",,,B b,Bb,Y,cc,,u,bbb/XC2.ogg\n",
    ])
    df = meta.recordings
    assert df["secondary_labels"].to_list() == [["bbb"], []]
    assert df["type"].to_list() == [["call", "song"], ["song"]]
    assert df["rating"].to_list() == [4.5, 0.0]
    assert df["latitude"].dtype == pl.Float64 and df["latitude"][1] is None
    assert meta.quarantine.height == 0


def test_bad_rows_are_quarantined_with_reason(tmp_path):
    meta = _write(tmp_path, [
        "aaa,[],[],,,A a,Aa,X,cc,4,u,aaa/XC1.ogg\n",
        "zzz,[],[],,,Z z,Zz,X,cc,4,u,zzz/XC2.ogg\n",
        "bbb,\"['aaa'\",[],,,B b,Bb,X,cc,4,u,bbb/XC3.ogg\n",
        "aaa,[],[],,,A a,Aa,X,cc,4,u,aaa/XC1.ogg\n",
        "bbb,\"['qqq', 'aaa']\",[],,,B b,Bb,X,cc,4,u,bbb/XC4.ogg\n",
    ])
    reasons = dict(zip(meta.quarantine["row"].to_list(), meta.quarantine["reason"].to_list()))
    assert "not in the taxonomy" in reasons[1]
    assert reasons[2].startswith("secondary_labels")
    assert reasons[3] == "repeats row 0 (identical; that one is kept)" and 0 not in reasons
    assert meta.recordings["filename"].to_list() == ["aaa/XC1.ogg", "bbb/XC4.ogg"]
    assert meta.recordings["secondary_labels"].to_list() == [[], ["aaa"]]
    assert meta.unknown_secondary == {"qqq": 1}


def test_rows_naming_one_file_with_different_labels_are_all_quarantined(tmp_path):
    meta = _write(tmp_path, [
        "aaa,[],[],,,A a,Aa,X,cc,4,u,aaa/XC1.ogg\n",
        "bbb,[],[],,,B b,Bb,X,cc,4,u,aaa/XC1.ogg\n",
        "aaa,[],[],,,A a,Aa,X,cc,4,u,aaa/XC1.ogg\n",
    ])
    reasons = dict(zip(meta.quarantine["row"].to_list(), meta.quarantine["reason"].to_list()))
    assert reasons == {
        0: "filename also in row(s) [1, 2] with other primary_label, scientific_name, common_name",
        1: "filename also in row(s) [0, 2] with other primary_label, scientific_name, common_name",
        2: "filename also in row(s) [0, 1] with other primary_label, scientific_name, common_name",
    }
    assert meta.recordings.is_empty()


def test_bare_names_in_label_folders_repeat_only_within_one_label(tmp_path):
    """2021: `XC1.ogg` of two species are two files; an identical repeated row is still a repeat."""
    (tmp_path / "train_metadata.csv").write_text(HEADER + "".join([
        "aaa,[],[],,,A a,Aa,X,cc,4,u,XC1.ogg\n",
        "bbb,[],[],,,B b,Bb,X,cc,4,u,XC1.ogg\n",
        "aaa,[],[],,,A a,Aa,X,cc,4,u,XC1.ogg\n",
    ]))
    tax = pl.DataFrame({"primary_label": ["aaa", "bbb"]})
    meta = load_train_metadata(tmp_path / "train_metadata.csv", tax, label_folders=True)
    assert meta.quarantine.rows() == [(2, "aaa/XC1.ogg", "repeats row 0 (identical; that one is kept)")]
    assert meta.recordings["filename"].to_list() == ["aaa/XC1.ogg", "bbb/XC1.ogg"]


@pytest.mark.parametrize("name", ["../outside.ogg", "../../../../etc/hostname", "/etc/hostname", "aaa/../../x.ogg"])
def test_a_filename_leading_outside_the_audio_folder_is_quarantined(tmp_path, name):
    meta = _write(tmp_path, ["aaa,[],[],,,A a,Aa,X,cc,4,u,aaa/XC1.ogg\n", f"aaa,[],[],,,A a,Aa,X,cc,4,u,{name}\n"])
    assert meta.quarantine.rows() == [(1, name, "filename leads outside the audio folder")]
    assert meta.recordings["filename"].to_list() == ["aaa/XC1.ogg"]


def test_missing_columns_and_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="taxonomy.csv"):
        load_taxonomy(tmp_path / "taxonomy.csv")
    (tmp_path / "taxonomy.csv").write_text("species\naaa\n")
    with pytest.raises(ValueError, match=r"taxonomy.csv: missing required column\(s\) \['primary_label'\]"):
        load_taxonomy(tmp_path / "taxonomy.csv")
    (tmp_path / "taxonomy.csv").write_text("primary_label\naaa\naaa\n")
    with pytest.raises(ValueError, match="duplicate primary_label"):
        load_taxonomy(tmp_path / "taxonomy.csv")
