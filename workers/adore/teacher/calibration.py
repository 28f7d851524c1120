"""Grade-prior correction of the teacher, fitted on the human seed.

A small teacher has a strong prior for some grades (SmolLM2-135M calls most
pairs "exact" whatever the item). We fit one additive offset per grade to
its log-probabilities so that, on the human-labelled seed, the corrected
distribution softmax(log p + b) has the least cross-entropy (with a small L2
pull towards no correction, since the seed is a few dozen pairs). The same
offsets are then applied to every pair the teacher labels. This changes only
how the grades are weighed, never the rationale; both are kept.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

EPS = 1e-6


def apply_offsets(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    z = np.log(np.clip(np.asarray(probs, float), EPS, 1.0)) + np.asarray(offsets, float)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, gold: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, float)[np.arange(len(gold)), gold], EPS, 1.0)
    return float(-np.log(p).mean())


def fit_offsets(probs: np.ndarray, gold: np.ndarray, l2: float | None = None) -> np.ndarray:
    """Offsets b (one per grade, mean zero) minimising seed cross-entropy + l2 * |b|^2.

    The default l2 = 0.5 / n: a few seed pairs move the prior a little, many move it freely.
    """
    probs, gold = np.asarray(probs, float), np.asarray(gold, int)
    if probs.ndim != 2 or len(probs) != len(gold) or len(gold) == 0:
        raise ValueError(f"fit_offsets: need an (n, grades) array and n gold grades, got {probs.shape} and {len(gold)}")
    l2 = 0.5 / len(gold) if l2 is None else l2
    logp = np.log(np.clip(probs, EPS, 1.0))
    onehot = np.eye(probs.shape[1])[gold]

    def loss(b):
        z = logp + b
        z = z - z.max(axis=1, keepdims=True)
        q = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        value = -np.mean(np.log(np.clip((q * onehot).sum(1), EPS, 1.0))) + l2 * float(b @ b)
        grad = (q - onehot).mean(0) + 2 * l2 * b
        return value, grad

    b = minimize(loss, np.zeros(probs.shape[1]), jac=True, method="L-BFGS-B").x
    return b - b.mean()
