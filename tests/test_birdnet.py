"""BirdNET: conversion against the TFLite reference, species mapping, the embeddings cache, heads, blend."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from birdpipe.evaluation import metrics
from birdpipe.evaluation.blend import Blend, OofSet, _ranked_macro_auc, tune
from birdpipe.features.windows import pool_files, pool_windows
from birdpipe.models import birdnet as bn

try:
    FILES = bn.find_birdnet()
except bn.BirdnetMissing:
    FILES = None
needs_birdnet = pytest.mark.skipif(FILES is None, reason="BirdNET is not installed (make birdnet)")


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    return bn.onnx_model(FILES, tmp_path_factory.mktemp("birdnet"))


@needs_birdnet
def test_converted_model_equals_tflite_within_1e4_on_real_audio(real_dataset, converted):
    from birdpipe.data.audio import load
    from birdpipe.paths import list_audio

    chunks = []
    for path in list_audio(real_dataset / "train_audio")[:6]:
        wave = load(path, bn.SAMPLE_RATE)
        chunks.append(bn.chunk_audio(wave, bn.chunk_starts(len(wave), 3.0))[:3])
    chunks = np.concatenate(chunks)
    emb, logits = bn.BirdnetModel(converted, batch_size=4, device="cpu").run(chunks)
    ref_emb, ref_logits = bn.TfliteReference(FILES.model).run(chunks)
    assert emb.shape == (len(chunks), 1024) and logits.shape == (len(chunks), 6522)
    assert np.abs(emb - ref_emb).max() < 1e-4 and np.abs(logits - ref_logits).max() < 1e-4
    # logits are one linear layer on the embedding: the cache keeps embeddings only
    assert np.abs(bn.BirdnetClassifier.from_onnx(converted).logits(emb) - logits).max() < 1e-4


@needs_birdnet
def test_conversion_is_cached_by_the_weights_digest(converted):
    assert converted.name == f"birdnet-{FILES.digest}.onnx" and bn.frontend_path(converted).is_file()
    mtime = converted.stat().st_mtime_ns
    assert bn.onnx_model(FILES, converted.parent) == converted and converted.stat().st_mtime_ns == mtime


def test_missing_weights_say_how_to_install(tmp_path):
    with pytest.raises(bn.BirdnetMissing, match=r"nowhere.tflite: BirdNET model file not found; install it with `make birdnet`"):
        bn.find_birdnet(str(tmp_path / "nowhere.tflite"))


def test_chunks_cover_the_audio_and_streaming_gives_the_same_chunks():
    rng = np.random.default_rng(0)
    wave = rng.normal(size=int(9.7 * bn.SAMPLE_RATE)).astype(np.float32)
    starts = bn.chunk_starts(len(wave), 2.5)
    assert list(starts / bn.SAMPLE_RATE) == [0.0, 2.5, 5.0, 7.5]  # the last one zero-padded past 9.7 s
    assert list(bn.chunk_starts(bn.SAMPLE_RATE, 2.5)) == [0]  # 1 s: one padded chunk
    whole = bn.chunk_audio(wave, starts)
    blocks = [wave[i : i + 50_000] for i in range(0, len(wave), 50_000)]
    streamed = list(bn._stream_chunks(blocks, 2.5, batch=3))
    assert np.concatenate([s for _, s in streamed]).tolist() == starts.tolist()
    np.testing.assert_array_equal(np.concatenate([c for c, _ in streamed]), whole)


def test_species_mapping_by_scientific_name_with_override_and_none_matching(tmp_path):
    labels = [("Coereba flaveola", "Bananaquit"), ("Setophaga petechia", "Yellow Warbler"), ("Tyto alba", "Barn Owl")]
    taxonomy = pl.DataFrame({"primary_label": ["banana", "yelwar", "coqui"],
                             "scientific_name": ["coereba  FLAVEOLA", "Setophaga aestiva", "Eleutherodactylus coqui"]})  # fmt: skip
    plain = bn.map_species(taxonomy, labels)
    assert plain.index.tolist() == [0, -1, -1] and plain.unmatched == {"yelwar": "Setophaga aestiva", "coqui": "Eleutherodactylus coqui"}
    mapping = tmp_path / "map.csv"
    mapping.write_text("primary_label,scientific_name\nyelwar,Setophaga petechia\n")
    assert bn.map_species(taxonomy, labels, mapping).index.tolist() == [0, 1, -1]
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    picked = bn.map_species(taxonomy, labels, mapping).select(logits)
    assert picked[:, :2].tolist() == [[0, 1], [3, 4]] and np.isnan(picked[:, 2]).all()
    none = bn.map_species(taxonomy.with_columns(pl.lit("Nomen nudum").alias("scientific_name")), labels)
    assert not none.matched.any() and len(none.unmatched) == 3
    mapping.write_text("primary_label,scientific_name\nzzz,Tyto alba\n")
    with pytest.raises(ValueError, match="not in the taxonomy"):
        bn.map_species(taxonomy, labels, mapping)


def test_pooling_chunks_into_windows_and_recordings():
    keys, pooled = pool_windows(["b", "a", "a", "b", "a"], np.array([0, 0, 2.5, 5.0, 5.0]),
                                np.array([[1, np.nan], [2, np.nan], [3, np.nan], [4, np.nan], [5, 1]]), 5.0, "max")  # fmt: skip
    assert keys.rows() == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    np.testing.assert_array_equal(pooled[:, 0], [3, 5, 1, 4])
    assert np.isnan(pooled[[0, 2, 3], 1]).all() and pooled[1, 1] == 1  # a species nobody scores stays NaN
    files, mean = pool_files(["b", "a", "a"], np.array([[1.0, 2], [3, 4], [5, 6]]), "mean")
    assert files == ["a", "b"] and mean.tolist() == [[4, 5], [1, 2]]


def test_ranked_auc_equals_sklearn_macro_auc():
    rng = np.random.default_rng(1)
    y = (rng.random((60, 5)) < 0.3).astype(float)
    y[:, 4] = 0  # no positives: left out by both
    p = np.round(rng.random((60, 5)) + y * 0.3, 1)  # ties
    assert _ranked_macro_auc(y, p) == pytest.approx(metrics.macro_auc(y, p), abs=1e-12)


def test_blend_leans_on_the_prior_for_thin_species_and_skips_missing_scores():
    blend = Blend({"birdnet": 1.0, "mlp": 1.0}, shrink=3.0)
    probs = {"birdnet": np.array([[0.9, np.nan]]), "mlp": np.array([[0.1, 0.4]])}
    thin = blend.apply(probs, counts=np.array([1, 1]))
    rich = blend.apply(probs, counts=np.array([30, 30]))
    # species 0: weight of the head 1/(1+3) with 1 recording, 30/33 with 30
    assert thin[0, 0] == pytest.approx((0.9 + 0.25 * 0.1) / 1.25) and rich[0, 0] == pytest.approx((0.9 + 30 / 33 * 0.1) / (1 + 30 / 33))
    assert thin[0, 1] == pytest.approx(0.4) and rich[0, 1] == pytest.approx(0.4)  # BirdNET cannot score species 1


def test_tuning_finds_the_member_that_ranks_recordings_right():
    rng = np.random.default_rng(0)
    n, c = 80, 4
    truth = np.zeros((n, c))
    truth[np.arange(n), rng.integers(0, c, n)] = 1.0
    good = np.clip(truth * 0.6 + rng.random((n, c)) * 0.5, 0, 1)
    noise = rng.random((n, c))
    oof = OofSet([f"f{i}" for i in range(n)], {"birdnet": noise, "mlp": good}, truth, np.arange(n) % 2,
                 np.full((2, c), 10), [0, 1], list("abcd"))  # fmt: skip
    blend, score = tune(oof, ["birdnet", "mlp"], (0.0, 1.0), (0.0, 3.0))
    assert blend.weights == {"birdnet": 0.0, "mlp": 1.0} and score > 0.9


def test_heads_learn_separable_embeddings_and_run_in_numpy(tmp_path):
    from birdpipe.config import HeadConfig
    from birdpipe.models.heads import Head
    from birdpipe.training.heads import fit_head

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 16))
    labels = rng.integers(0, 3, 300)
    x = (centres[labels] + rng.normal(0, 1, (300, 16))).astype(np.float32)
    y = np.eye(3)[labels]
    for kind in ("logistic", "mlp"):
        head = fit_head(kind, x, y, ["a", "b", "c"], HeadConfig(epochs=30, lr=1e-2))
        assert (head.predict(x).argmax(axis=1) == labels).mean() > 0.95
        again = Head.load(head.save(tmp_path / f"{kind}.npz"))
        assert again.kind == kind and again.classes == ["a", "b", "c"]
        np.testing.assert_array_equal(again.predict(x), head.predict(x))


def test_blend_graph_in_onnx_runtime_equals_the_numpy_blend(tmp_path):
    from birdpipe.inference.blend_graph import BlendSession, export_blend
    from birdpipe.models.heads import Head

    rng = np.random.default_rng(0)
    n, d, c = 50, 16, 4
    classes = list("abcd")

    def head(kind, sizes):
        return Head(kind, classes, [(rng.normal(0, 0.5, (o, i)).astype(np.float32), rng.normal(0, 0.1, o).astype(np.float32))
                                    for i, o in zip(sizes[:-1], sizes[1:])])  # fmt: skip

    heads = {"logistic": [head("logistic", [d, c]) for _ in range(3)], "mlp": [head("mlp", [d, 8, c]) for _ in range(3)]}
    blend = Blend({"sed": 1.0, "birdnet": 2.0, "logistic": 0.5, "mlp": 1.0}, shrink=3.0, counts=[0, 1, 5, 40], classes=classes)
    x = rng.normal(size=(n, d)).astype(np.float32)
    zero_shot = rng.random((n, c)).astype(np.float32)
    zero_shot[:, 3] = np.nan  # a species BirdNET does not know
    sed = rng.random((n, c)).astype(np.float32)
    expected = blend.apply({"sed": sed, "birdnet": zero_shot} | {k: np.mean([h.predict(x) for h in hs], axis=0) for k, hs in heads.items()})

    session = BlendSession(export_blend(blend, heads, tmp_path / "blend.onnx"))
    assert session.inputs == ["sed", "zero_shot", "embedding"]
    np.testing.assert_allclose(session.run({"sed": sed, "zero_shot": zero_shot, "embedding": x}), expected, atol=1e-6)

    # BirdNET alone: a species it cannot score falls back to 0, as Blend.apply does with no member scoring it
    prior = Blend({"birdnet": 1.0, "mlp": 0.0}, 3.0, [1, 1, 1, 1], classes)
    only = BlendSession(export_blend(prior, heads, tmp_path / "prior.onnx"))
    assert only.inputs == ["zero_shot"]
    np.testing.assert_allclose(only.run({"zero_shot": zero_shot}), prior.apply({"birdnet": zero_shot}), atol=1e-6)
    # out of fold every member is scored; a zero-weight member must not fill in where inference cannot
    every = {"birdnet": zero_shot, "mlp": np.mean([h.predict(x) for h in heads["mlp"]], axis=0)}
    np.testing.assert_allclose(prior.apply(every), only.run({"zero_shot": zero_shot}), atol=1e-6)
