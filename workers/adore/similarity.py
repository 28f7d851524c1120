"""Bi-encoder similarity: mean-pooled sentence embeddings, cosine of query and item.

The student's own backbone (all-MiniLM-L6-v2) was trained as a bi-encoder, and
its cosine is a strong relevance signal with no labels at all. The teacher's
seed-fitted correction weighs it as evidence (stages.annotate.embeddingEvidence),
and the quality table's zero-shot row is exactly this score.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .hardware import CPU_FP32, Hardware


class Embedder:
    def __init__(self, model: str, max_length: int = 64, batch_size: int = 128, hardware: Hardware = CPU_FP32):
        from transformers import AutoModel, AutoTokenizer

        from . import models

        path = models.resolve(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path).eval().to(hardware.device)
        self.max_length, self.batch_size, self.hardware = max_length, hardware.batch(batch_size), hardware

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings, one row per text."""
        import torch

        out = []
        with torch.inference_mode(), self.hardware.autocast():
            for s in range(0, len(texts), self.batch_size):
                b = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.hardware.device)
                h = self.encoder(**b).last_hidden_state.float()
                m = b["attention_mask"].unsqueeze(-1).float()
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.encoder.config.hidden_size), np.float32)

    def cosine(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """Cosine of each query with its text; each distinct string is embedded once."""
        if len(queries) != len(texts):
            raise ValueError(f"cosine: {len(queries)} queries for {len(texts)} texts")
        uq, ut = sorted(set(queries)), sorted(set(texts))
        eq, et = self.embed(uq), self.embed(ut)
        qi, ti = {q: i for i, q in enumerate(uq)}, {t: i for i, t in enumerate(ut)}
        return np.array([float(eq[qi[q]] @ et[ti[t]]) for q, t in zip(queries, texts)])


@lru_cache(maxsize=2)
def embedder(model: str, hardware: Hardware = CPU_FP32) -> Embedder:
    return Embedder(model, hardware=hardware)
