import os
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from birdpipe.data import audio
from birdpipe.features import cache, mel as features
from birdpipe.features.reader import MelCacheReader
from birdpipe.paths import atomic_write
from birdpipe.config import CacheConfig, MelConfig

SR = 32000
MEL = MelConfig(n_mels=32, n_fft=512, hop_length=256)
ONE = CacheConfig(workers=1, shard_max_mb=1)


def _write(root: Path, name: str, seconds: float, seed: int, sr: int = SR, channels: int = 1) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.random.default_rng(seed).uniform(-0.3, 0.3, (int(seconds * sr), channels)).astype(np.float32)
    sf.write(path, wave, sr)


def _dataset(root: Path) -> pl.DataFrame:
    """Six good recordings of mixed formats, rates and channels, and four bad files."""
    good = [("aaa/a1.ogg", 12.0, SR, 1), ("aaa/a2.flac", 3.0, 44100, 2), ("bbb/b1.wav", 21.0, SR, 1),
            ("bbb/b2.ogg", 7.0, 48000, 1), ("ccc/c1.flac", 5.0, SR, 1), ("ccc/c2.wav", 9.5, 22050, 1)]  # fmt: skip
    for i, (name, seconds, sr, ch) in enumerate(good):
        _write(root, name, seconds, i, sr, ch)
    (root / "ddd").mkdir()
    (root / "ddd/empty.ogg").write_bytes(b"")
    (root / "ddd/text.ogg").write_text("not audio")
    nan = np.zeros(SR, np.float32)
    nan[10] = np.nan
    sf.write(root / "ddd/nan.wav", nan, SR, subtype="FLOAT")
    names = [g[0] for g in good] + ["ddd/empty.ogg", "ddd/text.ogg", "ddd/nan.wav", "ddd/missing.ogg"]
    return pl.DataFrame(
        {
            "filename": names,
            "primary_label": [n.split("/")[0] for n in names],
            "secondary_labels": [["bbb"] if n.startswith("aaa") else [] for n in names],
            "rating": [4.0] * len(names),  # extra columns are ignored
        }
    )


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "audio"
    return root, _dataset(root), tmp_path / "cache"


def _build(data, recs=None, mel=MEL, cfg=ONE, **kw):
    root, recordings, out = data
    return cache.build_mel_cache(recordings if recs is None else recs, root, out, mel, cfg, log=lambda _: None, **kw)


def test_build_quarantines_bad_files_and_caches_the_rest(data):
    report = _build(data)
    reasons = dict(report.quarantined.select("filename", "reason").iter_rows())
    assert set(reasons) == {"ddd/empty.ogg", "ddd/text.ogg", "ddd/nan.wav", "ddd/missing.ogg"}
    assert "empty" in reasons["ddd/empty.ogg"] and "NaN" in reasons["ddd/nan.wav"]
    assert "not decodable" in reasons["ddd/text.ogg"] and reasons["ddd/missing.ogg"] == "missing"
    assert report.quarantined["path"][0].endswith(report.quarantined["filename"][0])
    # 12 s -> 3 (tail 2 s), 3 s -> 1, 21 s -> 5 (tail 1 s), 7 s -> 2, 5 s -> 1, 9.5 s -> 2
    assert report.windows == 14 and report.files == 10 and report.recomputed == 9  # not the missing one
    assert report.audio_seconds == pytest.approx(57.5, abs=0.01)
    assert report.cache_dir.name == f"mel-{cache.cache_version(MEL)}"
    assert "4 quarantined" in report.summary()


def test_reader_returns_the_windows_and_mels_of_the_fast_path(data):
    root, _, _ = data
    report = _build(data)
    reader = MelCacheReader(report.cache_dir)
    assert len(reader) == 14 and reader.windows["row"].to_list() == list(range(14))
    assert reader.mel_config == MEL and reader.digest == report.digest
    a2 = reader.windows.filter(pl.col("filename") == "aaa/a2.flac")
    assert a2["secondary_labels"].to_list() == [["bbb"]] and a2["end_seconds"].to_list() == [5.0]
    b1 = reader.windows.filter(pl.col("filename") == "bbb/b1.wav")
    assert b1["start_seconds"].to_list() == [0.0, 5.0, 10.0, 15.0, 20.0]
    expected, _ = features.log_mel_windows(audio.load(root / "bbb/b1.wav", SR), MEL)
    rows = b1["row"].to_numpy()[::-1]  # any order
    np.testing.assert_allclose(reader.mels(rows), expected[::-1], atol=2e-3)  # float16 storage
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.mels([0, 13, 5]), reader.mels([0, 13, 5]))


def test_shards_are_bounded_and_fixed_shape(data):
    report = _build(data, cfg=ONE.replace(shard_max_mb=1, row_group_windows=2))
    shards = sorted(report.cache_dir.glob("shard-*.parquet"))
    assert shards
    table = pq.read_table(shards[0])
    mel_type = table.schema.field("mel").type
    assert (mel_type.list_size, mel_type.value_type.list_size, str(mel_type.value_type.value_type)) == (32, 626, "halffloat")
    meta = pq.ParquetFile(shards[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD" and meta.row_group(0).num_rows <= 2
    assert pl.read_parquet(shards[0]).schema["mel"] == pl.Array(pl.Float16, (32, 626))


def test_rerun_recomputes_nothing(data):
    first = _build(data)
    again = _build(data)
    assert (again.recomputed, again.reused, again.removed) == (0, 9, 0)  # the missing file is not reused
    assert again.digest == first.digest and again.windows == first.windows
    assert again.quarantined.height == 4


def test_only_changed_new_and_removed_recordings_are_touched(data):
    root, recs, _ = data
    _build(data)
    _write(root, "bbb/b1.wav", 6.0, seed=99)  # changed content and size
    os.utime(root / "ccc/c1.flac", ns=(1, 1))  # touched only: same content
    _write(root, "eee/e1.flac", 4.0, seed=7)  # new
    recs = pl.concat([recs.filter(pl.col("filename") != "aaa/a1.ogg"),
                      pl.DataFrame({"filename": ["eee/e1.flac"], "primary_label": ["eee"], "secondary_labels": [[]],
                                    "rating": [3.0]})])  # fmt: skip
    report = _build(data, recs)
    assert (report.recomputed, report.removed) == (2, 1)  # b1 and e1
    assert report.reused == 4 + 3  # c1, a2, b2, c2 and the unchanged bad files and report.digest != first.digest
    reader = MelCacheReader(report.cache_dir)
    counts = dict(reader.windows.group_by("filename").len().iter_rows())
    assert counts["bbb/b1.wav"] == 2 and counts["eee/e1.flac"] == 1 and "aaa/a1.ogg" not in counts
    on_disk = pl.concat([pl.read_parquet(p, columns=["filename"]) for p in report.cache_dir.glob("shard-*.parquet")])
    assert "aaa/a1.ogg" not in on_disk["filename"].to_list()  # gone from the files, not just hidden
    assert on_disk.height == len(reader)


def test_quarantined_files_are_retried_only_when_they_change(data):
    root, _, _ = data
    _build(data)
    assert _build(data).recomputed == 0
    _write(root, "ddd/text.ogg", 2.0, seed=3)
    fixed = _build(data)
    assert "ddd/text.ogg" not in fixed.quarantined["filename"].to_list() and fixed.quarantined.height == 3


def test_relabelling_rewrites_labels_without_recomputing(data):
    _, recs, _ = data
    _build(data)
    relabelled = recs.with_columns(pl.when(pl.col("filename") == "ccc/c1.flac").then(pl.lit("zzz"))
                                   .otherwise(pl.col("primary_label")).alias("primary_label"))  # fmt: skip
    report = _build(data, relabelled)
    assert report.recomputed == 0
    reader = MelCacheReader(report.cache_dir)
    assert reader.windows.filter(pl.col("filename") == "ccc/c1.flac")["primary_label"].to_list() == ["zzz"]


def test_parameters_version_the_cache_and_coexist(data):
    base = cache.cache_version(MEL)
    for change in [dict(n_mels=64), dict(hop_length=128), dict(noise_reduce=False), dict(noise_mode="nonstationary"),
                   dict(window_seconds=10.0), dict(stride_seconds=2.5), dict(dtype="float32"), dict(top_db=60.0),
                   dict(sample_rate=22050, fmax=11000.0), dict(fmin=20.0), dict(fmax=12000.0), dict(n_fft=1024)]:  # fmt: skip
        assert cache.cache_version(MEL.replace(**change)) != base, change
    a = _build(data)
    b = _build(data, mel=MEL.replace(noise_reduce=False), cfg=ONE.replace(zstd_level=9))
    assert a.cache_dir != b.cache_dir and a.cache_dir.exists() and b.cache_dir.exists()
    assert b.recomputed == 9 and a.digest != b.digest
    assert _build(data).recomputed == 0  # the first set is intact


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path):
    target = tmp_path / "x.parquet"
    target.write_text("old")

    def fails(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, fails)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_killed_build_leaves_readable_cache_and_resumes(data, monkeypatch):
    calls = {"n": 0}
    real = cache._compute

    def dies_on_the_fourth(job):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # like a kill between shards
        return real(job)

    monkeypatch.setattr(cache, "_compute", dies_on_the_fourth)
    tiny = ONE.replace(shard_max_mb=0)  # flush after every recording
    with pytest.raises(KeyboardInterrupt):
        _build(data, cfg=tiny)
    cache_dir = cache.cache_dir_for(data[2], MEL)
    assert not list(cache_dir.glob(".*tmp"))
    partial = MelCacheReader(cache_dir)
    assert 0 < partial.index.height and len(partial) > 0  # what was flushed is usable
    monkeypatch.setattr(cache, "_compute", real)
    report = _build(data, cfg=tiny)
    assert report.recomputed == 9 - 3 and report.windows == 14


def test_partitions_build_disjoint_shards_that_add_up_to_the_whole(data):
    whole = _build(data)
    reader_whole = MelCacheReader(whole.cache_dir)
    parts = [_build(data, partition=(i, 3)) for i in range(3)]
    assert sum(p.files for p in parts) == 10 and sum(p.windows for p in parts) == 14
    assert len({f for p in parts for f in p.quarantined["filename"]}) == 4
    assert list(whole.cache_dir.glob("index-p0of1*"))  # left alone; the reader takes the newest count
    reader = MelCacheReader(whole.cache_dir)
    assert reader.windows.drop("row").equals(reader_whole.windows.drop("row"))
    assert reader.digest == reader_whole.digest
    np.testing.assert_array_equal(reader.mels(np.arange(14)), reader_whole.mels(np.arange(14)))


def test_process_pool_gives_the_same_cache(data):
    serial = _build(data)
    root, recs, out = data
    pooled = cache.build_mel_cache(recs, root, out / "pool", MEL, ONE.replace(workers=2), log=lambda _: None)
    assert pooled.digest == serial.digest
    a, b = MelCacheReader(serial.cache_dir), MelCacheReader(pooled.cache_dir)
    np.testing.assert_array_equal(a.mels(np.arange(14)), b.mels(np.arange(14)))


def _write_metadata(root: Path, recs: pl.DataFrame) -> None:
    literals = pl.Series("secondary_labels", [str(list(x)) for x in recs["secondary_labels"]])
    recs.with_columns(literals).drop("rating").write_csv(root / "train_metadata.csv")


def _config(path: Path, extra: str = "") -> Path:
    path.write_text("[mel]\nn_mels = 32\nn_fft = 512\nhop_length = 256\n" + extra)  # MEL
    return path


def test_cli_prints_the_summary(tmp_path, capsys):
    from birdpipe.cli import main

    root = tmp_path / "ds"
    recs = _dataset(root / "train_audio")
    _write_metadata(root, recs)
    config = _config(tmp_path / "c.toml")
    cmd = ["cache", "--data", str(root), "--out", str(tmp_path / "out"), "--config", str(config), "--workers", "1"]
    code = main([*cmd, "--limit", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "3 files, 36.0 s audio, 9 windows, 0 quarantined" in out and "audio-s/s" in out
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "10 files" in out and "4 quarantined" in out and "quarantined ddd/nan.wav: contains NaN" in out


def test_crashing_killed_and_hanging_decoders_are_quarantined_and_the_rest_cached(tmp_path, capsys, monkeypatch):
    """One recording segfaults its worker, one gets SIGKILLed, one hangs: the run exits 0,
    names the three with their reasons, and caches every other recording as a run without them."""
    from birdpipe.cli import main
    from birdpipe.parallel import FAULTS_ENV

    root = tmp_path / "ds"
    recs = _dataset(root / "train_audio")
    faults = {"eee/segv.ogg": "segv", "eee/kill.ogg": "kill", "eee/hang.ogg": "hang"}
    for i, name in enumerate(faults):
        _write(root / "train_audio", name, 4.0, seed=10 + i)  # good audio: the fault is the worker's
    extra = pl.DataFrame({"filename": list(faults), "primary_label": "eee", "secondary_labels": [[]] * 3, "rating": 4.0})
    _write_metadata(root, pl.concat([recs, extra]))
    monkeypatch.setenv(FAULTS_ENV, ",".join(f"{f}={kind}" for f, kind in faults.items()))
    config = _config(tmp_path / "c.toml", "[cache]\nfile_timeout_s = 5.0\nshard_max_mb = 0\n")

    code = main(["cache", "--data", str(root), "--out", str(tmp_path / "out"), "--config", str(config), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "13 files" in out and "7 quarantined" in out, out
    assert "quarantined eee/segv.ogg: decoder process died: signal 11 (SIGSEGV)" in out
    assert "quarantined eee/kill.ogg: decoder process died: signal 9 (SIGKILL)" in out
    assert "quarantined eee/hang.ogg: decoder timed out after 5 s" in out

    faulty = MelCacheReader(cache.cache_dir_for(tmp_path / "out", MEL))
    status = dict(faulty.index.select("filename", "status").iter_rows())
    assert all(status[f] == "quarantined" for f in faults)
    reference = MelCacheReader(_build((root / "train_audio", recs, tmp_path / "ref")).cache_dir)
    assert faulty.windows.drop("row").equals(reference.windows.drop("row"))
    for filename in recs["filename"]:
        rows = [faulty.windows.filter(pl.col("filename") == filename)["row"], reference.windows.filter(pl.col("filename") == filename)["row"]]
        assert faulty.mels(rows[0].to_numpy()).tobytes() == reference.mels(rows[1].to_numpy()).tobytes()


def test_manifest_marks_a_file_that_kills_its_decoder_unreadable(data, monkeypatch):
    from birdpipe.data.manifest import build_manifest
    from birdpipe.parallel import FAULTS_ENV

    root, recs, _ = data
    monkeypatch.setenv(FAULTS_ENV, "bbb/b1.wav=segv")
    manifest = build_manifest(recs.head(4), root, workers=2, timeout_s=30)
    row = {r["filename"]: r for r in manifest.iter_rows(named=True)}
    assert manifest["filename"].to_list() == recs["filename"].head(4).to_list()
    assert not row["bbb/b1.wav"]["readable"] and row["bbb/b1.wav"]["exists"] and row["bbb/b1.wav"]["size_bytes"] > 0
    assert row["bbb/b1.wav"]["reason"] == "decoder process died: signal 11 (SIGSEGV)"
    assert manifest.filter(pl.col("readable")).height == 3


def test_manifest_has_one_row_per_metadata_row_and_never_raises(data):
    from birdpipe.data.manifest import build_manifest

    root, recs, _ = data
    manifest = build_manifest(recs, root, workers=1)
    assert manifest["filename"].to_list() == recs["filename"].to_list()
    row = {r["filename"]: r for r in manifest.iter_rows(named=True)}
    assert row["aaa/a2.flac"]["readable"] and row["aaa/a2.flac"]["channels"] == 2 and row["aaa/a2.flac"]["sample_rate"] == 44100
    assert row["aaa/a2.flac"]["duration_s"] == pytest.approx(3.0) and row["aaa/a2.flac"]["size_bytes"] > 0
    assert not row["ddd/nan.wav"]["readable"] and "NaN" in row["ddd/nan.wav"]["reason"]
    missing = row["ddd/missing.ogg"]
    assert not missing["exists"] and not missing["readable"] and missing["size_bytes"] is None
    assert manifest.filter(~pl.col("readable")).height == 4


def test_damaged_file_is_cached_as_far_as_it_decodes_and_flagged(tmp_path):
    root = tmp_path / "audio"
    _write(root, "aaa/good.flac", 20.0, seed=5)
    data = bytearray((root / "aaa/good.flac").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 400] = bytes(400)
    (root / "aaa/bad.flac").write_bytes(bytes(data))
    recs = pl.DataFrame({"filename": ["aaa/bad.flac"], "primary_label": ["aaa"], "secondary_labels": [[]]})
    report = cache.build_mel_cache(recs, root, tmp_path / "c", MEL, ONE, log=lambda _: None)
    assert report.damaged["filename"].to_list() == ["aaa/bad.flac"] and report.quarantined.is_empty() and 0 < report.windows < 4
    assert "1 damaged" in report.summary()
    reader = MelCacheReader(report.cache_dir)
    assert reader.index["damaged"].to_list() == [True] and "decoding stopped" in reader.index["reason"][0]


def test_cli_names_every_metadata_row_it_leaves_out_and_every_damaged_file(tmp_path, capsys):
    """`birdpipe cache` once kept only the trainable rows and printed "0 quarantined"."""
    from birdpipe.cli import main

    root = tmp_path / "ds"
    _write(root / "train_audio", "aaa/a1.ogg", 6.0, seed=1)
    _write(root / "train_audio", "bbb/b1.wav", 6.0, seed=2)
    (root / "train_audio/bbb/cut.wav").write_bytes((root / "train_audio/bbb/b1.wav").read_bytes()[:100_000])
    _write(root, "outside.ogg", 2.0, seed=3)  # beside the audio folder: never to be read
    (root / "taxonomy.csv").write_text("primary_label\naaa\nbbb\n")
    (root / "train_metadata.csv").write_text(
        "primary_label,secondary_labels,filename\n"
        "aaa,[],aaa/a1.ogg\n"
        "bbb,['aaa'],bbb/b1.wav\n"
        "zzz,[],zzz/z1.ogg\n"  # unknown label
        "bbb,\"['aaa'\",bbb/b2.ogg\n"  # malformed list
        "aaa,[],aaa/a1.ogg\n"  # identical repeat
        "aaa,[],../outside.ogg\n"
        "aaa,[],../../../../etc/hostname\n"
        "bbb,[],bbb/cut.wav\n"
    )
    cmd = ["cache", "--data", str(root), "--out", str(tmp_path / "out"), "--config", str(_config(tmp_path / "c.toml"))]
    assert main([*cmd, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "train_metadata.csv: 8 rows, 5 quarantined" in out, out
    for row, name, reason in [
        (2, "zzz/z1.ogg", "primary_label 'zzz' is not in the taxonomy"),
        (3, "bbb/b2.ogg", "secondary_labels: "),
        (4, "aaa/a1.ogg", "repeats row 0 (identical; that one is kept)"),
        (5, "../outside.ogg", "filename leads outside the audio folder"),
        (6, "../../../../etc/hostname", "filename leads outside the audio folder"),
    ]:
        assert f"  quarantined row {row} ({name}): {reason}" in out
    assert "3 files" in out and "0 quarantined, 1 damaged" in out
    assert "  damaged bbb/cut.wav: truncated: 1.56 s of 6.00 s decoded, 4.44 s lost" in out


def test_the_cache_and_manifest_never_open_a_path_outside_the_audio_folder(data):
    """The library guards its own joins too, for callers that skip metadata validation."""
    from birdpipe.data.manifest import build_manifest

    root, recs, _ = data
    _write(root.parent, "outside.ogg", 2.0, seed=3)
    names = ["../outside.ogg", str(root.parent / "outside.ogg"), "aaa/a1.ogg"]
    escaping = pl.DataFrame({"filename": names, "primary_label": "aaa", "secondary_labels": [[]] * 3})
    report = _build(data, escaping)
    reasons = dict(report.quarantined.select("filename", "reason").iter_rows())
    assert set(reasons) == set(names[:2]) and all("leads outside the audio folder" in r for r in reasons.values())
    manifest = build_manifest(escaping, root, workers=1)
    assert manifest["readable"].to_list() == [False, False, True]
    assert manifest["size_bytes"][:2].to_list() == [None, None]  # not even stat'ed
    assert "leads outside the audio folder" in manifest["reason"][0]
