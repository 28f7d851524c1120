"""ONNX export of the student, with a parity check against PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .model import Student

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_onnx(student: Student, path: Path, sample: tuple[list[str], list[str], list[dict]]) -> None:
    enc = student.encode(*sample)
    names = [n for n in INPUTS if n in enc]
    student.model.eval()
    torch.onnx.export(
        student.model, tuple(enc[n] for n in names), str(path), input_names=names, output_names=["logits"],
        dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
        opset_version=17, dynamo=False)


def onnx_probs(path: Path, student: Student, queries, titles, attrs) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    enc = student.encode(queries, titles, attrs)
    logits = sess.run(None, {k: v.numpy() for k, v in enc.items() if k in wanted})[0]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def parity(path: Path, student: Student, queries, titles, attrs) -> float:
    """Max abs difference of grade probabilities, ONNX Runtime vs PyTorch."""
    return float(np.abs(onnx_probs(path, student, queries, titles, attrs) - student.predict(queries, titles, attrs)).max())
