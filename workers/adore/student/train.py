"""Distillation loss and loop.

loss = kl_weight * T^2 * KL(teacher_T || student_T)      (teacher's soft grades)
     + synthetic_weight * CE(student, hard grade)         (synthetic near-miss pairs)
     + aux_weight * CE(aux head, per-attribute verdict)    (match / mismatch / unknown)
     + embedding * (|u - u_t|^2 + |v - v_t|^2)             (a bi-encoder taught by a bi-encoder: distill.compress
                                                            matches the first student's unit embeddings)

Each weight at 0 switches its term off; that is how the ablation rows are run.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..schema import DistillSpec
from .model import VERDICTS, Student


@dataclass
class Example:
    query: str
    title: str
    attributes: dict
    soft: list[float] | None = None   # teacher probabilities
    hard: int | None = None           # grade index of a synthetic (or human) pair
    aux: dict | None = None           # attribute -> match / mismatch / unknown
    embeddings: tuple | None = None   # a teaching bi-encoder's (query, item) unit embeddings (distill.compress)


@dataclass
class LossWeights:
    """The loss's knobs, as DistillSpec names them (klWeight, temperature, syntheticWeight, auxWeight;
    embedding: distill.compress.embeddingWeight, for the second distillation only)."""

    kl: float = 1.0
    temperature: float = 1.0
    synthetic: float = 1.0
    aux: float = 0.0
    embedding: float = 0.0

    @classmethod
    def of(cls, spec: DistillSpec, embedding: float = 0.0) -> "LossWeights":
        return cls(spec.kl_weight, spec.temperature, spec.synthetic_weight, spec.aux_weight, embedding)


@dataclass
class Targets:
    """What one batch is taught, as tensors: soft teacher grades, hard grades and per-attribute verdicts.

    soft_mask / hard_mask say which rows carry each; an aux target of -1 marks an attribute the query
    does not name."""

    soft: torch.Tensor       # (n, grades)
    soft_mask: torch.Tensor  # (n,) bool
    hard: torch.Tensor       # (n,) grade index
    hard_mask: torch.Tensor  # (n,) bool
    aux: torch.Tensor        # (n, attributes) verdict index or -1
    emb_q: torch.Tensor | None = None   # (n, hidden) the teacher's query unit embeddings, rows of emb_mask
    emb_d: torch.Tensor | None = None   # (n, hidden) its item unit embeddings
    emb_mask: torch.Tensor | None = None  # (n,) bool

    @classmethod
    def of(cls, batch: list[Example], n_grades: int, aux_names: list[str], device="cpu") -> "Targets":
        uniform = [1.0 / n_grades] * n_grades
        aux = [[VERDICTS.index(e.aux[a]) if e.aux and e.aux.get(a) in VERDICTS else -1 for a in aux_names]
               for e in batch]
        emb = {}
        if any(e.embeddings is not None for e in batch):
            zero = np.zeros_like(next(e.embeddings[0] for e in batch if e.embeddings is not None), np.float32)
            side = lambda i: torch.from_numpy(np.stack([np.asarray(e.embeddings[i] if e.embeddings else zero, np.float32)
                                                        for e in batch])).to(device)
            emb = {"emb_q": side(0), "emb_d": side(1),
                   "emb_mask": torch.tensor([e.embeddings is not None for e in batch], device=device)}
        return cls(soft=torch.tensor([e.soft if e.soft is not None else uniform for e in batch], device=device),
                   soft_mask=torch.tensor([e.soft is not None for e in batch], device=device),
                   hard=torch.tensor([e.hard if e.hard is not None else 0 for e in batch], device=device),
                   hard_mask=torch.tensor([e.hard is not None for e in batch], device=device),
                   aux=torch.tensor(aux, dtype=torch.long, device=device).reshape(len(batch), -1), **emb)


def check_inputs(logits: torch.Tensor, t: Targets, w: LossWeights) -> None:
    """Shapes and values the loss relies on; a mismatch would otherwise broadcast silently."""
    n, g = logits.shape
    if t.soft.shape != (n, g):
        raise ValueError(f"soft targets shaped {tuple(t.soft.shape)}, logits {(n, g)}")
    if t.soft_mask.any() and not torch.allclose(t.soft[t.soft_mask].sum(-1), t.soft.new_ones(()), atol=1e-3):
        raise ValueError("soft targets must be grade probabilities (each row summing to 1)")
    if t.hard_mask.any() and not bool(((t.hard[t.hard_mask] >= 0) & (t.hard[t.hard_mask] < g)).all()):
        raise ValueError(f"hard targets must be grade indices in [0, {g})")
    if w.temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {w.temperature}")
    if t.emb_q is not None and (t.emb_q.shape[0] != n or t.emb_d.shape != t.emb_q.shape):
        raise ValueError(f"teacher embeddings shaped {tuple(t.emb_q.shape)} and {tuple(t.emb_d.shape)}, batch {n}")


def embedding_loss(emb: tuple[torch.Tensor, torch.Tensor], t: Targets) -> torch.Tensor:
    """Mean over the rows that carry them of the squared distances between the student's and the teacher's
    query and item unit embeddings (2 - 2 cos each: 0 when they point the same way)."""
    u, v = emb
    if u.shape != t.emb_q.shape:
        raise ValueError(f"student embeddings {tuple(u.shape)} against the teacher's {tuple(t.emb_q.shape)}: "
                         "the second student must keep the first's hidden size")
    m = t.emb_mask
    return (((u[m] - t.emb_q[m]) ** 2).sum(-1) + ((v[m] - t.emb_d[m]) ** 2).sum(-1)).mean()


def distill_loss(logits: torch.Tensor, aux_logits: torch.Tensor | None, t: Targets,
                 w: LossWeights, emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss and each term's value (unweighted), for logging. emb: the student's query and
    item unit embeddings, for the embedding term."""
    check_inputs(logits, t, w)
    loss, terms = logits.new_zeros(()), {}
    if w.kl > 0 and t.soft_mask.any():
        log_p = F.log_softmax(logits[t.soft_mask] / w.temperature, -1)
        target = t.soft[t.soft_mask]
        if w.temperature != 1.0:
            target = F.softmax(torch.log(target.clamp_min(1e-8)) / w.temperature, -1)
        kl = F.kl_div(log_p, target, reduction="batchmean") * w.temperature ** 2
        loss, terms["kl"] = loss + w.kl * kl, float(kl.detach())
    if w.synthetic > 0 and t.hard_mask.any():
        ce = F.cross_entropy(logits[t.hard_mask], t.hard[t.hard_mask])
        loss, terms["ce"] = loss + w.synthetic * ce, float(ce.detach())
    if w.aux > 0 and aux_logits is not None and (t.aux >= 0).any():
        aux = F.cross_entropy(aux_logits.reshape(-1, len(VERDICTS)), t.aux.reshape(-1), ignore_index=-1)
        loss, terms["aux"] = loss + w.aux * aux, float(aux.detach())
    if w.embedding > 0 and emb is not None and t.emb_mask is not None and t.emb_mask.any():
        e = embedding_loss(emb, t)
        loss, terms["embedding"] = loss + w.embedding * e, float(e.detach())
    return loss, terms


def batch_loss(student: Student, batch: list[Example], w: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    enc = student.encode([e.query for e in batch], [e.title for e in batch], [e.attributes for e in batch])
    t = Targets.of(batch, len(student.meta.grades), student.meta.aux_attributes, student.hardware.device)
    use_aux = w.aux > 0 and student.aux is not None
    use_emb = w.embedding > 0 and t.emb_mask is not None
    logits, aux_logits, emb = student.forward_parts(enc, with_aux=use_aux, with_embeddings=use_emb)
    return distill_loss(logits, aux_logits if use_aux else None, t, w, emb)


def train(student: Student, examples: list[Example], cfg: DistillSpec, progress: bool = True,
          embedding_weight: float = 0.0) -> dict:
    """Train on the examples with the knobs of a DistillSpec (epochs, batchSize, learningRate,
    headLearningRate, temperature and the three loss weights, seed): AdamW, linear warm-up over the
    first tenth of the steps, then linear decay; gradients clipped at 1. embedding_weight: the weight of
    the embedding term, for examples that carry a teacher's embeddings (distill.compress)."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    w = LossWeights.of(cfg, embedding_weight)
    student.train()
    head = {id(p) for p in student.head_parameters()}
    groups = [{"params": [p for p in student.parameters() if id(p) not in head], "lr": cfg.learning_rate},
              {"params": student.head_parameters(), "lr": cfg.head_learning_rate or cfg.learning_rate}]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    steps = cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    losses, term_sums, term_counts = [], {}, {}
    t0 = time.time()
    bar = tqdm(total=steps, desc="distill", unit="step", mininterval=2, disable=not progress)
    for _ in range(cfg.epochs):
        order = examples[:]
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            loss, terms = batch_loss(student, order[s:s + cfg.batch_size], w)
            if loss.requires_grad:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(student.parameters()), 1.0)
                opt.step()
                opt.zero_grad()
            sched.step()
            losses.append(float(loss))
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + v
                term_counts[k] = term_counts.get(k, 0) + 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    student.train(False)
    k = max(1, len(losses) // 10)
    seconds = time.time() - t0
    return {"steps": len(losses), "firstLoss": round(sum(losses[:k]) / k, 4), "lastLoss": round(sum(losses[-k:]) / k, 4),
            "meanTerms": {t: round(term_sums[t] / term_counts[t], 4) for t in sorted(term_sums)},
            "trainSeconds": round(seconds, 1), "examplesPerSecond": round(len(examples) * cfg.epochs / max(seconds, 1e-9), 1)}
