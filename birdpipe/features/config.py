"""Parameters of the feature stage: the log-mel windows and how their cache is built."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from birdpipe.schema import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Section


class MelConfig(Section):
    """Log-mel spectrogram of fixed windows, with optional spectral-gating noise reduction."""

    sample_rate: PositiveInt = 32000
    window_seconds: PositiveFloat = 5.0
    stride_seconds: PositiveFloat = 5.0
    #: A trailing part shorter than this is dropped; a recording shorter than one window
    #: always yields one zero-padded window.
    min_tail_seconds: PositiveFloat = 1.0
    n_fft: PositiveInt = 2048
    hop_length: PositiveInt = 512
    n_mels: PositiveInt = 128
    fmin: NonNegativeFloat = 40.0
    fmax: PositiveFloat = 15000.0
    #: Dynamic range kept below each window's peak, in dB.
    top_db: PositiveFloat = 80.0
    #: "minmax": each window scaled to [0, 1]; "none": raw dB.
    normalize: Literal["minmax", "none"] = "minmax"
    noise_reduce: bool = True
    noise_mode: Literal["stationary", "nonstationary"] = "stationary"
    #: Gate threshold: mean + n_std * std of the noise statistics per band.
    noise_n_std: NonNegativeFloat = 1.5
    noise_prop_decrease: Probability = 1.0
    #: Non-stationary mode: length of the running noise estimate.
    noise_time_constant_s: PositiveFloat = 2.0
    #: Noise statistics are estimated over chunks of this length (bounded memory).
    noise_chunk_seconds: PositiveFloat = 60.0
    #: Soft-mask smoothing across frequency and time (noisereduce's defaults).
    noise_freq_smooth_hz: NonNegativeFloat = 500.0
    noise_time_smooth_ms: NonNegativeFloat = 50.0
    #: Non-stationary mode: gate opens this many times above the running estimate...
    noise_thresh_n_mult: PositiveFloat = 2.0
    #: ...with this sigmoid slope.
    noise_sigmoid_slope: PositiveFloat = 10.0
    dtype: Literal["float16", "float32"] = "float16"

    @model_validator(mode="after")
    def _consistent(self) -> MelConfig:
        if not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need fmin < fmax <= sample_rate / 2, got fmin {self.fmin}, fmax {self.fmax}, sample_rate {self.sample_rate}")
        if self.n_fft > self.window_samples:
            raise ValueError(f"n_fft {self.n_fft} is longer than a window ({self.window_samples} samples)")
        if self.min_tail_seconds > self.window_seconds:
            raise ValueError(f"min_tail_seconds {self.min_tail_seconds} exceeds window_seconds {self.window_seconds}")
        return self

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def stride_samples(self) -> int:
        return int(round(self.stride_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Frames per window (centred STFT)."""
        return 1 + self.window_samples // self.hop_length


class CacheConfig(Section):
    """How the mel cache is built; none of it changes the cache's content."""

    #: Worker processes; 0 means one per CPU core. 1 computes in this process: no worker to
    #: lose, but a decoder that segfaults ends the run and `file_timeout_s` does not apply.
    workers: NonNegativeInt = 0
    #: Seconds one recording may take in a worker (decode and mels; the manifest's probe
    #: too) before the worker is killed and the recording quarantined as timed out.
    file_timeout_s: PositiveFloat = 600.0
    #: Upper bound of one Parquet shard file, in MiB (0: one shard per recording).
    shard_max_mb: NonNegativeInt = 256
    #: zstd level of the shards. Log-mels in float16 are close to noise for a compressor:
    #: level 1 gives the same size as 3 at half the CPU (xc-puerto-rico: 88.8 MB either way).
    zstd_level: Annotated[int, Field(ge=1, le=22)] = 1
    #: Dagster partitions of the cache (a backfill fans out over them).
    partitions: PositiveInt = 1
    #: Windows per Parquet row group: the unit a random read decompresses.
    row_group_windows: PositiveInt = 8
    #: Species whose example window (without and with noise reduction) the cache's asset
    #: shows, so the gate's effect is seen rather than read from its settings; 0 for none.
    example_species: NonNegativeInt = 6
    #: Recordings between two progress lines (count, files/s, ETA) in the build's log; a line
    #: also comes every 30 s while recordings finish, so a slow build is never silent.
    progress_every: PositiveInt = 100
