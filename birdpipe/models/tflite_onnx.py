"""BirdNET V2.4's TFLite file to ONNX, without TensorFlow.

The only distributed weights are a TFLite flatbuffer; TensorFlow is too heavy a dependency
and no public converter handles the model's spectrogram front-end (RFFT2D followed by a cast
that keeps the real part). So the flatbuffer is read with the pure-Python `tflite` package
and the network body is emitted op by op with `onnx.helper`, from the spectrogram onwards;
the front-end runs in numpy (`birdnet.NumpyFrontend`) with constants read from the same file.

The body (NHWC in TFLite) is emitted in NCHW: conv weights are transposed, channel axes
remapped, the squeeze-excitation "Mean -> Reshape(B,1,1,C)" becomes GlobalAveragePool,
explicit PAD ops fold into the following VALID convolution, TF "SAME" padding becomes
explicit pads, and the int32 shape plumbing (SHAPE/STRIDED_SLICE/PACK) is dropped. The
flatbuffer's stored shapes are placeholders, so shapes are tracked here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from birdpipe.models.birdnet import CHUNK_SAMPLES, NumpyFrontend, file_sha256, frontend_path
from birdpipe.paths import atomic_write

OPSET = 17


def frontend_constants(G: _TfliteGraph) -> dict:
    """The front-end's parameters as `NumpyFrontend` takes them, from the flatbuffer."""
    branches = []
    for b in (1, 2):
        q = f"model/MEL_SPEC{b}/"
        branches.append((
            int(G.const_by_suffix(q, "stft/frame_length")), int(G.const_by_suffix(q, "stft/frame_step")),
            G.const_by_suffix(q, "stft/hann_window/sub_2"), G.const_by_suffix(q, "Tensordot/MatMul"),  # [96, L/2+1]
            G.const_by_suffix(q, "truediv_1"),
        ))  # fmt: skip
    p = "model/MEL_SPEC1/"
    return {"eps": G.const_by_suffix(p, "add/y"), "off": G.const_by_suffix(p, "Sub_1/y"),
            "scale": G.const_by_suffix(p, "Mul/y"), "branches": branches}  # fmt: skip


class _TfliteGraph:
    """Thin read-only view of subgraph 0 of a TFLite flatbuffer."""

    _NP = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64, 9: np.int8}

    def __init__(self, path):
        import tflite  # pure-Python flatbuffer schema bindings

        self.tfl = tflite
        self.buf = Path(path).read_bytes()
        self.model = tflite.Model.GetRootAsModel(self.buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise ValueError("expected a single-subgraph model")
        self.g = self.model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        self.opcodes = []
        for i in range(self.model.OperatorCodesLength()):
            oc = self.model.OperatorCodes(i)
            # newer schemas store codes > 127 in BuiltinCode, older in DeprecatedBuiltinCode
            self.opcodes.append(names[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())])
        self.ops = []
        for i in range(self.g.OperatorsLength()):
            op = self.g.Operators(i)
            ins = [int(j) for j in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(j) for j in op.OutputsAsNumpy()]
            self.ops.append((self.opcodes[op.OpcodeIndex()], ins, outs, op))
        self.by_name = {self.name(i): i for i in range(self.g.TensorsLength())}
        self.producer = {o: k for k, (_, _, outs, _) in enumerate(self.ops) for o in outs}
        self.consumers: dict[int, list[int]] = {}
        for k, (_, ins, _, _) in enumerate(self.ops):
            for j in ins:
                self.consumers.setdefault(j, []).append(k)

    def name(self, i: int) -> str:
        return self.g.Tensors(i).Name().decode()

    def const(self, i: int) -> np.ndarray | None:
        """Constant tensor data, or None for activations."""
        t = self.g.Tensors(i)
        b = self.model.Buffers(t.Buffer())
        if b is None or b.DataLength() == 0:
            return None
        shape = [int(s) for s in t.ShapeAsNumpy()] if t.ShapeLength() else []
        return np.frombuffer(b.DataAsNumpy().tobytes(), self._NP[t.Type()]).reshape(shape).copy()

    def const_by_suffix(self, prefix: str, suffix: str) -> np.ndarray:
        """Constant whose name is exactly prefix+suffix (front-end parameters)."""
        i = self.by_name.get(prefix + suffix)
        v = None if i is None else self.const(i)
        if v is None:
            raise ValueError(f"front-end constant {prefix + suffix!r} not found")
        return v

    def options(self, op, cls_name: str):
        cls = getattr(self.tfl, cls_name)
        o = cls()
        t = op.BuiltinOptions()
        o.Init(t.Bytes, t.Pos)
        return o


class _Onnx:
    """Accumulates nodes/initializers with unique names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.h, self.nh = helper, numpy_helper
        self.nodes, self.inits, self._n = [], [], 0

    def uid(self, base: str) -> str:
        self._n += 1
        return f"{base.replace(';', '_').replace('/', '_')[:60]}__{self._n}"

    def const(self, arr, base="c") -> str:
        name = self.uid(base)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op, inputs, base, n_out=1, **attrs):
        outs = [self.uid(base) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op, inputs, outs, name=self.uid(op), **attrs))
        return outs[0] if n_out == 1 else outs


_ACT = {0: None, 1: "Relu"}  # TFLite fused activation codes BirdNET uses (NONE, RELU)
_SAME, _VALID = 0, 1


def _same_pads(size, k, s):
    """TF 'SAME' padding (extra pixel at the end, = ONNX SAME_UPPER) as explicit pads."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _spec_concat_id(G: _TfliteGraph) -> int:
    """TFLite tensor the body starts from: CONCATENATION of the two MEL_SPEC branches."""
    for op, ins, outs, _ in G.ops:
        if op == "CONCATENATION" and len(ins) == 2 and all(
            G.name(i).startswith("model/MEL_SPEC") and G.ops[G.producer[i]][0] == "EXPAND_DIMS"
            for i in ins
        ):
            return outs[0]
    raise ValueError("spectrogram concat not found")


def convert(tflite_path: Path, onnx_path: Path) -> Path:
    """BirdNET V2.4's network body as ONNX: input `spec` float32 [B, 2, 96, 511] (the two
    stacked spectrograms, NCHW), outputs `embedding` [B, 1024] and `logits` [B, 6522]; the
    front-end's constants go beside it (`frontend_path`) for `birdnet.NumpyFrontend`."""
    import onnx

    G = _TfliteGraph(tflite_path)
    B = _Onnx()
    x = "spec"
    spec, spec_id = x, _spec_concat_id(G)
    frontend = NumpyFrontend(**frontend_constants(G))

    T = [(CHUNK_SAMPLES - int(G.const_by_suffix(f"model/MEL_SPEC{b}/", "stft/frame_length")))
         // int(G.const_by_suffix(f"model/MEL_SPEC{b}/", "stft/frame_step")) + 1 for b in (1, 2)]
    assert T[0] == T[1], T
    # env: TFLite tensor id -> (onnx name, kind, nhwc shape without batch)
    #   kind 'nchw'   : 4-D activation stored NCHW
    #   kind 'pooled' : TFLite [B,C] from a spatial mean, stored as [B,C,1,1]
    #   kind 'flat'   : plain 2-D [B,C]
    env = {spec_id: (spec, "nchw", (96, T[0], 2))}
    pending_pad: dict[int, tuple] = {}  # PAD output id -> (source env entry, pads)

    # first body op = first consumer of the spectrogram concat
    start = min(G.consumers[spec_id])
    out_id = int(G.g.Outputs(0))
    emb_name = None

    def chan_const(arr):  # per-channel NHWC constant -> broadcastable NCHW [C,1,1]
        a = arr.astype(np.float32)
        return a.reshape(-1, 1, 1) if a.ndim == 1 and a.size > 1 else a

    for k in range(start, len(G.ops)):
        opname, ins, outs, op = G.ops[k]
        o = outs[0]
        if opname in ("SHAPE", "STRIDED_SLICE", "PACK"):
            continue  # int32 shape plumbing for the SE reshape; not needed in ONNX
        if opname in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            src_id = ins[0]
            pads_hw = None
            if src_id in pending_pad:
                (name, kind, shp), pads_hw = pending_pad[src_id]
            else:
                name, kind, shp = env[src_id]
            assert kind == "nchw"
            w = G.const(ins[1])
            bias = G.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            depthwise = opname == "DEPTHWISE_CONV_2D"
            o_opt = G.options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
            sh, sw = o_opt.StrideH(), o_opt.StrideW()
            assert o_opt.DilationHFactor() == 1 and o_opt.DilationWFactor() == 1
            if depthwise:  # [1,kh,kw,C*mult] -> [C*mult,1,kh,kw], group = C_in
                assert o_opt.DepthMultiplier() == 1
                kh, kw, cout = w.shape[1:]
                wt = w.transpose(3, 0, 1, 2)
                group = shp[2]
            else:  # OHWI -> OIHW
                cout, kh, kw, _ = w.shape
                wt = w.transpose(0, 3, 1, 2)
                group = 1
            H, W = shp[0], shp[1]
            if o_opt.Padding() == _SAME:
                assert pads_hw is None
                ph, pw = _same_pads(H, kh, sh), _same_pads(W, kw, sw)
            else:  # VALID, possibly with a folded explicit PAD (shp is pre-pad)
                ph, pw = pads_hw or ((0, 0), (0, 0))
            Ho = (H + sum(ph) - kh) // sh + 1
            Wo = (W + sum(pw) - kw) // sw + 1
            inputs = [name, B.const(np.ascontiguousarray(wt, np.float32), "w")]
            if bias is not None:
                inputs.append(B.const(bias.astype(np.float32), "b"))
            y = B.node("Conv", inputs, G.name(o), kernel_shape=[kh, kw], strides=[sh, sw],
                       pads=[ph[0], pw[0], ph[1], pw[1]], group=group)
            act = _ACT[o_opt.FusedActivationFunction()]
            if act:
                y = B.node(act, [y], G.name(o))
            env[o] = (y, "nchw", (Ho, Wo, cout))
        elif opname == "PAD":
            name, kind, shp = env[ins[0]]
            p = G.const(ins[1])
            assert kind == "nchw" and not p[0].any() and not p[3].any()
            cons = G.consumers.get(o, [])
            if len(cons) == 1 and G.ops[cons[0]][0] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                pending_pad[o] = ((name, kind, shp), (tuple(p[1]), tuple(p[2])))  # fold
            else:
                y = B.node("Pad", [name, B.const(np.array(
                    [0, 0, p[1][0], p[2][0], 0, 0, p[1][1], p[2][1]], np.int64))], G.name(o))
                env[o] = (y, "nchw", (shp[0] + p[1].sum(), shp[1] + p[2].sum(), shp[2]))
        elif opname in ("ADD", "MUL"):
            a_c, b_c = G.const(ins[0]), G.const(ins[1])
            assert a_c is None  # activation first, as TFLite emits here
            name, kind, shp = env[ins[0]]
            if b_c is not None:
                other = B.const(chan_const(b_c) if kind == "nchw" else b_c.astype(np.float32))
            else:
                oname, okind, oshp = env[ins[1]]
                assert okind == kind, (opname, kind, okind)
                other = oname
                if oshp[0] * oshp[1] > shp[0] * shp[1]:
                    shp = oshp  # broadcasting SE gate [C,1,1] x [C,H,W]
            y = B.node("Add" if opname == "ADD" else "Mul", [name, other], G.name(o))
            act = _ACT[G.options(op, "AddOptions" if opname == "ADD" else "MulOptions")
                       .FusedActivationFunction()]
            if act:
                y = B.node(act, [y], G.name(o))
            env[o] = (y, kind, shp)
        elif opname == "LOGISTIC":
            name, kind, shp = env[ins[0]]
            env[o] = (B.node("Sigmoid", [name], G.name(o)), kind, shp)
        elif opname in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            name, kind, shp = env[ins[0]]
            po = G.options(op, "Pool2DOptions")
            assert po.Padding() == _VALID and _ACT[po.FusedActivationFunction()] is None
            kh, kw, sh, sw = po.FilterHeight(), po.FilterWidth(), po.StrideH(), po.StrideW()
            y = B.node("AveragePool" if opname.startswith("AVERAGE") else "MaxPool", [name],
                       G.name(o), kernel_shape=[kh, kw], strides=[sh, sw])
            env[o] = (y, "nchw", ((shp[0] - kh) // sh + 1, (shp[1] - kw) // sw + 1, shp[2]))
        elif opname == "CONCATENATION":
            parts = [env[i] for i in ins]
            axis = G.options(op, "ConcatenationOptions").Axis()
            assert all(p[1] == "nchw" for p in parts) and axis in (3, -1)
            y = B.node("Concat", [p[0] for p in parts], G.name(o), axis=1)
            shp = parts[0][2]
            env[o] = (y, "nchw", (shp[0], shp[1], sum(p[2][2] for p in parts)))
        elif opname == "MEAN":
            name, kind, shp = env[ins[0]]
            axes = sorted(int(a) % 4 for a in G.const(ins[1]).ravel())
            assert kind == "nchw" and axes == [1, 2] and not G.options(op, "ReducerOptions").KeepDims()
            y = B.node("GlobalAveragePool", [name], G.name(o))
            env[o] = (y, "pooled", (1, 1, shp[2]))
        elif opname == "RESHAPE":
            name, kind, shp = env[ins[0]]
            # only the SE "[B,C] -> [B,1,1,C]" reshape occurs in the body
            assert kind == "pooled", "unsupported RESHAPE in body"
            env[o] = (name, "nchw", shp)
        elif opname == "FULLY_CONNECTED":
            name, kind, shp = env[ins[0]]
            fo = G.options(op, "FullyConnectedOptions")
            if kind == "pooled":
                name = B.node("Flatten", [name], "flat", axis=1)
                if o == out_id:
                    emb_name = name
            w = G.const(ins[1]).astype(np.float32)  # [out, in]
            gin = [name, B.const(w, "fc_w")]
            if len(ins) > 2 and ins[2] >= 0:
                gin.append(B.const(G.const(ins[2]).astype(np.float32), "fc_b"))
            y = B.node("Gemm", gin, G.name(o), transB=1)
            act = _ACT[fo.FusedActivationFunction()]
            if act:
                y = B.node(act, [y], G.name(o))
            env[o] = (y, "flat", (w.shape[0],))
        else:
            raise NotImplementedError(f"TFLite op {opname} (op #{k}) not supported")

    if emb_name is None:
        raise ValueError("final FULLY_CONNECTED on pooled features not found")
    h = B.h
    # rename the two outputs with Identity nodes so the output names are stable
    B.nodes.append(h.make_node("Identity", [emb_name], ["embedding"], name="embedding_out"))
    B.nodes.append(h.make_node("Identity", [env[out_id][0]], ["logits"], name="logits_out"))
    n_cls = env[out_id][2][0]
    in_shape = ["batch", 2, 96, T[0]]
    graph = h.make_graph(
        B.nodes, "birdnet_v24_body",
        [h.make_tensor_value_info(x, onnx.TensorProto.FLOAT, in_shape)],
        [h.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", emb_dim(B, emb_name)]),
         h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", n_cls])],
        initializer=B.inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                         producer_name="birdpipe.birdnet_onnx")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    model.doc_string = f"BirdNET V2.4 body from {Path(tflite_path).name} sha256={file_sha256(Path(tflite_path))}; CC BY-NC-SA 4.0"
    onnx.checker.check_model(model)
    frontend.save(frontend_path(Path(onnx_path)))  # constants first: a visible .onnx always has its .npz
    return atomic_write(onnx_path, lambda tmp: onnx.save(model, str(tmp)))


def emb_dim(B: _Onnx, name: str) -> int:
    """Width of the embedding: the in-features of the classifier Gemm reading ``name``."""
    for n in B.nodes:
        if n.op_type == "Gemm" and n.input[0] == name:
            w = next(i for i in B.inits if i.name == n.input[1])
            return int(w.dims[1])
    raise ValueError(name)


