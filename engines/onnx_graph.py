"""ONNX graph surgery shared by export, the onnxruntime backend and the quantizer (torch-free).

- `store_weights_as_fp16`: large weights that are exactly FP16 stored as FP16 + Cast (lossless).
- `token_cuts`: where the front-ends whose output is a pure function of one row (a face crop,
  a window's text) end, so the graph can be cut there and their tokens cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Float tensors at least this large whose values are exactly FP16 are stored as FP16, in
# live.pt (engines.live) and in model.onnx; loading widens them back.
FP16_STORAGE_MIN_SIZE = 65536


def store_weights_as_fp16(path: Path) -> int:
    """Store large FP32 weights whose values are exactly FP16 as FP16 + a Cast node; -> count.

    Lossless by construction (a value is only converted if it survives the round trip), and the
    graph still computes in FP32: onnxruntime folds each Cast into an FP32 constant when the
    session loads. What it saves is disk and download: the fine-tuned MiniLM text encoder's
    weights are rounded to FP16 at training time (engines.live.round_large_weights_to_fp16), so
    model.onnx holds them in half the bytes. Small tensors and others stay as they are.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if (arr is None or arr.size < FP16_STORAGE_MIN_SIZE
                or not np.array_equal(arr.astype(np.float16).astype(np.float32), arr)):
            kept.append(init)
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_fp32"))
    if casts:
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(casts + nodes)  # before every consumer: the graph stays sorted
        onnx.save(model, str(path))
    return len(casts)


@dataclass(frozen=True)
class Cut:
    """Where a front-end whose output is a pure function of one row ends in the live graph."""

    inputs: tuple[str, ...]  # the front-end's inputs (graph inputs or tensors after a reshape)
    output: str  # the tensor to cut at: its tokens, one row per crop / per window text
    replaces: str  # the graph input the rest of the graph no longer needs


def token_cuts(graph: Any) -> dict[str, Cut]:
    """modality -> its Cut, for the front-ends found in `graph` (engines.onnx_backend.SplitGraph
    caches them; calibration.quantize keeps the text one float)."""
    cuts: dict[str, Cut] = {}
    # video_frames (Bv, T, 48, 48) -> Reshape -> (Bv*T, 1, 48, 48) -> CNN or HOG -> Gemm
    reshapes = [n for n in graph.node if "video_frames" in n.input]
    gemms = [n for n in graph.node if n.op_type == "Gemm" and any(
        i.startswith(("frontends.video.cnn.", "frontends.video.hog.")) for i in n.input)]
    if len(reshapes) == 1 and reshapes[0].op_type == "Reshape" and len(gemms) == 1:
        cuts["video"] = Cut((reshapes[0].output[0],), gemms[0].output[0], "video_frames")
    # MiniLM text: ... -> the map's bias Add -> (mask Mul) -> Concat (the scatter to the
    # batch): cut at the Concat's input on that chain, (Bt, 64, dim)
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    if "frontends.text.encoder.word.weight" in consumers:
        adds = [n for n in graph.node
                if n.op_type == "Add" and "frontends.text.proj.1.bias" in n.input]
        tensor = adds[0].output[0] if len(adds) == 1 else None
        for _ in range(3):  # a short chain, or no cut
            nxt = consumers.get(tensor or "", [])
            if len(nxt) != 1:
                break
            if nxt[0].op_type == "Concat":
                cuts["text"] = Cut(("text_ids", "text_mask"), str(tensor), "text_ids")
                break
            tensor = nxt[0].output[0]
    return cuts
