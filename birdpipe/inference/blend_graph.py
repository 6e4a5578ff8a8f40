"""The blend after its members' front-ends, as one ONNX graph: embedding heads, fold averaging
and the per-species member weights, run by ONNX Runtime.

Inputs (those the blend's members need): `embedding [N, D]` (a window's mean BirdNET
embedding), `zero_shot [N, C]` (BirdNET's scores, NaN where it has none) and `sed [N, C]` (the
SED folds' probabilities). Output `probs [N, C]`, equal to `Blend.apply` on the numpy heads:
a member's NaN gets no weight, and where no weighted member scores a species, the plain mean
of those that do (0 if none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from birdpipe.evaluation.blend import Blend
from birdpipe.models.heads import Head
from birdpipe.paths import atomic_write

#: Graph input of each member that is not a head.
MEMBER_INPUTS = {"sed": "sed", "birdnet": "zero_shot"}
OPSET = 17


def export_blend(blend: Blend, heads: Mapping[str, Sequence[Head]], path: Path) -> Path:
    """Write the graph of `blend` over its weighted members (`heads`: the fold heads of each kind)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    members = [m for m, w in blend.weights.items() if w and (m in MEMBER_INPUTS or heads.get(m))]
    n_classes = len(blend.classes)
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def head_probs(kind: str, fold_heads: Sequence[Head]) -> str:
        outs = []
        for f, head in enumerate(fold_heads):
            h = "embedding"
            for i, (w, b) in enumerate(head.layers):
                prefix = f"{kind}{f}_l{i}"
                nodes.append(helper.make_node("Gemm", [h, const(f"{prefix}_w", w), const(f"{prefix}_b", b)], [f"{prefix}_y"], transB=1))
                h = f"{prefix}_y"
                if i < len(head.layers) - 1:
                    nodes.append(helper.make_node("Relu", [h], [f"{prefix}_relu"]))
                    h = f"{prefix}_relu"
            nodes.append(helper.make_node("Sigmoid", [h], [f"{kind}{f}_p"]))
            outs.append(f"{kind}{f}_p")
        nodes.append(helper.make_node("Mean", outs, [f"{kind}_p"]))
        return f"{kind}_p"

    weights = blend.species_weights(members, np.asarray(blend.counts))
    zero = const("zero", np.zeros(1))
    one = const("one", np.ones(1))
    parts = {"num": [], "den": [], "sum": [], "count": []}
    for i, m in enumerate(members):
        p = MEMBER_INPUTS.get(m) or head_probs(m, heads[m])
        nodes += [
            helper.make_node("IsNaN", [p], [f"{m}_nan"]),
            helper.make_node("Not", [f"{m}_nan"], [f"{m}_ok"]),
            helper.make_node("Cast", [f"{m}_ok"], [f"{m}_okf"], to=TensorProto.FLOAT),
            helper.make_node("Where", [f"{m}_nan", zero, p], [f"{m}_filled"]),
            helper.make_node("Mul", [f"{m}_okf", const(f"{m}_weight", weights[i])], [f"{m}_w"]),
            helper.make_node("Mul", [f"{m}_w", f"{m}_filled"], [f"{m}_wp"]),
        ]
        parts["num"].append(f"{m}_wp")
        parts["den"].append(f"{m}_w")
        parts["sum"].append(f"{m}_filled")
        parts["count"].append(f"{m}_okf")
    for name, terms in parts.items():
        nodes.append(helper.make_node("Sum", terms, [name]))
    nodes += [
        helper.make_node("Greater", ["den", zero], ["weighted"]),
        helper.make_node("Max", ["den", const("tiny", np.full(1, 1e-30))], ["den_safe"]),
        helper.make_node("Div", ["num", "den_safe"], ["blended"]),
        helper.make_node("Max", ["count", one], ["count_safe"]),
        helper.make_node("Div", ["sum", "count_safe"], ["fallback"]),
        helper.make_node("Where", ["weighted", "blended", "fallback"], ["probs"]),
    ]
    kinds = [m for m in members if m not in MEMBER_INPUTS]
    shapes = {"embedding": ["N", heads[kinds[0]][0].layers[0][0].shape[1]] if kinds else None}
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes.get(name) or ["N", n_classes]) for name in graph_inputs(members)]
    graph = helper.make_graph(nodes, "birdpipe_blend", inputs,
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_classes])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="birdpipe")
    model.ir_version = 8  # readable by onnxruntime >= 1.14 (onnx writes newer IR versions than it reads)
    model.metadata_props.add(key="classes", value="\n".join(blend.classes))
    onnx.checker.check_model(model)
    return atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))


def graph_inputs(members: Sequence[str]) -> list[str]:
    """The graph's inputs for `members`, in a fixed order."""
    names = [MEMBER_INPUTS[m] for m in ("sed", "birdnet") if m in members]
    return names + (["embedding"] if any(m not in MEMBER_INPUTS for m in members) else [])


class BlendSession:
    """The exported blend in ONNX Runtime."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["probs"], {k: np.asarray(feeds[k], np.float32) for k in self.inputs})[0]
