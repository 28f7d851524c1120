"""Fill a Triton version folder from a Student (what promote writes).

    diff = prepare_version(student, folder, sample)
    write_version(repo, name, folder, grades)

The folder gets model.onnx, the tokenizer, adore_student.json and
golden.json (a few rows with the PyTorch probabilities, for checking a
served version); a bi-encoder also its serving split (embedder.onnx and
embedder.json, adore.serving.bi_encoder; promote adds the item table),
unless split is False (promote's int8: the quantised full graph serves).
Returns the largest ONNX-vs-PyTorch max abs difference over SAMPLE, of the
full graph and, for a bi-encoder, of the split.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write_json


def prepare_version(student, folder: Path, sample: tuple[Sequence[str], Sequence[str], Sequence[dict]],
                    n_golden: int = 8, split: bool = True) -> float:
    from ..student.export import export_onnx, parity
    from ..student.model import META

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    queries, titles, attrs = (list(x) for x in sample)
    export_onnx(student, folder / "model.onnx", (queries[:2], titles[:2], attrs[:2]))
    diff = parity(folder / "model.onnx", student, queries, titles, attrs)
    student.tokenizer.save_pretrained(folder)
    (folder / META).write_text(json.dumps(asdict(student.meta)))
    if split and student.is_bi:  # the serving split (one query embedding per request), checked like the full graph
        from ..metrics import softmax
        from ..student.export import export_embedder
        from .bi_encoder import BiEncoderScorer

        export_embedder(student, folder, (queries[:2], titles[:2], attrs[:2]))
        split = softmax(BiEncoderScorer(folder).logits(queries, titles, attrs))
        diff = max(diff, float(np.abs(split - student.predict(queries, titles, attrs)).max()))
    g = (queries[:n_golden], titles[:n_golden], attrs[:n_golden])
    probs = student.predict(*g)
    atomic_write_json(folder / "golden.json", [
        {"query": q, "title": t, "attributes": a, "probs": p.tolist()} for q, t, a, p in zip(*g, probs)])
    return diff
