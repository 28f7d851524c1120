"""The student: a cross-encoder over (query, item text with key attributes).

The item side carries the title and then the key attributes in hierarchy
order, e.g. "Yaheetech Dining Chairs ... | type: chair | brand: yaheetech |
colour: grey | quantity: 6". The folder written by save() holds everything
serving needs: the weights, the tokenizer, the grade scheme, the brand
lexicon for attribute extraction and the calibration temperature. The
auxiliary per-attribute match heads are a training aid: they are saved
(aux_heads.pt) but never exported, so serving's signature does not change.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import attributes as attr
from .. import models
from ..hardware import CPU_FP32, Hardware
from ..metrics import grades_from_cutoffs
from .text import item_text

META = "adore_student.json"
AUX_FILE = "aux_heads.pt"
VERDICTS = ["match", "mismatch", "unknown"]


@dataclass
class StudentMeta:
    grades: list[str]
    use_attributes: bool
    max_length: int
    brands: list[str]
    backbone: str
    # Softmax temperature fitted on dev (1.0 = uncalibrated); ONNX export divides the logits by it.
    temperature: float = 1.0
    aux_attributes: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    # Cut points on the expected grade (fitted on the human seed); empty = read the grade by argmax.
    grade_cutoffs: list[float] = field(default_factory=list)


class Student:
    def __init__(self, model, tokenizer, meta: StudentMeta, aux: torch.nn.Module | None = None):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.lexicon = attr.BrandLexicon(meta.brands)
        self.aux = aux if aux is not None else _aux_head(model, meta.aux_attributes)
        self.hardware: Hardware = CPU_FP32

    def to(self, hardware: Hardware) -> "Student":
        """Train and score on this hardware (weights stay fp32: mixed precision is autocast)."""
        self.hardware = hardware
        self.model.to(hardware.device)
        if self.aux is not None:
            self.aux.to(hardware.device)
        return self

    @classmethod
    def create(cls, backbone: str, grades: list[str], use_attributes: bool, max_length: int, brands: list[str],
               base_dir: Path | None = None, aux_attributes: list[str] | None = None,
               layers: int | None = None) -> "Student":
        """layers: keep only the backbone's first N transformer layers (a faster student; the
        saved config says N, so load() and the ONNX export need nothing else)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = models.resolve(backbone, base_dir)
        tok = AutoTokenizer.from_pretrained(path)
        extra = {}
        if layers is not None:
            depth = AutoConfig.from_pretrained(path).num_hidden_layers
            if not 0 < layers <= depth:
                raise ValueError(f"spec.stages.distill.layers={layers}: the backbone {backbone} has {depth} layers")
            extra["num_hidden_layers"] = layers
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(grades), **extra)
        aux = list(attr.HIERARCHY) if aux_attributes is None else list(aux_attributes)
        return cls(model, tok, StudentMeta(grades, use_attributes, max_length, sorted(brands), backbone,
                                           aux_attributes=aux))

    @classmethod
    def load(cls, folder: Path) -> "Student":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder)
        meta = StudentMeta(**json.loads((folder / META).read_text()))
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        model.eval()
        student = cls(model, AutoTokenizer.from_pretrained(folder), meta)
        if student.aux is not None and (folder / AUX_FILE).is_file():
            student.aux.load_state_dict(torch.load(folder / AUX_FILE, weights_only=True))
        return student

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if self.aux is not None:
            torch.save(self.aux.state_dict(), Path(folder) / AUX_FILE)
        self.save_meta(folder)

    def save_meta(self, folder: Path) -> None:
        (Path(folder) / META).write_text(json.dumps(asdict(self.meta), indent=1))

    def parameters(self):
        yield from self.model.parameters()
        if self.aux is not None:
            yield from self.aux.parameters()

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        if self.aux is not None:
            self.aux.train(mode)

    def encode(self, queries: list[str], titles: list[str], attrs: list[dict]):
        texts = [item_text(t, a, self.lexicon, self.meta.use_attributes) for t, a in zip(titles, attrs)]
        return self.tokenizer(queries, texts, padding=True, truncation="only_second",
                              max_length=self.meta.max_length, return_tensors="pt")

    def forward(self, enc, with_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw grade logits (before the calibration temperature) and, when asked, the
        per-attribute verdict logits, shape (batch, attributes, 3)."""
        enc = {k: v.to(self.hardware.device) for k, v in enc.items()}
        with self.hardware.autocast():
            out = self.model(**enc, output_hidden_states=with_aux)
            if not with_aux or self.aux is None:
                return out.logits.float(), None
            cls_state = out.hidden_states[-1][:, 0]
            aux = self.aux(cls_state).view(len(cls_state), len(self.meta.aux_attributes), len(VERDICTS))
        return out.logits.float(), aux.float()

    @torch.inference_mode()
    def logits(self, queries: list[str], titles: list[str], attrs: list[dict], batch_size: int | None = None) -> np.ndarray:
        """Uncalibrated grade logits, shape (n, grades)."""
        self.train(False)
        batch_size = batch_size or self.hardware.batch(64)
        out = [self.forward(self.encode(queries[s:s + batch_size], titles[s:s + batch_size],
                                        attrs[s:s + batch_size]))[0].cpu().numpy()
               for s in range(0, len(queries), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.meta.grades)), dtype=np.float32)

    def predict(self, queries: list[str], titles: list[str], attrs: list[dict], batch_size: int | None = None) -> np.ndarray:
        """Calibrated grade probabilities, shape (n, grades)."""
        return softmax(self.logits(queries, titles, attrs, batch_size) / self.meta.temperature)

    def grade(self, probs: np.ndarray) -> np.ndarray:
        """Grade index per row of calibrated probabilities: the seed cut-offs on the expected
        grade when distill fitted them, else the argmax."""
        if self.meta.grade_cutoffs:
            return grades_from_cutoffs(expected_grade(probs), self.meta.grade_cutoffs)
        return probs.argmax(1)

    @torch.inference_mode()
    def predict_attributes(self, queries: list[str], titles: list[str], attrs: list[dict]) -> list[dict[str, str]]:
        """The aux heads' verdict per attribute (match / mismatch / unknown)."""
        if self.aux is None:
            raise ValueError("this student has no auxiliary attribute heads (aux_attributes is empty)")
        self.train(False)
        _, aux = self.forward(self.encode(queries, titles, attrs), with_aux=True)
        return [{a: VERDICTS[int(v)] for a, v in zip(self.meta.aux_attributes, row)} for row in aux.argmax(-1)]


def _aux_head(model, names: list[str]) -> torch.nn.Module | None:
    if not names:
        return None
    return torch.nn.Linear(model.config.hidden_size, len(names) * len(VERDICTS))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """Expected grade index (0 = lowest): the student's relevance score."""
    return probs @ np.arange(probs.shape[1])
