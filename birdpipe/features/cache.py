"""Window caches: Parquet shards of fixed-shape arrays per window of every recording.

One builder serves every feature computed per window of a recording: the log-mel cache
(`MelFeatures`: mels of 5 s windows) and pretrained-model embeddings (a `Featurizer` from
`models`, e.g. BirdNET's embeddings and logits of 3 s chunks). A `Featurizer` names its kind
and version and turns one recording into arrays per window; the builder does the rest the same
way for all: incremental reruns, quarantine, partitions, atomic files.

Layout of `out_root / <kind>-<version>/` (version = hash of the featurizer's parameters, so
parameter sets coexist and a change unsyncs the Dagster asset):

- `cache.json`: kind, version and parameters;
- `shard-p<i>of<n>-<id>.parquet`: one row per (recording, window): filename, window_index,
  start_seconds, end_seconds, primary_label, secondary_labels, and one fixed-size array
  column per feature (the mel cache: `mel`, [n_mels][n_frames] float16); zstd; row groups of
  `row_group_windows` rows, the unit a random read decompresses; at most about
  `shard_max_mb` each;
- `index-p<i>of<n>.parquet`: one row per recording of partition i of n: its fingerprint
  (size, mtime, content hash), status (ok / quarantined) and reason, duration, and where
  its windows are (shard, first row).

Every file is written to a temporary name and renamed, and the index is rewritten after
each shard, so a killed build loses at most the shard in progress. A rerun skips a
recording whose size and mtime (or, failing that, content hash) are unchanged; a changed
or new one is recomputed; a removed one is dropped and its shard rewritten without it.
Partitions write disjoint files, so they run concurrently in separate processes.

Recordings are computed in worker processes (`birdpipe.parallel`): one whose decoder kills
its worker (twice) or runs past `CacheConfig.file_timeout_s` is quarantined with that reason
and the build goes on.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from birdpipe.data import audio
from birdpipe.features.config import CacheConfig, MelConfig
from birdpipe.features.featurizer import Featurizer, MelFeatures, cache_version, content_hash
from birdpipe.features.featurizer import compute_recording as _compute
from birdpipe.parallel import imap_unordered
from birdpipe.paths import atomic_write, inside
from birdpipe.progress import Progress

INDEX_SCHEMA = {
    "filename": pl.String,
    "size_bytes": pl.Int64,
    "mtime_ns": pl.Int64,
    "content_hash": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "damaged": pl.Boolean,
    "duration_s": pl.Float64,
    "n_windows": pl.Int64,
    "shard": pl.String,
    "shard_row": pl.Int64,
    "primary_label": pl.String,
    "secondary_labels": pl.List(pl.String),
}
WINDOW_COLUMNS = ["filename", "window_index", "start_seconds", "end_seconds", "primary_label", "secondary_labels"]
LABELS = ["primary_label", "secondary_labels"]


def cache_dir_for(out_root: Path, mel: MelConfig) -> Path:
    return Path(out_root) / f"mel-{cache_version(mel)}"


def partition_of(filename: str, n: int) -> int:
    """Stable shard of a recording (not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(filename.encode(), digest_size=8).digest(), "big") % n


def in_partition(recordings: pl.DataFrame, partition: tuple[int, int] | None) -> pl.DataFrame:
    """The rows of `recordings` in shard `(i, n)` (all of them without one)."""
    i, n = partition or (0, 1)
    return recordings.filter(pl.Series([partition_of(f, n) == i for f in recordings["filename"]])) if n > 1 else recordings


def digest(index: pl.DataFrame, cache_version: str) -> str:
    """Content digest for lineage: parameters + what each recording was and gave (not mtimes)."""
    cols = ["filename", "content_hash", "status", "n_windows", "primary_label", "secondary_labels"]
    rows = index.select(cols).sort("filename").rows()
    return hashlib.sha256(json.dumps([cache_version, rows]).encode()).hexdigest()[:16]


@dataclass
class CacheReport:
    cache_dir: Path
    files: int
    audio_seconds: float
    windows: int
    quarantined: pl.DataFrame
    recomputed: int
    reused: int
    removed: int
    wall_seconds: float
    digest: str
    #: Cached recordings that decoded only partly (kept, flagged in the index): filename, reason.
    damaged: pl.DataFrame
    #: Audio decoded and transformed by this run (the throughput's numerator).
    computed_seconds: float = 0.0

    @property
    def throughput(self) -> float:
        """Audio seconds computed per wall second (reused recordings cost nothing and do not count)."""
        return self.computed_seconds / max(self.wall_seconds, 1e-9)

    def summary(self) -> str:
        rate = self.throughput
        return (
            f"{self.cache_dir}: {self.files} files, {self.audio_seconds:.1f} s audio, {self.windows} windows, "
            f"{self.quarantined.height} quarantined, {self.damaged.height} damaged; recomputed {self.recomputed}, reused {self.reused}, "
            f"removed {self.removed}; {self.wall_seconds:.1f} s wall, {rate:.0f} audio-s/s"
        )


def _write_table(path: Path, frame: pl.DataFrame, cache: CacheConfig) -> None:
    """Written by polars: its Parquet writer encodes the nested fixed-size lists of the array
    columns 6-10x faster than pyarrow's (whose levels and dictionary attempt cost more than
    the mels)."""
    atomic_write(
        path,
        lambda tmp: frame.write_parquet(
            tmp, compression="zstd", compression_level=cache.zstd_level, row_group_size=cache.row_group_windows, statistics=False
        ),
    )


# --- worker ----------------------------------------------------------------------------------


def _lost(job: tuple[str, str, Featurizer], reason: str) -> dict[str, Any]:
    """The result of a recording whose decoder killed its worker process or hung: quarantined.
    No content hash, so touching the file retries it (a timeout may have been the machine's)."""
    return {"filename": job[0], "status": "quarantined", "reason": reason, "damaged": False, "content_hash": None}


# --- shards ---------------------------------------------------------------------------------


def _window_table(results: list[dict], labels: dict[str, tuple], window_seconds: float) -> pl.DataFrame:
    """One row per window of `results`. Built by polars straight from numpy: an array [n, d1,
    d2, ...] becomes a column of fixed-size arrays (Parquet: nested fixed-size lists). Not
    through pyarrow, whose `pa.array` of a Python list imports pandas to test it, a second
    of the parent's time per build."""
    names, index, starts = [], [], []
    for r in results:
        k = len(r["starts"])
        names += [r["filename"]] * k
        index.append(np.arange(k, dtype=np.int32))
        starts.append(r["starts"])
    starts = np.concatenate(starts)
    return pl.DataFrame(
        {
            "filename": pl.Series(names, dtype=pl.String),
            "window_index": np.concatenate(index),
            "start_seconds": starts,
            "end_seconds": starts + window_seconds,
            "primary_label": pl.Series([labels[f][0] for f in names], dtype=pl.String),
            "secondary_labels": pl.Series([labels[f][1] for f in names], dtype=pl.List(pl.String)),
            **{col: np.concatenate([r["arrays"][col] for r in results]) for col in results[0]["arrays"]},
        }
    )


class _Builder:
    """State of one partition's build: its index (a dict by filename) and its shard files."""

    def __init__(self, cache_dir: Path, part: tuple[int, int], featurizer: Featurizer, cache: CacheConfig, log):
        self.dir, self.featurizer, self.cache, self.log = cache_dir, featurizer, cache, log
        self.prefix = f"p{part[0]}of{part[1]}"
        self.index_path = cache_dir / f"index-{self.prefix}.parquet"
        self.entries: dict[str, dict] = (
            {r["filename"]: r for r in pl.read_parquet(self.index_path).iter_rows(named=True)}
            if self.index_path.exists()
            else {}
        )
        #: (size, mtime) of recordings to compute, entered in the index only with their result,
        #: so a build killed midway cannot make a stale entry look fresh.
        self.stats: dict[str, tuple[int, int]] = {}

    def save_index(self) -> None:
        df = pl.DataFrame(list(self.entries.values()), schema=INDEX_SCHEMA)
        _write_table(self.index_path, df, self.cache)

    def write_shard(self, table: pl.DataFrame) -> str:
        name = f"shard-{self.prefix}-{uuid.uuid4().hex[:12]}.parquet"
        _write_table(self.dir / name, table, self.cache)
        return name

    def flush(self, results: list[dict], labels: dict[str, tuple]) -> None:
        """Write computed recordings as one shard, then point the index at it."""
        with_windows = [r for r in results if r["status"] == "ok"]
        name = self.write_shard(_window_table(with_windows, labels, self.featurizer.window_seconds)) if with_windows else None
        row = 0
        for r in results:
            e = self.entries[r["filename"]]
            n = len(r["starts"]) if r["status"] == "ok" else 0
            e.update(
                size_bytes=self.stats[r["filename"]][0],
                mtime_ns=self.stats[r["filename"]][1],
                content_hash=r.get("content_hash"),
                status=r["status"],
                reason=r["reason"],
                damaged=r["damaged"],
                duration_s=r.get("duration_s"),
                n_windows=n,
                shard=name if n else None,
                shard_row=row if n else None,
            )
            row += n
        self.save_index()

    def compact(self) -> None:
        """Rewrite shards holding rows the index no longer points at (removed, recomputed or
        relabelled recordings), copying arrays without recomputing; delete unreferenced files."""
        live = pl.DataFrame(list(self.entries.values()), schema=INDEX_SCHEMA).filter(pl.col("shard").is_not_null())
        for path in sorted(self.dir.glob(f"shard-{self.prefix}-*.parquet")):
            mine = live.filter(pl.col("shard") == path.name)
            if mine.is_empty():
                path.unlink()
                continue
            windows = pl.read_parquet(path, columns=WINDOW_COLUMNS[:2] + LABELS).with_row_index("row")
            want = windows.join(
                mine.select("filename", "shard_row", "n_windows", *LABELS), on="filename", how="inner", suffix="_new"
            ).filter(pl.col("row").is_between(pl.col("shard_row"), pl.col("shard_row") + pl.col("n_windows") - 1)).sort("row")
            stale_labels = want.filter(
                (pl.col("primary_label") != pl.col("primary_label_new"))
                | (pl.col("secondary_labels") != pl.col("secondary_labels_new"))
            )
            if want.height == windows.height and stale_labels.is_empty():
                continue
            table = pl.read_parquet(path)[want["row"]].with_columns(
                want["primary_label_new"].alias("primary_label"), want["secondary_labels_new"].alias("secondary_labels")
            )
            name = self.write_shard(table)
            starts = want.with_row_index("new_row").group_by("filename").agg(pl.col("new_row").min())
            for filename, new_row in starts.iter_rows():
                self.entries[filename].update(shard=name, shard_row=new_row)
            self.save_index()
            path.unlink()
        for tmp in self.dir.glob(f".*-{self.prefix}*.tmp"):
            tmp.unlink(missing_ok=True)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if path.is_file() else None


def _plan(builder: _Builder, recs: pl.DataFrame, audio_root: Path) -> tuple[list[str], int, int]:
    """Update index entries from the recordings; return (to compute, reused, removed)."""
    todo, reused = [], 0
    wanted = set(recs["filename"].to_list())
    removed = [f for f in builder.entries if f not in wanted]
    for f in removed:
        del builder.entries[f]
    for filename, primary, secondary in recs.select("filename", *LABELS).iter_rows():
        old = builder.entries.get(filename)
        e = builder.entries.setdefault(filename, {**dict.fromkeys(INDEX_SCHEMA), "filename": filename})
        e.update(primary_label=primary, secondary_labels=list(secondary or []))
        try:
            path = inside(audio_root, filename)
            stat, refused = _stat(path), None
        except ValueError as exc:
            stat, refused = None, str(exc)
        if stat is None:
            reason = refused or audio.probe(path, decode=False).reason  # missing, a broken link, ...
            e.update(size_bytes=None, mtime_ns=None, content_hash=None, status="quarantined", reason=reason,
                     n_windows=0, shard=None, shard_row=None)  # fmt: skip
            continue
        same = old is not None and (old["size_bytes"], old["mtime_ns"]) == stat
        if not same and old is not None and old["content_hash"] and old["size_bytes"] == stat[0]:
            same = content_hash(path) == old["content_hash"]  # touched, not changed
        if same:
            e.update(size_bytes=stat[0], mtime_ns=stat[1])
            reused += 1
        else:
            builder.stats[filename] = stat
            todo.append(filename)
    return todo, reused, len(removed)


def build_mel_cache(
    recordings: pl.DataFrame,
    audio_root: Path,
    out_root: Path,
    mel: MelConfig,
    cache: CacheConfig,
    partition: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
) -> CacheReport:
    """Build or update the mel cache of `recordings` under `out_root / mel-<version>`."""
    return build_window_cache(recordings, audio_root, cache_dir_for(out_root, mel), MelFeatures(mel), cache, partition, log)


def build_window_cache(
    recordings: pl.DataFrame,
    audio_root: Path,
    cache_dir: Path,
    featurizer: Featurizer,
    cache: CacheConfig,
    partition: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
) -> CacheReport:
    """Build or update the `featurizer` cache of `recordings` (or of shard `partition=(i, n)` of them)."""
    t0 = time.perf_counter()
    audio_root = Path(audio_root)
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = cache_dir / "cache.json"
    if not meta.exists():
        info = {"version": featurizer.version(), "kind": featurizer.kind, featurizer.kind: featurizer.params()}
        atomic_write(meta, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    recs = in_partition(recordings.unique("filename", keep="first", maintain_order=True), partition)
    builder = _Builder(cache_dir, partition or (0, 1), featurizer, cache, log)
    todo, reused, removed = _plan(builder, recs, audio_root)
    log(f"{featurizer.kind} cache {cache_dir.name} [{builder.prefix}]: {len(todo)} to compute, {reused} reused, {removed} removed")
    labels = {f: (e["primary_label"], e["secondary_labels"]) for f, e in builder.entries.items()}
    computed = _compute_all(builder, todo, audio_root, labels)
    builder.compact()
    builder.save_index()
    if partition is None or partition[1] == 1:
        _drop_other_partitionings(cache_dir, builder.prefix)
    index = pl.DataFrame(list(builder.entries.values()), schema=INDEX_SCHEMA)
    ok = index.filter(pl.col("status") == "ok")
    bad = index.filter(pl.col("status") == "quarantined")
    quarantined = bad.select("filename", pl.concat_str(pl.lit(f"{audio_root}/"), "filename").alias("path"), "reason")
    return CacheReport(
        cache_dir=cache_dir,
        files=index.height,
        audio_seconds=float(ok["duration_s"].sum()),
        windows=int(ok["n_windows"].sum()),
        quarantined=quarantined,
        recomputed=len(todo),
        reused=reused,
        removed=removed,
        wall_seconds=time.perf_counter() - t0,
        digest=digest(index, featurizer.version()),
        computed_seconds=computed,
        damaged=ok.filter(pl.col("damaged")).select("filename", "reason"),
    )


def _compute_all(builder: _Builder, todo: list[str], audio_root: Path, labels: dict[str, tuple]) -> float:
    """Compute `todo` in the process pool (largest first), flushing shards of bounded size."""
    by_size = sorted(todo, key=lambda f: -builder.stats[f][0])
    jobs = ((f, str(audio_root / f), builder.featurizer) for f in by_size)
    limit = builder.cache.shard_max_mb * 2**20
    pending: list[dict] = []
    size = seconds = 0.0
    results = imap_unordered(_compute, jobs, builder.cache.workers, on_failure=_lost, timeout_s=builder.cache.file_timeout_s)
    progress = Progress(len(todo), builder.log, f"{builder.featurizer.kind} cache", "recordings", builder.cache.progress_every)
    for r in results:
        pending.append(r)
        if r["status"] == "ok":
            size += sum(a.nbytes for a in r["arrays"].values())
            seconds += r["duration_s"]
        else:
            builder.log(f"quarantined {r['filename']}: {r['reason']}")
        if r.get("notes"):
            builder.log(f"decoder on {r['filename']}: " + " | ".join(r["notes"]))
        if size >= limit:
            builder.flush(pending, labels)
            pending, size = [], 0.0
        progress.update(extra=f"{seconds / 3600:.2f} h of audio")
    if pending:
        builder.flush(pending, labels)
    return seconds


def _drop_other_partitionings(cache_dir: Path, keep: str) -> None:
    """A whole build owns the cache: files of another partition count are stale."""
    for path in [*cache_dir.glob("index-*.parquet"), *cache_dir.glob("shard-*.parquet")]:
        if f"-{keep}" not in path.name:
            path.unlink(missing_ok=True)
