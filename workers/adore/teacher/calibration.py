"""Grade-prior correction of the teacher, fitted on the human seed.

A small teacher has a strong prior for some grades (SmolLM2-135M calls most
pairs "exact" whatever the item). We fit one additive offset per grade to
its log-probabilities so that, on the human-labelled seed, the corrected
distribution softmax(log p + b) has the least cross-entropy (with a small L2
pull towards no correction, since the seed is a few dozen pairs). The same
offsets are then applied to every pair the teacher labels. This changes only
how the grades are weighed, never the rationale; both are kept.

With rule evidence, the correction also weighs the key-attribute comparison
that the teacher's chain of thought is meant to make, computed by the fast
extractor (rule_features): log p + b + W f(query, item), one weight per grade
and feature, fitted on the same seed. A small teacher's own comparison is
often wrong ("type mismatch ... Grade: exact"); the seed decides how much
each source is worth, so a strong teacher keeps its say and a weak one is
outweighed by the rules.
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
    return fit_correction(probs, gold, None, l2)[0]


def fit_correction(probs: np.ndarray, gold: np.ndarray, features: np.ndarray | None,
                   l2: float | None = None, ordinal: bool = True,
                   signs=None) -> tuple[np.ndarray, np.ndarray]:
    """Offsets b (grades,) and rule weights W (grades, features) minimising the seed cross-entropy
    of softmax(log p + b + f W^T) + l2 * (|b|^2 + |W s|^2), s the features' spread on the seed
    (the penalty is on the standardised weights); W is empty without features.

    ordinal: W = r v^T with r the grade's rank scaled to 0..1, one weight per feature: evidence
    moves the distribution up or down the grade scale. A 32-pair seed often holds one or two pairs
    of the lowest grade; free per-grade weights (ordinal=False) then fit those few pairs, not
    the evidence, and order unseen pairs worse.

    signs (ordinal only): per feature +1 (may only raise the grade), -1 (may only lower it) or
    0 (free). What the evidence means is known (more of the query found in the item is never
    worse); a seed of 32 pairs with two correlated features can still flip one's sign."""
    probs, gold = np.asarray(probs, float), np.asarray(gold, int)
    if probs.ndim != 2 or len(probs) != len(gold) or len(gold) == 0:
        raise ValueError(f"fit_offsets: need an (n, grades) array and n gold grades, got {probs.shape} and {len(gold)}")
    n, g = probs.shape
    x = np.zeros((n, 0)) if features is None else np.asarray(features, float)
    if x.shape[0] != n:
        raise ValueError(f"fit_correction: {x.shape[0]} feature rows for {n} pairs")
    f = x.shape[1]
    # Fitted on standardised features, so the penalty weighs every piece of evidence on the same
    # scale (a cosine that moves by 0.1 is not penalised more than a word count that moves by 1).
    mu, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    x = (x - mu) / scale
    l2 = 0.5 / n if l2 is None else l2
    logp = np.log(np.clip(probs, EPS, 1.0))
    onehot = np.eye(g)[gold]

    rank = np.arange(g) / max(g - 1, 1)

    def weights(theta):
        return np.outer(rank, theta[g:]) if ordinal else theta[g:].reshape(g, f)

    def loss(theta):
        b, w = theta[:g], weights(theta)
        z = logp + b + x @ w.T
        z = z - z.max(axis=1, keepdims=True)
        q = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        value = -np.mean(np.log(np.clip((q * onehot).sum(1), EPS, 1.0))) + l2 * float(theta @ theta)
        d = (q - onehot) / n
        dw = d.T @ x
        return value, np.concatenate([d.sum(0), rank @ dw if ordinal else dw.ravel()]) + 2 * l2 * theta

    bounds = [(None, None)] * g
    if ordinal:
        signs = [0] * f if signs is None else list(signs)
        if len(signs) != f:
            raise ValueError(f"fit_correction: {len(signs)} signs for {f} features")
        bounds += [(0, None) if sg > 0 else (None, 0) if sg < 0 else (None, None) for sg in signs]
    else:
        bounds += [(None, None)] * (g * f)
    theta = minimize(loss, np.zeros(len(bounds)), jac=True, method="L-BFGS-B", bounds=bounds).x
    b, w = theta[:g], weights(theta)
    w = w / scale  # back to raw features: log p + b + ((x - mu) / scale) W^T = log p + (b - mu W^T) + x W^T
    b = b - w @ mu
    return b - b.mean(), w - w.mean(axis=0, keepdims=True)  # softmax ignores shifts shared by all grades


def apply_correction(probs: np.ndarray, offsets: np.ndarray, weights: np.ndarray | None = None,
                     features: np.ndarray | None = None) -> np.ndarray:
    """softmax(log p + b + f W^T); features (n, F) or (F,) for one pair."""
    shift = np.asarray(offsets, float)
    if weights is not None and np.size(weights):
        shift = shift + np.asarray(features, float) @ np.asarray(weights, float).T
    return apply_offsets(probs, shift)


RULE_FEATURES = ("queryCoverage", "attributeMatches", "attributeMismatches")
# Which way each piece of evidence may move the grade (fit_correction's signs).
FEATURE_SIGNS = {"queryCoverage": 1, "attributeMatches": 1, "attributeMismatches": -1, "embeddingSimilarity": 1}


def rule_features(query: str, title: str, qa: dict, ia: dict) -> list[float]:
    """The key-attribute comparison as numbers: the share of query words found in the item
    (title and its key attributes, singular forms), and how many of the query's key attributes
    the item matches and mismatches (attributes.compare). qa / ia: the fast extractor's key
    attributes of the query and the item (annotate records carry them already)."""
    from .. import attributes as attr

    item_words = {attr.singular(w) for w in attr.words(" ".join([title, *map(str, ia.values())]))}
    verdicts = list(attr.compare(qa, ia).values())
    q_words = [attr.singular(w) for w in attr.words(query) if w not in attr.STOP] or \
        [attr.singular(w) for w in attr.words(query)]
    coverage = sum(w in item_words for w in q_words) / len(q_words) if q_words else 0.0
    return [round(coverage, 4), float(verdicts.count("match")), float(verdicts.count("mismatch"))]
