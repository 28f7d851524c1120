"""The student: a MiniLM-class relevance model over (query, item text with key attributes).

The item side carries the title and then the key attributes in hierarchy
order, e.g. "Yaheetech Dining Chairs ... | type: chair | brand: yaheetech |
colour: grey | quantity: 6". Two architectures (distill.architecture):
- cross-encoder: the pair in one sequence, a classification head on [CLS];
- bi-encoder: query and item embedded apart (mean-pooled, unit length) and an
  ordinal head on their cosine, logits_g = scale * g * cos + bias_g. It starts
  as the backbone's own zero-shot cosine (the head fitted on the seed), so a
  few hundred soft labels refine what the backbone knows instead of replacing
  it with a new head; item embeddings can be computed ahead of time.
The folder written by save() holds everything serving needs: the weights, the
tokenizer, the grade scheme, the brand lexicon for attribute extraction and the
calibration temperature. The auxiliary per-attribute match heads are a training
aid: they are saved (aux_heads.pt) but never exported, so serving's signature
does not change.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import attributes as attr
from .. import models
from ..hardware import CPU_FP32, Hardware
from ..metrics import expected_grade, grades_from_cutoffs, softmax
from .text import BI_ENCODER, CROSS_ENCODER, encode, item_text

META = "adore_student.json"
AUX_FILE = "aux_heads.pt"
BI_HEAD_FILE = "bi_head.pt"
VERDICTS = ["match", "mismatch", "unknown"]
ARCHITECTURES = (CROSS_ENCODER, BI_ENCODER)


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
    architecture: str = CROSS_ENCODER


class BiEncoder(torch.nn.Module):
    """Mean-pooled unit embeddings of query and item; grade logits from their cosine (ordinal head)."""

    def __init__(self, encoder, n_grades: int):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.scale = torch.nn.Parameter(torch.tensor(8.0))
        self.bias = torch.nn.Parameter(torch.zeros(n_grades))
        self.register_buffer("ranks", torch.arange(n_grades, dtype=torch.float32), persistent=False)

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp_min(1), dim=-1)

    def head(self, cos: torch.Tensor) -> torch.Tensor:
        return cos.float().unsqueeze(-1) * self.scale * self.ranks + self.bias

    def forward(self, q_input_ids, q_attention_mask, d_input_ids, d_attention_mask, q_token_type_ids=None,
                d_token_type_ids=None, with_features: bool = False, with_embeddings: bool = False):
        """Grade logits; with_features also the aux heads' input (how each dimension of the two embeddings
        agrees), with_embeddings also the two unit embeddings (distill.compress matches them)."""
        u = self.embed(q_input_ids, q_attention_mask, q_token_type_ids)
        v = self.embed(d_input_ids, d_attention_mask, d_token_type_ids)
        logits = self.head((u * v).sum(-1))
        if not (with_features or with_embeddings):
            return logits
        feats = torch.cat([u * v, (u - v).abs()], -1) if with_features else None
        return logits, feats, ((u, v) if with_embeddings else None)

    def head_parameters(self):
        return [self.scale, self.bias]


def _layer_override(path: str, backbone: str, layers: int | None) -> dict:
    from transformers import AutoConfig

    if layers is None:
        return {}
    depth = AutoConfig.from_pretrained(path).num_hidden_layers
    if not 0 < layers <= depth:
        raise ValueError(f"spec.stages.distill.layers={layers}: the backbone {backbone} has {depth} layers")
    return {"num_hidden_layers": layers}


class Student:
    def __init__(self, model, tokenizer, meta: StudentMeta, aux: torch.nn.Module | None = None):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.lexicon = attr.BrandLexicon(meta.brands)
        self.aux = aux if aux is not None else _aux_head(model, meta)
        self.hardware: Hardware = CPU_FP32

    @property
    def is_bi(self) -> bool:
        return self.meta.architecture == BI_ENCODER

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
               layers: int | None = None, architecture: str = CROSS_ENCODER) -> "Student":
        """layers: keep only the backbone's first N transformer layers (a faster student; the
        saved config says N, so load() and the ONNX export need nothing else)."""
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        if architecture not in ARCHITECTURES:
            raise ValueError(f"spec.stages.distill.architecture: must be one of {ARCHITECTURES}, got {architecture!r}")
        path = models.resolve(backbone, base_dir)
        tok = AutoTokenizer.from_pretrained(path)
        extra = _layer_override(path, backbone, layers)
        if architecture == BI_ENCODER:
            model = BiEncoder(AutoModel.from_pretrained(path, **extra), len(grades))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(grades), **extra)
        aux = list(attr.HIERARCHY) if aux_attributes is None else list(aux_attributes)
        return cls(model, tok, StudentMeta(grades, use_attributes, max_length, sorted(brands), backbone,
                                           aux_attributes=aux, architecture=architecture))

    @staticmethod
    def load_meta(folder: Path) -> StudentMeta:
        """The saved student's description (architecture, grades, ...) without loading its weights."""
        return StudentMeta(**json.loads((Path(folder) / META).read_text()))

    @classmethod
    def load(cls, folder: Path) -> "Student":
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder)
        meta = cls.load_meta(folder)
        if meta.architecture == BI_ENCODER:
            model = BiEncoder(AutoModel.from_pretrained(folder), len(meta.grades))
            head = torch.load(folder / BI_HEAD_FILE, weights_only=True)
            with torch.no_grad():
                model.scale.copy_(head["scale"])
                model.bias.copy_(head["bias"])
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder)
        model.eval()
        student = cls(model, AutoTokenizer.from_pretrained(folder), meta)
        if student.aux is not None and (folder / AUX_FILE).is_file():
            student.aux.load_state_dict(torch.load(folder / AUX_FILE, weights_only=True))
        return student

    def with_layers(self, keep: list[int]) -> "Student":
        """A copy of this student keeping only the transformer layers listed (in order): a shallower student
        that starts from this one's weights, head and aux heads included (distill.compress), rather than from
        the backbone's first layers. The saved config says len(keep), so load() and the export need nothing else."""
        depth = self.model.config.num_hidden_layers
        if not keep or any(not 0 <= i < depth for i in keep):
            raise ValueError(f"layers {keep}: this student has layers 0..{depth - 1}")
        clone = copy.deepcopy(self)
        base = clone.model.encoder if clone.is_bi else clone.model.base_model
        base.encoder.layer = torch.nn.ModuleList([base.encoder.layer[i] for i in keep])
        base.config.num_hidden_layers = len(keep)
        return clone

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        if self.is_bi:
            self.model.encoder.save_pretrained(folder)
            torch.save({"scale": self.model.scale.detach().cpu(), "bias": self.model.bias.detach().cpu()},
                       folder / BI_HEAD_FILE)
        else:
            self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if self.aux is not None:
            torch.save(self.aux.state_dict(), folder / AUX_FILE)
        self.save_meta(folder)

    def save_meta(self, folder: Path) -> None:
        (Path(folder) / META).write_text(json.dumps(asdict(self.meta), indent=1))

    def parameters(self):
        yield from self.model.parameters()
        if self.aux is not None:
            yield from self.aux.parameters()

    def head_parameters(self) -> list:
        """The parameters that did not come with the backbone (they may learn faster)."""
        head = self.model.head_parameters() if self.is_bi else list(self.model.classifier.parameters())
        return head + (list(self.aux.parameters()) if self.aux is not None else [])

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        if self.aux is not None:
            self.aux.train(mode)

    def encode(self, queries: list[str], titles: list[str], attrs: list[dict]):
        texts = [item_text(t, a, self.lexicon, self.meta.use_attributes) for t, a in zip(titles, attrs)]
        return encode(self.tokenizer, self.meta.architecture, self.meta.max_length, queries, texts, "pt")

    def forward(self, enc, with_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw grade logits (before the calibration temperature) and, when asked, the
        per-attribute verdict logits, shape (batch, attributes, 3)."""
        logits, aux, _ = self.forward_parts(enc, with_aux)
        return logits, aux

    def forward_parts(self, enc, with_aux: bool = False, with_embeddings: bool = False):
        """forward's logits and aux logits, and with_embeddings (a bi-encoder only) the query and item unit
        embeddings, fp32, shape (batch, hidden) each; else None in their place."""
        if with_embeddings and not self.is_bi:
            raise ValueError("only a bi-encoder student has query and item embeddings")
        enc = {k: v.to(self.hardware.device) for k, v in enc.items()}
        use_aux = with_aux and self.aux is not None
        emb = None
        with self.hardware.autocast():
            if self.is_bi and (use_aux or with_embeddings):
                logits, feats, emb = self.model(**enc, with_features=use_aux, with_embeddings=with_embeddings)
            elif self.is_bi:
                logits, feats = self.model(**enc), None
            else:
                out = self.model(**enc, output_hidden_states=use_aux)
                logits, feats = out.logits, (out.hidden_states[-1][:, 0] if use_aux else None)
            aux = self.aux(feats).view(len(feats), len(self.meta.aux_attributes), len(VERDICTS)) if use_aux else None
        emb = tuple(e.float() for e in emb) if emb is not None else None
        return logits.float(), (aux.float() if aux is not None else None), emb

    @torch.inference_mode()
    def embeddings(self, queries: list[str], titles: list[str], attrs: list[dict],
                   batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A bi-encoder's query and item unit embeddings of the pairs, shape (n, hidden) each."""
        self.train(False)
        batch_size = batch_size or self.hardware.batch(64)
        parts = [self.forward_parts(self.encode(queries[s:s + batch_size], titles[s:s + batch_size],
                                                attrs[s:s + batch_size]), with_embeddings=True)[2]
                 for s in range(0, len(queries), batch_size)]
        if not parts:
            dim = self.model.config.hidden_size
            return np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32)
        return tuple(np.concatenate([p[i].cpu().numpy() for p in parts]) for i in (0, 1))

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

    def fit_head(self, queries: list[str], titles: list[str], attrs: list[dict], gold: np.ndarray) -> dict:
        """Bi-encoder: fit the ordinal head (scale, grade biases) to human labels with the encoder frozen,
        so training starts from the backbone's own cosine read on the grade scale."""
        if not self.is_bi:
            raise ValueError("fit_head is for the bi-encoder student")
        with torch.inference_mode():
            enc = {k: v.to(self.hardware.device) for k, v in self.encode(queries, titles, attrs).items()}
            with self.hardware.autocast():
                u = self.model.embed(enc["q_input_ids"], enc["q_attention_mask"], enc.get("q_token_type_ids"))
                v = self.model.embed(enc["d_input_ids"], enc["d_attention_mask"], enc.get("d_token_type_ids"))
            cos = (u.float() * v.float()).sum(-1)
        cos = cos.clone()  # out of inference mode: the head's fit needs gradients through it
        y = torch.as_tensor(gold, device=cos.device)
        params = self.model.head_parameters()
        opt = torch.optim.LBFGS(params, max_iter=200, line_search_fn="strong_wolfe")
        n = len(gold)

        def closure():
            opt.zero_grad()
            # A light pull on the biases (0.5 / n, as the teacher's correction): a seed of a few pairs per grade.
            loss = torch.nn.functional.cross_entropy(self.model.head(cos), y) + 0.5 / n * (self.model.bias ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            if self.model.scale.item() < 0:  # a seed that says a higher cosine is worse says more about the seed
                self.model.scale.fill_(0.0)
            return {"scale": round(self.model.scale.item(), 4), "bias": [round(b, 4) for b in self.model.bias.tolist()],
                    "pairs": n}

    @torch.inference_mode()
    def predict_attributes(self, queries: list[str], titles: list[str], attrs: list[dict]) -> list[dict[str, str]]:
        """The aux heads' verdict per attribute (match / mismatch / unknown)."""
        if self.aux is None:
            raise ValueError("this student has no auxiliary attribute heads (aux_attributes is empty)")
        self.train(False)
        _, aux = self.forward(self.encode(queries, titles, attrs), with_aux=True)
        return [{a: VERDICTS[int(v)] for a, v in zip(self.meta.aux_attributes, row)} for row in aux.argmax(-1)]


def _aux_head(model, meta: StudentMeta) -> torch.nn.Module | None:
    if not meta.aux_attributes:
        return None
    width = model.config.hidden_size * (2 if meta.architecture == BI_ENCODER else 1)
    return torch.nn.Linear(width, len(meta.aux_attributes) * len(VERDICTS))

