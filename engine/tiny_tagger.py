"""Stand-in tagger models, built with onnx's helper API (tests and bench/; never downloaded).

`build_tiny_tagger`: the real models' input (NHWC float32, 448 x 448 BGR by default) and output
(one sigmoid score per tag of a selected_tags.csv), with almost no compute: the mean colour of
the image times a small matrix. Its tags answer to colours, so a test knows what each image gets:

    red_hair   general    high on a red image (the R channel's mean)
    blue_sky   general    high on a blue image
    ^_^        general    high on a green image (a kaomoji: keeps its underscore)
    solo       general    always 0.88
    outdoors   general    always 0.50
    usu_(character)  character  always 0.73
    general    rating     always 0.95 (rating tags are never written)

`build_vit_like_tagger`: the same input and a ViT-B/16-sized body (patches of 16, width 768, 12
blocks of single-head attention and an MLP; about 80 GMAC an image, as SmilingWolf's
wd-vit-tagger-v3) with random weights, for measuring throughput.
"""

from __future__ import annotations

import csv
from pathlib import Path

TINY_TAGS = (
    # name, category, (weight on B, G, R of the mean colour in 0-1), bias
    ("red_hair", 0, (0.0, 0.0, 10.0), -5.0),
    ("blue_sky", 0, (10.0, 0.0, 0.0), -5.0),
    ("^_^", 0, (0.0, 10.0, 0.0), -5.0),
    ("solo", 0, (0.0, 0.0, 0.0), 2.0),
    ("outdoors", 0, (0.0, 0.0, 0.0), 0.0),
    ("usu_(character)", 4, (0.0, 0.0, 0.0), 1.0),
    ("general", 9, (0.0, 0.0, 0.0), 3.0),
)


def write_tags_csv(path: Path, tags: list[tuple[str, int]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category) in enumerate(tags):
            writer.writerow([index, name, category, 1000 - index])


def build_tiny_tagger(folder: Path, *, size: int = 448, batch: int | str = "batch") -> Path:
    """`folder/model.onnx` + `folder/selected_tags.csv`; returns the folder."""
    import numpy as np
    from onnx import helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([tag[2] for tag in TINY_TAGS], dtype=np.float32).T / 255.0  # 3 x tags, input is 0-255
    bias = np.array([tag[3] for tag in TINY_TAGS], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        helper.make_node("Add", ["logits", "bias"], ["biased"]),
        helper.make_node("Sigmoid", ["biased"], ["output"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
    ]
    _save(folder, nodes, initializers, size, batch, len(TINY_TAGS), "tiny-tagger")
    write_tags_csv(folder / "selected_tags.csv", [(name, category) for name, category, _, _ in TINY_TAGS])
    return folder


def build_vit_like_tagger(
    folder: Path, *, size: int = 448, patch: int = 16, width: int = 768, blocks: int = 12, tags: int = 10861, seed: int = 0
) -> Path:
    """A random-weight ViT-shaped tagger of the real ones' size and compute (see the module)."""
    import numpy as np
    from onnx import helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = (size // patch) ** 2
    initializers = []

    def weight(name: str, *shape: int) -> str:
        scale = 1.0 / np.sqrt(shape[0] if len(shape) == 2 else np.prod(shape[1:]))
        initializers.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name: str, values: list[int]) -> str:
        initializers.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", weight("patch_w", width, 3, patch, patch)], ["patches"], strides=[patch, patch]),
        helper.make_node("Reshape", ["patches", const("flat", [0, width, tokens])], ["channels_tokens"]),
        helper.make_node("Transpose", ["channels_tokens"], ["x0"], perm=[0, 2, 1]),
    ]
    x = "x0"
    scale = numpy_helper.from_array(np.array(1.0 / np.sqrt(width), dtype=np.float32), "attn_scale")
    initializers.append(scale)
    for b in range(blocks):
        p = f"b{b}_"
        nodes += [
            helper.make_node("MatMul", [x, weight(p + "wq", width, width)], [p + "q"]),
            helper.make_node("MatMul", [x, weight(p + "wk", width, width)], [p + "k"]),
            helper.make_node("MatMul", [x, weight(p + "wv", width, width)], [p + "v"]),
            helper.make_node("Transpose", [p + "k"], [p + "kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [p + "q", p + "kt"], [p + "s"]),
            helper.make_node("Mul", [p + "s", "attn_scale"], [p + "ss"]),
            helper.make_node("Softmax", [p + "ss"], [p + "a"], axis=-1),
            helper.make_node("MatMul", [p + "a", p + "v"], [p + "av"]),
            helper.make_node("MatMul", [p + "av", weight(p + "wo", width, width)], [p + "o"]),
            helper.make_node("Add", [x, p + "o"], [p + "x1"]),
            helper.make_node("MatMul", [p + "x1", weight(p + "w1", width, 4 * width)], [p + "h"]),
            helper.make_node("Relu", [p + "h"], [p + "g"]),  # GELU's cost is in the MatMuls around it
            helper.make_node("MatMul", [p + "g", weight(p + "w2", 4 * width, width)], [p + "m"]),
            helper.make_node("Add", [p + "x1", p + "m"], [p + "x2"]),
        ]
        x = p + "x2"
    nodes += [
        helper.make_node("ReduceMean", [x, const("token_axis", [1])], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", weight("head", width, tags)], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    _save(folder, nodes, initializers, size, "batch", tags, "vit-like-tagger")
    write_tags_csv(folder / "selected_tags.csv", [(f"tag_{i}", 4 if i % 50 == 0 else 0) for i in range(tags)])
    return folder


def _save(folder: Path, nodes: list, initializers: list, size: int, batch: int | str, tags: int, name: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, tags])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # readable by every onnxruntime of the last years
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
