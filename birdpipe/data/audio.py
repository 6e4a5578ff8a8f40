"""Audio decoding that survives bad files: float32 mono at the configured rate.

Every format goes through soundfile/libsndfile (ogg, mp3, wav, flac, ...), with audioread
only as a fallback for what libsndfile cannot open. Decoding is streamed in blocks so a
2-hour recording never sits in memory at its native rate; resampling is streamed too
(soxr). A file that breaks mid-stream, or ends before the length its header promises, keeps
what was decoded and is flagged `damaged` with the seconds lost; a file that yields no usable
audio raises `AudioError` with the reason, for quarantine.

C decoders print notes on the process's stderr (mpg123: "Note: Illegal Audio-MPEG-Header
..."); they are caught around each libsndfile call and kept in `AudioStream.notes`, so callers
log them with the file's name instead of leaving unattributed lines on the terminal.

Writing goes through `write`, one second per libsndfile call: libvorbis overflows its
stack (SIGSEGV) when one call hands it minutes of audio to encode.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

#: Native-rate frames per read: amortises calls; small so a damaged file loses little.
READ_FRAMES = 1 << 16
#: Seconds of audio per libsndfile write call (libvorbis crashes on one call of ~10 minutes).
WRITE_SECONDS = 1.0
#: Formats whose header states the exact length (mutagen reads it): libsndfile clips a cut
#: WAV's length to the bytes present, so only the header tells what is missing.
EXACT_LENGTH_HEADERS = ("WAVE", "AIFF", "FLAC")


class AudioError(Exception):
    """A file that cannot be used as audio; `reason` is short and meant for a quarantine table."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class AudioInfo:
    path: str
    readable: bool
    reason: str | None
    duration_s: float
    sample_rate: int
    channels: int
    frames: int
    damaged: bool
    #: The C decoder's messages while reading the file (`AudioStream.notes`).
    notes: tuple[str, ...] = ()


class _DecoderNotes:
    """What C code writes to file descriptor 2 while `capture()` is active, as lines.

    Only libsndfile's calls are wrapped (a few syscalls each), never a caller's code, so the
    caller's own stderr output (a progress bar) stays on the terminal."""

    def __init__(self):
        self.lines: list[str] = []
        self._file = None

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(buffering=0)
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if self._file.tell():  # the C writes moved the offset this descriptor shares
                self._file.seek(0)
                text = self._file.read().decode("utf-8", "replace")
                self._file.seek(0)
                self._file.truncate()
                self.lines += [line.strip() for line in text.splitlines() if line.strip()]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Source:
    """An open file at its native rate: soundfile first, audioread as the fallback."""

    def __init__(self, path: Path):
        self.path = path
        self.notes = _DecoderNotes()
        if not path.is_file():
            raise AudioError(path, _not_a_file(path))
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file (0 bytes)")
        try:
            with self.notes.capture():
                self._sf = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            self._sf = None
            self._ar = _audioread_open(path, exc)
            self.sample_rate, self.channels, self.frames = self._ar.samplerate, self._ar.channels, 0
        else:
            self.sample_rate, self.channels, self.frames = self._sf.samplerate, self._sf.channels, self._sf.frames
        #: Set when decoding stopped early on an error after some audio came out.
        self.damage: str | None = None

    def blocks(self, start_frame: int = 0, max_frames: int | None = None) -> Iterator[np.ndarray]:
        """Mono float32 blocks from `start_frame`; stops (flagging damage) at a decoding error."""
        left = max_frames if max_frames is not None else np.inf
        reader = self._sf_blocks(start_frame, left) if self._sf is not None else self._ar_blocks(start_frame)
        try:
            for block in reader:
                block = block[: int(min(len(block), left))]
                if not np.isfinite(block).all():
                    raise AudioError(self.path, "contains NaN or infinite samples")
                left -= len(block)
                yield block
                if left <= 0:
                    return
        except (sf.LibsndfileError, RuntimeError, EOFError, OSError) as exc:
            self.damage = str(exc)[:120]
        finally:
            self.close()

    def _sf_blocks(self, start_frame: int, limit: float) -> Iterator[np.ndarray]:
        if start_frame:
            self._sf.seek(min(start_frame, self.frames))
        while limit > 0:
            with self.notes.capture():
                data = self._sf.read(int(min(READ_FRAMES, limit)), dtype="float32", always_2d=True)
            if not len(data):
                return
            limit -= len(data)
            yield _mono(data)

    def _ar_blocks(self, start_frame: int) -> Iterator[np.ndarray]:
        skip = start_frame
        for buf in self._ar:
            data = np.frombuffer(buf, dtype="<i2").astype(np.float32) / 32768.0
            data = _mono(data.reshape(-1, self.channels))
            if skip >= len(data):
                skip -= len(data)
                continue
            yield data[skip:]
            skip = 0

    def close(self) -> None:
        (self._sf or self._ar).close()
        self.notes.close()

    def expected(self) -> tuple[float, bool]:
        """Seconds the file should hold (0: unknown), what a short read is measured against, and
        whether it is an Ogg stream cut before its last page. Reads the header again (mutagen),
        so only whole-file reads pay for it, not crops."""
        header_seconds, ogg_cut = _header(self.path)
        return max(self.frames / self.sample_rate if self.frames else 0.0, header_seconds), ogg_cut


def _audioread_open(path: Path, sf_error: Exception):
    """Fallback decoder; its failure reports libsndfile's reason, the more telling one."""
    try:
        with warnings.catch_warnings():  # audioread imports modules deprecated in Python 3.13
            warnings.simplefilter("ignore", DeprecationWarning)
            import audioread

            return audioread.audio_open(str(path))
    except Exception:  # noqa: BLE001 - any backend failure means "not decodable here"
        raise AudioError(path, _undecodable(path, sf_error)) from None


def _undecodable(path: Path, sf_error: Exception) -> str:
    """libsndfile's reason without the path; for a file it has no decoder for (a text file
    named .mp3) it says "File does not exist", so the file's first bytes are shown instead."""
    message = str(sf_error).splitlines()[0].split(": ", 1)[-1]
    if "does not exist" in message or "not recognised" in message:
        with open(path, "rb") as f:
            message = f"no audio format recognised; it starts with {f.read(16)!r}"
    return f"not decodable audio ({message[:120]})"


def _not_a_file(path: Path) -> str:
    """Why `path` is not a regular file: missing, a broken symlink, a loop, a folder."""
    try:
        path.stat()
    except FileNotFoundError:
        return f"broken symlink to {os.readlink(path)}" if path.is_symlink() else "missing"
    except OSError as exc:
        return f"cannot be opened: {exc.strerror}"  # a symlink loop: "Too many levels of symbolic links"
    return "not a regular file"


def _header(path: Path) -> tuple[float, bool]:
    """The length an exact header states (0 when none does) and whether an Ogg stream lacks its
    end page (a cut Ogg states no length: libsndfile takes it from the last page present)."""
    import mutagen
    from mutagen.ogg import OggFileType, OggPage

    try:
        meta = mutagen.File(path)
        if isinstance(meta, OggFileType):
            with open(path, "rb") as f:
                return 0.0, not OggPage.find_last(f, meta.info.serial).last
        return (meta.info.length if type(meta).__name__ in EXACT_LENGTH_HEADERS else 0.0), False
    except (mutagen.MutagenError, OSError, ValueError, AttributeError):
        return 0.0, False  # no header to check against; decoding alone decides


def _mono(data: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames]; one channel is a view (its column is contiguous)."""
    return data.reshape(-1) if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)


class AudioStream:
    """Iterable of float32 mono blocks of `block_seconds` at `sr` (the last one shorter).

    After iteration `damaged`, `reason`, `source_rate`, `channels` and `samples` describe the
    file. Raises AudioError if the file yields no audio at all or contains non-finite values.
    """

    def __init__(self, path: str | Path, sr: int, block_seconds: float = 60.0):
        self.path = Path(path)
        self.sr = sr
        self.block = max(1, int(round(block_seconds * sr)))
        self.damaged = False
        self.reason: str | None = None
        #: Seconds the header promises (0: unknown), set after iteration.
        self.expected_seconds = 0.0
        #: What the C decoder printed while reading this file, one message per line.
        self.notes: list[str] = []
        self.samples = 0
        self.source_rate = 0
        self.channels = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        src = _Source(self.path)
        self.source_rate, self.channels, self.notes = src.sample_rate, src.channels, src.notes.lines
        #: Known before decoding, so a caller can still fill a file that decodes to nothing.
        self.expected_seconds, ogg_cut = src.expected()
        pending: list[np.ndarray] = []
        n_pending = 0
        for chunk in _resampled(src.blocks(), src.sample_rate, self.sr):
            pending.append(chunk)
            n_pending += len(chunk)
            while n_pending >= self.block:
                joined = np.concatenate(pending)
                self.samples += self.block
                yield joined[: self.block]
                pending, n_pending = [joined[self.block :]], n_pending - self.block
        if n_pending:
            self.samples += n_pending
            yield np.concatenate(pending)
        self._finish(src, ogg_cut)

    def _finish(self, src: _Source, ogg_cut: bool) -> None:
        if self.samples == 0:
            raise AudioError(self.path, f"decoding failed: {src.damage}" if src.damage else "no audio frames (zero length)")
        expected, decoded = self.expected_seconds, self.samples / self.sr
        short = expected and decoded < expected - 0.001 - 1 / self.sr
        of = f"{decoded:.2f} s of {expected:.2f} s decoded, {expected - decoded:.2f} s lost" if short else f"{decoded:.2f} s decoded"
        if src.damage is not None:
            self.reason = f"decoding stopped early ({of}): {src.damage}"
        elif short:
            self.reason = f"truncated: {of}"
        elif ogg_cut:
            self.reason = f"truncated: the Ogg stream ends without its last page after {decoded:.2f} s (the rest is lost, its length unknown)"
        self.damaged = self.reason is not None


def _resampled(blocks: Iterator[np.ndarray], in_rate: int, out_rate: int) -> Iterator[np.ndarray]:
    """Streamed soxr resampling; a no-op at the target rate."""
    if in_rate == out_rate:
        yield from blocks
        return
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")
    for block in blocks:
        out = stream.resample_chunk(block)
        if len(out):
            yield out
    tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
    if len(tail):
        yield tail


def iter_blocks(path: str | Path, sr: int, block_seconds: float = 60.0) -> AudioStream:
    """Stream a file in bounded memory; the returned object reports damage after iteration."""
    return AudioStream(path, sr, block_seconds)


def load(path: str | Path, sr: int) -> np.ndarray:
    """The whole file as float32 mono at `sr` (a damaged file: as far as it decodes)."""
    return np.concatenate(list(iter_blocks(path, sr)))


def read_segment(path: str | Path, sr: int, start_s: float, duration_s: float) -> np.ndarray:
    """`duration_s` seconds from `start_s`, zero-padded to exactly round(duration_s * sr) samples.

    Seeks at the native rate, so a crop of a long file costs only the crop.
    """
    n_out = int(round(duration_s * sr))
    src = _Source(Path(path))
    rate = src.sample_rate
    start = int(round(max(0.0, start_s) * rate))
    n_in = int(np.ceil(duration_s * rate)) + 1
    parts = list(src.blocks(start, n_in))
    native = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    wave = native if rate == sr else soxr.resample(native, rate, sr).astype(np.float32, copy=False)
    out = np.zeros(n_out, np.float32)
    out[: min(n_out, len(wave))] = wave[:n_out]
    return out


def write(path: str | Path, x: np.ndarray, sample_rate: int, format: str | None = None, subtype: str | None = None) -> None:
    """Write `x` ([frames] or [frames, channels]) in chunks of `WRITE_SECONDS`; the format
    follows the suffix unless given (e.g. "OGG", "VORBIS")."""
    x = np.asarray(x)
    channels = 1 if x.ndim == 1 else x.shape[1]
    step = max(1, int(WRITE_SECONDS * sample_rate))
    with sf.SoundFile(str(path), "w", sample_rate, channels, subtype=subtype, format=format) as f:
        for start in range(0, len(x), step):
            f.write(x[start : start + step])


def probe(path: str | Path, decode: bool = True) -> AudioInfo:
    """What a file holds; never raises. `decode` reads it through (at native rate) to find
    damaged frames and NaNs, which the header cannot tell."""
    path = Path(path)
    stream = None
    try:
        src = _Source(path)
        rate, channels = src.sample_rate, src.channels
        if decode:
            src.close()
            stream = AudioStream(path, rate, block_seconds=600.0)
            for _ in stream:
                pass
            frames, damaged, reason = stream.samples, stream.damaged, stream.reason
        else:
            frames = max(src.frames, round(src.expected()[0] * rate))
            src.close()
            if frames == 0:
                raise AudioError(path, "no audio frames (zero length)")
            damaged, reason = False, None
        notes = stream.notes if stream else src.notes.lines
        return AudioInfo(str(path), True, reason, frames / rate, rate, channels, frames, damaged, tuple(notes))
    except AudioError as exc:
        return AudioInfo(str(path), False, exc.reason, 0.0, 0, 0, 0, False, tuple(stream.notes if stream else ()))
