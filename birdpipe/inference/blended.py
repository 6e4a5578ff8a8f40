"""The tuned blend on new audio: SED fold models, BirdNET zero-shot and embedding heads, combined.

A blend model is a folder (what the `ensemble` asset writes and registers in MLflow):

- `blend.json`: member weights, shrink, per-species training counts, classes;
- `birdnet.json`: the BirdNET weights' digest, chunk hop, and which BirdNET logit scores each class;
- `heads/<kind>/fold-<k>.npz`: embedding heads; `sed/fold-<k>/best.pt`: the SED fold models;
- `blend.onnx`: the heads and the member weights as one ONNX graph (`inference.blend_graph`).

Every member predicts each 5 s window of a recording (BirdNET's 3 s chunks pooled into the
window they start in); fold models of a member are averaged; the blend graph in ONNX Runtime
(or `Blend.apply` on the numpy heads, `use_onnx=False`) combines members.
BirdNET itself is not in the folder (its licence): the installed weights are used, and a
different digest is reported.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.audio import AudioStream, iter_blocks
from birdpipe.evaluation.blend import Blend
from birdpipe.features.config import MelConfig
from birdpipe.evaluation.members import birdnet_windows
from birdpipe.inference.blend_graph import MEMBER_INPUTS, BlendSession, export_blend
from birdpipe.inference.ensemble import Ensemble, load_ensemble
from birdpipe.inference.predict import FLAG_COLUMNS, flags, padded, predict_file
from birdpipe.models import birdnet as bn
from birdpipe.models.heads import Head

BLEND_FILE = "blend.json"
GRAPH_FILE = "blend.onnx"


@dataclass
class BlendedModel:
    blend: Blend
    sed: Ensemble | None
    birdnet: bn.BirdnetModel | None
    classifier: bn.BirdnetClassifier | None
    #: BirdNET logit per class (-1: not scored).
    birdnet_index: np.ndarray
    hop_seconds: float
    heads: dict[str, list[Head]]
    #: The exported heads and weights in ONNX Runtime; None: numpy.
    graph: BlendSession | None = None

    @property
    def classes(self) -> list[str]:
        return self.blend.classes

    @property
    def members(self) -> list[str]:
        """The members the blend weighs."""
        return [m for m, w in self.blend.weights.items() if w]

    @property
    def mel(self) -> MelConfig:
        """The SED members' mel parameters (window length, band for Raven tables); defaults without them."""
        return self.sed.mel if self.sed else MelConfig()

    def predict_file(self, path: Path, batch_size: int = 64) -> pl.DataFrame:
        """soundscape_id, end_seconds, one blended probability column per class and the flags of
        `inference.predict.FLAG_COLUMNS`, per 5 s window."""
        from birdpipe.inference.config import SubmissionConfig

        sub_cfg = SubmissionConfig(batch_size=batch_size)
        feeds: dict[str, np.ndarray] = {}
        frame = predict_file(self.sed, path, self.sed.mel, sub_cfg) if self.sed else None
        n = frame.height if frame is not None else None
        if self.birdnet is not None:
            windows, zero_shot, embeddings, stream = self._birdnet_windows(path)
            n = n or len(windows)
            feeds["zero_shot"], feeds["embedding"] = _fit(zero_shot, n), _fit(embeddings, n)
        if frame is not None:
            feeds["sed"] = frame.select(self.classes).to_numpy()
        else:
            ends = (np.arange(n) + 1) * 5
            frame = pl.DataFrame({"soundscape_id": [path.stem] * n, "end_seconds": ends}).hstack(flags(stream, ends - 5.0, 5.0))
        probs = self.graph.run(feeds) if self.graph else self.blend_numpy(feeds)
        return frame.select("soundscape_id", "end_seconds").hstack(pl.DataFrame(probs, schema=self.classes)).hstack(frame.select(*FLAG_COLUMNS))

    def blend_numpy(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """What the blend graph computes, in numpy: fold heads averaged, members weighed."""
        members = {m: feeds[MEMBER_INPUTS[m]] for m in MEMBER_INPUTS if m in self.members and MEMBER_INPUTS[m] in feeds}
        for kind, heads in self.heads.items():
            members[kind] = np.mean([h.predict(feeds["embedding"]) for h in heads], axis=0)
        return self.blend.apply(members)

    def _birdnet_windows(self, path: Path) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, AudioStream]:
        """BirdNET's windows, zero-shot scores and embeddings, and the stream (damage); missing
        audio up to the header's length is silence, as for the SED members."""
        stream = iter_blocks(path, bn.SAMPLE_RATE)
        embeddings, starts = [], []
        for chunks, first in bn._stream_chunks(padded(stream), self.hop_seconds):
            embeddings.append(self.birdnet.run(chunks)[0])
            starts.append(first / bn.SAMPLE_RATE)
        emb, starts = np.concatenate(embeddings), np.concatenate(starts)
        species = bn.SpeciesMap(self.classes, self.birdnet_index, {})
        w = birdnet_windows([path.name] * len(emb), starts, emb, 5.0, self.classifier, species)
        return w.keys, w.zero_shot, w.embedding, stream


def _fit(values: np.ndarray, n: int) -> np.ndarray:
    """Member rows aligned to the `n` submission windows (BirdNET may cover one more or less)."""
    if len(values) >= n:
        return values[:n]
    return np.vstack([values, np.repeat(values[-1:], n - len(values), axis=0)])


def save_blend_model(
    folder: Path, blend: Blend, birdnet_digest: str, hop_seconds: float, birdnet_index: np.ndarray,
    heads: Mapping[str, Mapping[int, Path]], sed_checkpoints: Mapping[int, Path],
) -> Path:  # fmt: skip
    """Write a self-contained blend folder (BirdNET's weights excepted)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    blend.to_json(folder / BLEND_FILE)
    (folder / "birdnet.json").write_text(json.dumps({"sha256": birdnet_digest, "hop_seconds": hop_seconds,
                                                     "index": [int(i) for i in birdnet_index]}))  # fmt: skip
    for kind, by_fold in heads.items():
        for fold, path in by_fold.items():
            (folder / "heads" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / "heads" / kind / f"fold-{fold}.npz")
    for fold, path in sed_checkpoints.items():
        (folder / "sed" / f"fold-{fold}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / "sed" / f"fold-{fold}" / "best.pt")
    export_blend(blend, _load_heads(folder), folder / GRAPH_FILE)
    return folder


def _load_heads(folder: Path) -> dict[str, list[Head]]:
    return {kind.name: [Head.load(p) for p in sorted(kind.glob("fold-*.npz"))] for kind in sorted((folder / "heads").glob("*"))}


def load_blend_model(folder: Path, use_onnx: bool = True, threads: int = 1) -> BlendedModel:
    """A blend folder, with the installed BirdNET when the blend uses BirdNET members."""
    blend = Blend.from_json(folder / BLEND_FILE)
    info = json.loads((folder / "birdnet.json").read_text())
    sed_files = sorted((folder / "sed").glob("fold-*/best.pt"))
    sed = load_ensemble(sed_files, use_onnx=use_onnx, threads=threads) if sed_files and blend.weights.get("sed") else None
    heads = _load_heads(folder)
    uses_birdnet = any(blend.weights.get(m) for m in ("birdnet", *heads))
    model = classifier = None
    if uses_birdnet:
        files = bn.find_birdnet()
        if files.digest != info["sha256"]:
            print(f"warning: installed BirdNET {files.digest} differs from the blend's {info['sha256']}", file=sys.stderr)
        onnx = bn.onnx_model(files)
        model, classifier = bn.BirdnetModel(onnx, threads=threads), bn.BirdnetClassifier.from_onnx(onnx)
    # blends registered before the graph existed run in numpy
    graph = BlendSession(folder / GRAPH_FILE, threads) if use_onnx and (folder / GRAPH_FILE).exists() else None
    return BlendedModel(blend, sed, model, classifier, np.asarray(info["index"]), info["hop_seconds"],
                        {k: v for k, v in heads.items() if blend.weights.get(k)}, graph)  # fmt: skip


def is_blend_model(path: Path) -> bool:
    return (Path(path) / BLEND_FILE).is_file()
