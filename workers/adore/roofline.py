"""The machine's matrix-multiply roofline and a student's FLOPs per pair, for every speed figure.

    peak = gemm_throughput(threads=2)                  # {"fp32": GFLOP/s, "int8": GOP/s}, ONNX Runtime
    per_pair = encoder_flops(config, seq_len)          # one encoder pass over seq_len tokens
    share = achieved_share(pairs_per_s, per_pair, peak["fp32"])

The peak is measured, not read from a datasheet: ONNX Runtime (the runtime that serves the student)
multiplies matrices shaped like the student's feed-forward layer on the same number of threads, in fp32
(MatMul) and on the integer path dynamic int8 quantisation uses (MatMulInteger, uint8 x int8). A student
that reaches most of that peak can only get faster by doing fewer FLOPs per request.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncoderShape:
    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def of(cls, config) -> "EncoderShape":
        """From a transformers config (BERT-style names, as MiniLM uses)."""
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size)


def encoder_flops(shape: EncoderShape, seq_len: int) -> float:
    """Multiply-add FLOPs (2 per multiply-add) of one encoder pass over seq_len tokens.

    Per layer: the Q, K, V and output projections (4 s h^2 multiply-adds), the feed-forward
    (2 s h i), attention scores and their weighted sum (2 s^2 h). Softmax, layer norm, GELU and the
    embeddings are left out: they are a few per cent and no matrix unit runs them.
    """
    s, h, i = seq_len, shape.hidden, shape.intermediate
    return 2.0 * shape.layers * (4 * s * h * h + 2 * s * h * i + 2 * s * s * h)


def _matmul_model(m: int, k: int, n: int, integer: bool):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        a = helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])
        w = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "W")
        azp = numpy_helper.from_array(np.array(128, np.uint8), "azp")
        wzp = numpy_helper.from_array(np.array(0, np.int8), "wzp")
        node = helper.make_node("MatMulInteger", ["A", "W", "azp", "wzp"], ["Y"])
        out = helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])
        inits = [w, azp, wzp]
    else:
        a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")]
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])
    graph = helper.make_graph([node], "gemm", [a], [out], initializer=inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def gemm_throughput(threads: int, m: int = 4800, k: int = 384, n: int = 1536, seconds: float = 1.5) -> dict:
    """Measured {"fp32": GFLOP/s, "int8": GOP/s} of ONNX Runtime on `threads` threads.

    Default shape: the feed-forward matrix of a 384-wide MiniLM over 100 pairs of 48 tokens.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    rng = np.random.default_rng(1)
    out = {}
    for name, integer in (("fp32", False), ("int8", True)):
        sess = ort.InferenceSession(_matmul_model(m, k, n, integer), opts, providers=["CPUExecutionProvider"])
        a = rng.integers(0, 255, (m, k), dtype=np.uint8) if integer else rng.standard_normal((m, k)).astype(np.float32)
        sess.run(None, {"A": a})  # warm-up: packing of the weights happens on the first run
        runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or runs < 3:
            sess.run(None, {"A": a})
            runs += 1
        out[name] = round(2.0 * m * k * n * runs / (time.perf_counter() - t0) / 1e9, 1)
    return out


def achieved_share(pairs_per_second: float, flops_per_pair: float, peak_gflops: float) -> float:
    """The share of the measured peak a pairs/s figure reaches (1.0 = at the roofline)."""
    return round(pairs_per_second * flops_per_pair / (peak_gflops * 1e9), 3)


def student_flops(student, seq_lens: dict[str, int]) -> float:
    """FLOPs per pair of a Student at the padded lengths ORT computes: one pass for a cross-encoder
    (seq_lens["pair"]), two for a bi-encoder (seq_lens["query"] and seq_lens["item"])."""
    shape = EncoderShape.of(student.model.config)
    if student.is_bi:
        return encoder_flops(shape, seq_lens["query"]) + encoder_flops(shape, seq_lens["item"])
    return encoder_flops(shape, seq_lens["pair"])


def split_flops(shape: EncoderShape, query_len: int, item_len: int, pairs: int, queries: int, items_embedded: int) -> float:
    """FLOPs per pair of a bi-encoder served as its split (adore.serving.bi_encoder): each distinct query
    embedded once per request, only the items the item table lacks embedded, the dot products negligible."""
    return (queries * encoder_flops(shape, query_len) + items_embedded * encoder_flops(shape, item_len)) / pairs


def seq_lens(enc: dict) -> dict[str, int]:
    """Padded sequence lengths of an encoded batch (the student's own input names)."""
    if "q_input_ids" in enc:
        return {"query": int(enc["q_input_ids"].shape[1]), "item": int(enc["d_input_ids"].shape[1])}
    return {"pair": int(enc["input_ids"].shape[1])}
