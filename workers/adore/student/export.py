"""ONNX export of the student, with a parity check against PyTorch and optional int8.

The exported graph's output "logits" is already divided by the calibration
temperature, so anything that applies a softmax to it (Triton's model.py,
onnx_probs) serves calibrated probabilities without knowing about it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


from ..metrics import softmax
from .model import Student
from .text import EMBEDDER_JSON, EMBEDDER_ONNX

class _Calibrated(torch.nn.Module):
    def __init__(self, model, names: list[str], temperature: float):
        super().__init__()
        self.model, self.names, self.temperature = model, names, temperature

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs)))
        return (out if isinstance(out, torch.Tensor) else out.logits) / self.temperature


def export_onnx(student: Student, path: Path, sample: tuple[list[str], list[str], list[dict]]) -> None:
    """Export with dynamic batch and sequence axes (fp32, on the CPU). A bi-encoder's query and item
    inputs (q_*, d_*) have sequence axes of their own."""
    if student.hardware.is_cuda:
        raise ValueError("export_onnx: move the student to the CPU first (ONNX export stays on the CPU in fp32)")
    enc = student.encode(*sample)
    names = list(enc)
    student.train(False)
    axes = {n: {0: "batch", 1: f"{n.split('_')[0]}_sequence" if student.is_bi else "sequence"} for n in names}
    torch.onnx.export(
        _Calibrated(student.model, names, student.meta.temperature), tuple(enc[n] for n in names), str(path),
        input_names=names, output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}},
        opset_version=17, dynamo=False)


class _Embedder(torch.nn.Module):
    def __init__(self, bi, names: list[str]):
        super().__init__()
        self.bi, self.names = bi, names

    def forward(self, *inputs):
        return self.bi.embed(**dict(zip(self.names, inputs)))


def export_embedder(student: Student, folder: Path, sample: tuple[list[str], list[str], list[dict]]) -> None:
    """A bi-encoder's serving split: FOLDER/embedder.onnx (token ids -> unit embedding, the tower both the
    query and the item go through) and FOLDER/embedder.json (the head: logits = (cos * scale * rank + bias)
    / temperature). Scoring 100 candidates then embeds the query once and reads the items' embeddings
    from the table computed at promotion (adore.serving.bi_encoder)."""
    if not student.is_bi:
        raise ValueError("export_embedder: only a bi-encoder student has a tower to export alone")
    enc = student.encode(*sample)
    names = [n[2:] for n in enc if n.startswith("d_")]
    student.train(False)
    torch.onnx.export(_Embedder(student.model, names), tuple(enc[f"d_{n}"] for n in names),
                      str(Path(folder) / EMBEDDER_ONNX), input_names=names, output_names=["embedding"],
                      dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "embedding": {0: "batch"}},
                      opset_version=17, dynamo=False)
    head = {"scale": float(student.model.scale.detach()), "bias": student.model.bias.detach().cpu().tolist(),
            "temperature": student.meta.temperature, "inputs": names}
    (Path(folder) / EMBEDDER_JSON).write_text(json.dumps(head))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the weights, per channel (activations stay fp32): smaller and faster on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per output channel: one scale per row of each weight matrix. Per-tensor scales moved the bi-encoder's
    # probabilities by up to 0.093 on the tiny test round (its head multiplies the cosine), per channel 0.050.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_probs(path_or_session, student: Student, queries, titles, attrs, batch_size: int = 64) -> np.ndarray:
    sess = session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    wanted = {i.name for i in sess.get_inputs()}
    out = []
    for s in range(0, len(queries), batch_size):
        enc = student.encode(queries[s:s + batch_size], titles[s:s + batch_size], attrs[s:s + batch_size])
        out.append(softmax(sess.run(None, {k: v.numpy() for k, v in enc.items() if k in wanted})[0]))
    return np.concatenate(out) if out else np.zeros((0, len(student.meta.grades)))


def parity(path: Path, student: Student, queries, titles, attrs) -> float:
    """Max abs difference of grade probabilities, ONNX Runtime vs PyTorch."""
    return float(np.abs(onnx_probs(path, student, queries, titles, attrs) - student.predict(queries, titles, attrs)).max())
