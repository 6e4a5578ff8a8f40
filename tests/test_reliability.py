"""The bad-input catalogue of docs/reliability.md that already passed before it was written
down: odd rates, channels and lengths, unicode names, BOM and CRLF metadata, shuffled
submissions. Each case is pinned here so that it keeps passing."""

from __future__ import annotations

import numpy as np
import polars as pl
import soundfile as sf

from birdpipe.config import CacheConfig, MelConfig
from birdpipe.data.metadata import load_taxonomy, load_train_metadata
from birdpipe.evaluation import metrics
from birdpipe.features import cache
from birdpipe.features.reader import MelCacheReader

MEL = MelConfig(n_mels=32, n_fft=512, hop_length=256)


def test_odd_rates_channels_lengths_and_unicode_names_are_cached(tmp_path):
    rng = np.random.default_rng(0)
    files = {  # name: (seconds, rate, channels, windows expected)
        "aaa/eight-khz.wav": (6.0, 8000, 1, 2),
        "aaa/ninety-six-khz-stereo.flac": (6.0, 96000, 2, 2),
        "bbb/short.ogg": (0.2, 32000, 1, 1),
        "bbb/Grive à pieds blancs – ü 鳥.ogg": (3.0, 32000, 1, 1),
    }
    for name, (seconds, rate, channels, _) in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / name, rng.uniform(-0.3, 0.3, (int(seconds * rate), channels)).astype(np.float32), rate)
    recs = pl.DataFrame({"filename": list(files), "primary_label": [n[:3] for n in files], "secondary_labels": [[]] * len(files)})
    report = cache.build_mel_cache(recs, tmp_path, tmp_path / "out", MEL, CacheConfig(workers=1), log=lambda _: None)
    assert report.quarantined.is_empty() and report.damaged.is_empty()
    counts = dict(MelCacheReader(report.cache_dir).windows.group_by("filename").len().iter_rows())
    assert counts == {name: spec[3] for name, spec in files.items()}
    assert report.audio_seconds == sum(spec[0] for spec in files.values())


def test_metadata_with_a_bom_and_crlf_line_ends_reads_as_plain_csv(tmp_path):
    (tmp_path / "taxonomy.csv").write_bytes("\ufeffprimary_label\r\naaa\r\nbbb\r\n".encode())
    (tmp_path / "train_metadata.csv").write_bytes(
        "\ufeffprimary_label,secondary_labels,latitude,filename\r\naaa,['bbb'],,aaa/XC1.ogg\r\nbbb,[],18.2,bbb/XC2.ogg\r\n".encode()
    )
    taxonomy = load_taxonomy(tmp_path / "taxonomy.csv")
    meta = load_train_metadata(tmp_path / "train_metadata.csv", taxonomy)
    assert taxonomy["primary_label"].to_list() == ["aaa", "bbb"]
    assert meta.quarantine.is_empty()
    assert meta.recordings.select("primary_label", "filename").rows() == [("aaa", "aaa/XC1.ogg"), ("bbb", "bbb/XC2.ogg")]
    assert meta.recordings["secondary_labels"].to_list() == [["bbb"], []]
    assert meta.recordings["latitude"].to_list() == [None, 18.2]


def test_a_shuffled_submission_scores_the_same(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"s_{5 * (i + 1)}" for i in range(30)]
    y_true = (rng.random((30, 3)) < 0.4).astype(int)
    y_prob = rng.random((30, 3)).round(3)
    pl.DataFrame({"row_id": ids} | {f"c{i}": y_true[:, i] for i in range(3)}).write_csv(tmp_path / "sol.csv")
    submission = pl.DataFrame({"row_id": ids} | {f"c{i}": y_prob[:, i] for i in range(3)})
    submission.write_csv(tmp_path / "sub.csv")
    submission.sample(fraction=1.0, shuffle=True, seed=1).write_csv(tmp_path / "shuffled.csv")
    for metric in ("birdclef2023", "birdclef2025"):
        ordered = metrics.score_files(tmp_path / "sol.csv", tmp_path / "sub.csv", metric)
        assert metrics.score_files(tmp_path / "sol.csv", tmp_path / "shuffled.csv", metric) == ordered
