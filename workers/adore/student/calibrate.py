"""Calibration: one softmax temperature fitted on held-out human labels, judged by ECE.

The dev set is split by query into two halves: the temperature is fitted
(minimum negative log-likelihood) on one and ECE is reported before and after
on the other, so the reported gain is not measured on the data it was fitted
on. A temperature never changes the argmax, so accuracy and macro-F1 stay put.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..metrics import nll as _nll, softmax


def ece(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-grade confidence, equal-width bins."""
    if len(gold) == 0:
        return 0.0
    conf, pred = probs.max(1), probs.argmax(1)
    hit = (pred == gold).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return float(sum(abs(hit[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))


def reliability(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> list[dict]:
    """Per-bin mean confidence, accuracy and count (the calibration curve)."""
    conf, hit = probs.max(1), (probs.argmax(1) == gold).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "confidence": float(conf[idx == b].mean()),
             "accuracy": float(hit[idx == b].mean()), "count": int((idx == b).sum())}
            for b in range(bins) if (idx == b).any()]


def nll(logits: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    """NLL of the gold grades under the logits at a temperature (what the temperature fit minimises)."""
    return _nll(softmax(logits / temperature), gold)


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """Temperature minimising NLL: a log-spaced grid, then a finer grid around the best."""
    if len(gold) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = min(grid, key=lambda t: nll(logits, gold, t))
    fine = best * np.exp(np.linspace(-0.12, 0.12, 25))
    return float(min(fine, key=lambda t: nll(logits, gold, t)))


def split_by_query(queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fit half and the report half; a query's pairs stay together, stable across runs."""
    side = np.array([int(hashlib.sha1(q.encode()).hexdigest(), 16) % 2 for q in queries], dtype=int)
    if side.min() == side.max():  # one query only: split its pairs instead
        side = np.arange(len(queries)) % 2
    return np.flatnonzero(side == 0), np.flatnonzero(side == 1)


def calibrate(logits: np.ndarray, gold: np.ndarray, queries: list[str], bins: int = 10) -> dict:
    """Fit on one half of dev, report ECE before/after on the other half."""
    fit, held = split_by_query(queries)
    t = fit_temperature(logits[fit], gold[fit])
    before, after = softmax(logits[held]), softmax(logits[held] / t)
    return {"method": "temperature", "temperature": round(t, 4), "fitPairs": int(len(fit)),
            "heldOutPairs": int(len(held)), "eceBefore": round(ece(before, gold[held], bins), 4),
            "eceAfter": round(ece(after, gold[held], bins), 4),
            "nllBefore": round(nll(logits[held], gold[held], 1.0), 4),
            "nllAfter": round(nll(logits[held], gold[held], t), 4)}
