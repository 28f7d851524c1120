"""The student: a cross-encoder over (query, item text with key attributes).

The item side carries the title and then the key attributes in hierarchy
order, e.g. "Yaheetech Dining Chairs ... | type: chair | brand: yaheetech |
colour: grey | quantity: 6". The folder written by save() holds everything
serving needs: the weights, the tokenizer, the grade scheme and the brand
lexicon for attribute extraction.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import attributes as attr
from .. import models
from .text import item_text

META = "adore_student.json"


@dataclass
class StudentMeta:
    grades: list[str]
    use_attributes: bool
    max_length: int
    brands: list[str]
    backbone: str


class Student:
    def __init__(self, model, tokenizer, meta: StudentMeta):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.lexicon = attr.BrandLexicon(meta.brands)

    @classmethod
    def create(cls, backbone: str, grades: list[str], use_attributes: bool, max_length: int, brands: list[str],
               base_dir: Path | None = None) -> "Student":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = models.resolve(backbone, base_dir)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(grades))
        return cls(model, tok, StudentMeta(grades, use_attributes, max_length, sorted(brands), backbone))

    @classmethod
    def load(cls, folder: Path) -> "Student":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        meta = StudentMeta(**json.loads((Path(folder) / META).read_text()))
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(folder), meta)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (Path(folder) / META).write_text(json.dumps(asdict(self.meta), indent=1))

    def encode(self, queries: list[str], titles: list[str], attrs: list[dict]):
        texts = [item_text(t, a, self.lexicon, self.meta.use_attributes) for t, a in zip(titles, attrs)]
        return self.tokenizer(queries, texts, padding=True, truncation="only_second",
                              max_length=self.meta.max_length, return_tensors="pt")

    @torch.no_grad()
    def predict(self, queries: list[str], titles: list[str], attrs: list[dict], batch_size: int = 64) -> np.ndarray:
        """Grade probabilities, shape (n, grades)."""
        self.model.eval()
        out = []
        for s in range(0, len(queries), batch_size):
            enc = self.encode(queries[s:s + batch_size], titles[s:s + batch_size], attrs[s:s + batch_size])
            out.append(torch.softmax(self.model(**enc).logits, -1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.meta.grades)))


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """Expected grade index (0 = lowest): the student's relevance score."""
    return probs @ np.arange(probs.shape[1])
