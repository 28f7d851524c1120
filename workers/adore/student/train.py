"""Distillation: KL to the teacher's soft grades + cross-entropy on synthetic hard grades."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .model import Student


@dataclass
class Example:
    query: str
    title: str
    attributes: dict
    soft: list[float] | None = None   # teacher probabilities
    hard: int | None = None           # grade index of a synthetic pair


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, soft_mask: torch.Tensor, hard: torch.Tensor,
                 hard_mask: torch.Tensor, temperature: float, synthetic_weight: float) -> torch.Tensor:
    loss = logits.new_zeros(())
    if soft_mask.any():
        log_p = F.log_softmax(logits[soft_mask] / temperature, -1)
        target = soft[soft_mask]
        if temperature != 1.0:
            target = F.softmax(torch.log(target.clamp_min(1e-8)) / temperature, -1)
        loss = loss + F.kl_div(log_p, target, reduction="batchmean") * temperature ** 2
    if synthetic_weight > 0 and hard_mask.any():
        loss = loss + synthetic_weight * F.cross_entropy(logits[hard_mask], hard[hard_mask])
    return loss


def train(student: Student, examples: list[Example], *, epochs: int, batch_size: int, lr: float,
          temperature: float, synthetic_weight: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    n_grades = len(student.meta.grades)
    model = student.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(examples) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    losses = []
    t0 = time.time()
    bar = tqdm(total=steps, desc="distill", unit="step", mininterval=2)
    for _ in range(epochs):
        order = examples[:]
        rng.shuffle(order)
        for s in range(0, len(order), batch_size):
            batch = order[s:s + batch_size]
            enc = student.encode([e.query for e in batch], [e.title for e in batch], [e.attributes for e in batch])
            soft = torch.tensor([e.soft if e.soft is not None else [1.0 / n_grades] * n_grades for e in batch])
            soft_mask = torch.tensor([e.soft is not None for e in batch])
            hard = torch.tensor([e.hard if e.hard is not None else 0 for e in batch])
            hard_mask = torch.tensor([e.hard is not None for e in batch])
            loss = distill_loss(model(**enc).logits, soft, soft_mask, hard, hard_mask, temperature, synthetic_weight)
            if loss.requires_grad:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
            sched.step()
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    model.eval()
    k = max(1, len(losses) // 10)
    return {"steps": len(losses), "firstLoss": round(sum(losses[:k]) / k, 4), "lastLoss": round(sum(losses[-k:]) / k, 4),
            "trainSeconds": round(time.time() - t0, 1)}
