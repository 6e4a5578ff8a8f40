"""Reading window caches: the window table and random access to each window's arrays.

`WindowCacheReader` reads any window cache (`features.cache`), `MelCacheReader` adds the mel
parameters and `mels(rows)`. Training, out-of-fold prediction and benchmarks depend on the
`CacheReader` protocol, not on the Parquet layout: a test can hand them an in-memory cache,
and another store only has to offer the same four members.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from birdpipe.features.cache import INDEX_SCHEMA, WINDOW_COLUMNS, digest
from birdpipe.features.config import MelConfig


class CacheReader(Protocol):
    """What training and evaluation read from a cache of log-mel windows."""

    #: The parameters the mels were computed with.
    mel_config: MelConfig
    #: Content digest, for lineage and resume checks.
    digest: str
    #: One row per window: row (0..N-1), filename, window_index, start/end seconds, labels.
    windows: pl.DataFrame

    def mels(self, rows: Iterable[int] | np.ndarray) -> np.ndarray:
        """float32 `[len(rows), n_mels, n_frames]` in the order of `rows`."""
        ...


def current_index(cache_dir: Path) -> pl.DataFrame:
    """All partitions' index entries of the most recently written partition count."""
    files = list(Path(cache_dir).glob("index-p*of*.parquet"))
    if not files:
        return pl.DataFrame(schema=INDEX_SCHEMA)
    newest = max(files, key=lambda p: p.stat().st_mtime_ns)
    count = newest.name.split("of")[1].split(".")[0]
    return pl.concat([pl.read_parquet(p) for p in files if p.name.endswith(f"of{count}.parquet")]).sort("filename")


class WindowCacheReader:
    """Random access to a window cache's arrays.

    `windows` lists every window (row 0..N-1, sorted by filename and window); `array(rows,
    column)` decodes only the row groups holding `rows`, keeping recent ones in a per-process
    LRU of `lru_mb`. Open Parquet files are not pickled: DataLoader workers reopen them lazily.
    """

    def __init__(self, cache_dir: str | Path, lru_mb: int = 256):
        self.cache_dir = Path(cache_dir)
        meta = self.cache_dir / "cache.json"
        if not meta.exists():
            raise FileNotFoundError(f"{self.cache_dir}: not a window cache (no cache.json)")
        #: kind, version and parameters the cache was built with.
        self.info: dict = json.loads(meta.read_text())
        self.index = current_index(self.cache_dir)
        self.digest = digest(self.index, self.info["version"])
        self.windows, self._shards, self._shard_of, self._row_of = self._load_windows()
        self._lru_bytes = lru_mb * 2**20
        self._files: dict[int, pq.ParquetFile] = {}
        self._groups: dict[int, np.ndarray] = {}
        self._lru: OrderedDict[tuple[int, int, str], np.ndarray] = OrderedDict()
        #: column -> (per-window shape, numpy dtype), read from the Parquet schema on first use.
        self._shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def _load_windows(self):
        ok = self.index.filter(pl.col("status") == "ok")
        shards = sorted(ok["shard"].unique().to_list())
        parts = []
        for sid, name in enumerate(shards):
            cols = pl.read_parquet(self.cache_dir / name, columns=WINDOW_COLUMNS).with_row_index("_row")
            refs = ok.filter(pl.col("shard") == name).select("filename", "shard_row", "n_windows")
            cols = cols.join(refs, on="filename").filter(
                (pl.col("_row") >= pl.col("shard_row")) & (pl.col("_row") < pl.col("shard_row") + pl.col("n_windows"))
            )
            parts.append(cols.drop("shard_row", "n_windows").with_columns(pl.lit(sid, pl.Int32).alias("_shard")))
        if not parts:
            empty = pl.DataFrame(schema={"row": pl.Int64, "filename": pl.String, "window_index": pl.Int32,
                                         "start_seconds": pl.Float64, "end_seconds": pl.Float64,
                                         "primary_label": pl.String, "secondary_labels": pl.List(pl.String)})  # fmt: skip
            return empty, shards, np.zeros(0, np.int32), np.zeros(0, np.int64)
        df = pl.concat(parts).sort("filename", "window_index").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
        windows = df.select("row", *WINDOW_COLUMNS)
        return windows, shards, df["_shard"].to_numpy(), df["_row"].cast(pl.Int64).to_numpy()

    def __len__(self) -> int:
        return self.windows.height

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_files={}, _groups={}, _lru=OrderedDict())
        return state

    def array(self, rows: Iterable[int] | np.ndarray, column: str) -> np.ndarray:
        """float32 `[len(rows), ...]` of one array column, in the order of `rows`."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape(column)), np.float32)
        shard, srow = self._shard_of[rows], self._row_of[rows]
        for sid in np.unique(shard):
            sel = np.nonzero(shard == sid)[0]
            starts = self._group_starts(int(sid))
            group = np.searchsorted(starts, srow[sel], side="right") - 1
            for g in np.unique(group):
                in_group = sel[group == g]
                out[in_group] = self._row_group(int(sid), int(g), column)[srow[in_group] - starts[g]]
        return out

    def shape(self, column: str) -> tuple[int, ...]:
        """Per-window shape of an array column, from the Parquet schema (nested fixed-size lists)."""
        if column not in self._shapes:
            if not self._shards:
                raise ValueError(f"{self.cache_dir}: empty cache")
            kind = self._file(0).schema_arrow.field(column).type
            dims = []
            while isinstance(kind, pa.FixedSizeListType):
                dims.append(kind.list_size)
                kind = kind.value_type
            self._shapes[column] = (tuple(dims), kind.to_pandas_dtype())
        return self._shapes[column][0]

    def _group_starts(self, sid: int) -> np.ndarray:
        if sid not in self._groups:
            meta = self._file(sid).metadata
            self._groups[sid] = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])[:-1]
        return self._groups[sid]

    def _file(self, sid: int) -> pq.ParquetFile:
        if sid not in self._files:
            self._files[sid] = pq.ParquetFile(self.cache_dir / self._shards[sid])
        return self._files[sid]

    def _row_group(self, sid: int, g: int, column: str) -> np.ndarray:
        key = (sid, g, column)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        shape = self.shape(column)
        values = self._file(sid).read_row_group(g, columns=[column]).column(0).combine_chunks()
        for _ in shape:
            values = values.flatten()
        dtype = np.dtype(self._shapes[column][1])  # read the buffer: to_numpy() boxes float16 values
        flat = np.frombuffer(values.buffers()[1], dtype, count=len(values), offset=values.offset * dtype.itemsize)
        mels = flat.reshape(-1, *shape)
        self._lru[key] = mels
        while sum(m.nbytes for m in self._lru.values()) > self._lru_bytes and len(self._lru) > 1:
            self._lru.popitem(last=False)
        return mels


class MelCacheReader(WindowCacheReader):
    """The mel cache: its parameters and `mels(rows)` for training and evaluation."""

    def __init__(self, cache_dir: str | Path, lru_mb: int = 256):
        super().__init__(cache_dir, lru_mb)
        if "mel" not in self.info:
            raise ValueError(f"{self.cache_dir}: a {self.info.get('kind')} cache, not a mel cache")
        self.mel_config = MelConfig.from_dict(self.info["mel"])
        self._shapes["mel"] = ((self.mel_config.n_mels, self.mel_config.n_frames), np.dtype(self.mel_config.dtype))

    def mels(self, rows: Iterable[int] | np.ndarray) -> np.ndarray:
        """float32 [len(rows), n_mels, n_frames], in the order of `rows`."""
        return self.array(rows, "mel")
