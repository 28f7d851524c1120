"""Distillation loss and loop.

loss = kl_weight * T^2 * KL(teacher_T || student_T)      (teacher's soft grades)
     + synthetic_weight * CE(student, hard grade)         (synthetic near-miss pairs)
     + aux_weight * CE(aux head, per-attribute verdict)    (match / mismatch / unknown)

Each weight at 0 switches its term off; that is how the ablation rows are run.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .model import VERDICTS, Student


@dataclass
class Example:
    query: str
    title: str
    attributes: dict
    soft: list[float] | None = None   # teacher probabilities
    hard: int | None = None           # grade index of a synthetic (or human) pair
    aux: dict | None = None           # attribute -> match / mismatch / unknown


@dataclass
class LossWeights:
    kl: float = 1.0
    temperature: float = 1.0
    synthetic: float = 1.0
    aux: float = 0.0


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, soft_mask: torch.Tensor, hard: torch.Tensor,
                 hard_mask: torch.Tensor, temperature: float, synthetic_weight: float, kl_weight: float = 1.0,
                 aux_logits: torch.Tensor | None = None, aux_target: torch.Tensor | None = None,
                 aux_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss and each term's value (unweighted), for logging."""
    loss, terms = logits.new_zeros(()), {}
    if kl_weight > 0 and soft_mask.any():
        log_p = F.log_softmax(logits[soft_mask] / temperature, -1)
        target = soft[soft_mask]
        if temperature != 1.0:
            target = F.softmax(torch.log(target.clamp_min(1e-8)) / temperature, -1)
        kl = F.kl_div(log_p, target, reduction="batchmean") * temperature ** 2
        loss, terms["kl"] = loss + kl_weight * kl, float(kl.detach())
    if synthetic_weight > 0 and hard_mask.any():
        ce = F.cross_entropy(logits[hard_mask], hard[hard_mask])
        loss, terms["ce"] = loss + synthetic_weight * ce, float(ce.detach())
    if aux_weight > 0 and aux_logits is not None and aux_target is not None and (aux_target >= 0).any():
        # -1 marks attributes with no target (the query does not name them).
        aux = F.cross_entropy(aux_logits.reshape(-1, len(VERDICTS)), aux_target.reshape(-1), ignore_index=-1)
        loss, terms["aux"] = loss + aux_weight * aux, float(aux.detach())
    return loss, terms


def batch_tensors(batch: list[Example], n_grades: int, aux_names: list[str]) -> dict[str, torch.Tensor]:
    return {
        "soft": torch.tensor([e.soft if e.soft is not None else [1.0 / n_grades] * n_grades for e in batch]),
        "soft_mask": torch.tensor([e.soft is not None for e in batch]),
        "hard": torch.tensor([e.hard if e.hard is not None else 0 for e in batch]),
        "hard_mask": torch.tensor([e.hard is not None for e in batch]),
        "aux_target": torch.tensor([[VERDICTS.index(e.aux[a]) if e.aux and e.aux.get(a) in VERDICTS else -1
                                     for a in aux_names] for e in batch], dtype=torch.long).reshape(len(batch), -1),
    }


def batch_loss(student: Student, batch: list[Example], w: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    enc = student.encode([e.query for e in batch], [e.title for e in batch], [e.attributes for e in batch])
    t = {k: v.to(student.hardware.device) for k, v in batch_tensors(batch, len(student.meta.grades),
                                                                     student.meta.aux_attributes).items()}
    use_aux = w.aux > 0 and student.aux is not None
    logits, aux_logits = student.forward(enc, with_aux=use_aux)
    return distill_loss(logits, t["soft"], t["soft_mask"], t["hard"], t["hard_mask"], w.temperature, w.synthetic,
                        w.kl, aux_logits, t["aux_target"] if use_aux else None, w.aux)


def train(student: Student, examples: list[Example], cfg, progress: bool = True) -> dict:
    """Train on the examples with the knobs of a DistillSpec (epochs, batchSize, learningRate,
    headLearningRate, temperature and the three loss weights, seed): AdamW, linear warm-up over the
    first tenth of the steps, then linear decay; gradients clipped at 1."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    w = LossWeights(cfg.kl_weight, cfg.temperature, cfg.synthetic_weight, cfg.aux_weight)
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
