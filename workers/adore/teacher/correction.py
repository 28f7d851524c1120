"""The teacher's correction: its grade probabilities and the evidence beside them, weighed on the human seed.

The labels the student learns come from three sources of signal about a pair:
- the teacher LLM's grade distribution (its expected grade is the teacher's signal);
- the fast extractor's key-attribute comparison (rule_features: the share of query words
  found in the item; attribute matches and mismatches);
- the bi-encoder cosine of query and title.

`ordinal` (the default) puts one score on the grade scale,
    s = exp(g) * sum_k (1/sqrt(K) + d_k) * x_k       (x_k each signal, standardised, sign-aligned)
    z_grade = b_grade + rank(grade) * s,  probabilities = softmax(z),
and fits the offsets b, the scale g and the deviations d_k on the seed, with pulls towards
equal weights (d = 0, strongly), a unit scale (g = 0) and no offsets. A 32-pair seed cannot
weigh four signals freely: free weights fitted on 32 pairs ordered the Home Depot pool at AUC
0.71 +- 0.12 over random seeds, the equal-weight prior at 0.780 +- 0.005 (the simulation in
docs/teacher.md). Signals keep their meaning: more of the query found in the item, a higher
cosine and a higher teacher grade never lower the score (d_k >= -1/sqrt(K)). The teacher's
fitted weight (teacherWeight) says how much the seed trusts the LLM against the evidence.

`per-grade` is the earlier correction: softmax(log p + b + f W^T) with one free weight per
grade and raw feature, the teacher's log-probabilities at weight 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from ..metrics import expected_grade, nll, softmax

EPS = 1e-6
TEACHER = "teacher"
RULE_FEATURES = ("queryCoverage", "attributeMatches", "attributeMismatches")
EMBEDDING_FEATURE = "embeddingSimilarity"
# Which way each signal may move the grade.
SIGNS = {TEACHER: 1, "queryCoverage": 1, "attributeMatches": 1, "attributeMismatches": -1, EMBEDDING_FEATURE: 1}
DEVIATION_PULL = 1.0  # strength of the pull of each signal's weight towards the equal weight


@dataclass
class Correction:
    """A fitted correction; apply() maps (teacher probabilities, evidence features) to label probabilities."""

    mode: str
    n_grades: int
    names: list[str]                     # the signals: TEACHER (when used) then the evidence features
    offsets: np.ndarray
    weights: np.ndarray                  # ordinal: per signal, on standardised sign-aligned units
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    per_grade: np.ndarray | None = None  # per-grade: W (grades, features) on raw features

    def signals(self, teacher_probs, features) -> np.ndarray:
        cols = []
        if TEACHER in self.names:
            cols.append(expected_grade(teacher_probs).reshape(-1, 1))
        if features is not None and np.size(features):
            cols.append(np.atleast_2d(np.asarray(features, float)))
        n = len(teacher_probs) if teacher_probs is not None else len(np.atleast_2d(features))
        return np.hstack(cols) if cols else np.zeros((n, 0))

    def apply(self, teacher_probs, features=None) -> np.ndarray:
        if self.mode == "per-grade":
            z = np.log(np.clip(np.asarray(teacher_probs, float), EPS, 1.0)) + self.offsets
            if self.per_grade is not None and np.size(self.per_grade):
                z = z + np.atleast_2d(np.asarray(features, float)) @ self.per_grade.T
            return softmax(z)
        x = (self.signals(teacher_probs, features) - self.mean) / self.scale * _signs(self.names)
        rank = np.arange(self.n_grades) / max(self.n_grades - 1, 1)
        return softmax(self.offsets + np.outer(x @ self.weights, rank))

    def report(self, grades: list[str]) -> dict:
        out = {"correction": self.mode, "gradeOffsets": {g: round(float(b), 4) for g, b in zip(grades, self.offsets)}}
        if self.mode == "per-grade":
            evidence = [n for n in self.names if n != TEACHER]
            if self.per_grade is not None and evidence:
                out["ruleWeights"] = {g: dict(zip(evidence, (round(float(v), 4) for v in row)))
                                      for g, row in zip(grades, self.per_grade)}
            return out
        out["signalWeights"] = {n: round(float(w), 4) for n, w in zip(self.names, self.weights)}
        if TEACHER in self.names:
            out["teacherWeight"] = out["signalWeights"][TEACHER]
        return out


def _signs(names) -> np.ndarray:
    return np.array([SIGNS.get(n, 0) or 1 for n in names], float)


def fit(teacher_probs, gold, features, names: list[str], n_grades: int, mode: str = "ordinal",
        reference=None) -> Correction:
    """Fit a correction on the seed. names: the evidence features' names (columns of features);
    teacher_probs None fits the evidence alone. reference: (teacher_probs, features) whose spread
    standardises the signals (more stable than the seed's few pairs); the two may cover different
    pairs (the teacher's: the pairs it judged; the evidence's: every pair it may label)."""
    gold = np.asarray(gold, int)
    if len(gold) == 0 or (teacher_probs is not None and len(teacher_probs) != len(gold)):
        raise ValueError(f"correction: need one teacher distribution per gold grade, got "
                         f"{0 if teacher_probs is None else len(teacher_probs)} and {len(gold)}")
    if features is not None and np.size(features) and len(features) != len(gold):
        raise ValueError(f"correction: {len(features)} feature rows for {len(gold)} pairs")
    if mode == "per-grade":
        return _fit_per_grade(teacher_probs, gold, features, names, n_grades)
    signals = ([TEACHER] if teacher_probs is not None else []) + list(names)
    c = Correction("ordinal", n_grades, signals, np.zeros(n_grades), np.zeros(len(signals)))
    x = c.signals(teacher_probs, features)
    c.mean, c.scale = _standardisation(c, x, reference)
    xs = (x - c.mean) / c.scale * _signs(signals)
    c.offsets, c.weights = _fit_ordinal(xs, gold, n_grades)
    return c


def _standardisation(c: Correction, x: np.ndarray, reference) -> tuple[np.ndarray, np.ndarray]:
    """Each signal's mean and spread over its own reference rows (the seed's where it has fewer than two):
    the pull towards equal weights acts on standardised signals, so the reference decides what equal means.
    The evidence is standardised over every pair it may label, so its correction does not depend on which
    pairs the LLM was given (dataset.poolSelection)."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    teacher_ref, feature_ref = reference if reference is not None else (None, None)
    first = 0
    if TEACHER in c.names:
        first = 1
        if teacher_ref is not None and len(teacher_ref) >= 2:
            col = expected_grade(np.asarray(teacher_ref, float))
            mean[0], scale[0] = col.mean(), col.std()
    if x.shape[1] > first and feature_ref is not None and len(feature_ref) >= 2:
        f = np.atleast_2d(np.asarray(feature_ref, float))
        if f.shape[1] != x.shape[1] - first:
            raise ValueError(f"correction: reference has {f.shape[1]} evidence columns, the seed {x.shape[1] - first}")
        mean[first:], scale[first:] = f.mean(axis=0), f.std(axis=0)
    return mean, np.where(scale > 1e-9, scale, 1.0)


def _fit_ordinal(xs: np.ndarray, gold: np.ndarray, n_grades: int) -> tuple[np.ndarray, np.ndarray]:
    n, k = xs.shape
    rank = np.arange(n_grades) / max(n_grades - 1, 1)
    onehot = np.eye(n_grades)[gold]
    base = 1 / np.sqrt(k) if k else 0.0

    def unpack(theta):
        return theta[:n_grades], theta[n_grades], theta[n_grades + 1:]

    def loss(theta):
        b, g, d = unpack(theta)
        w = np.exp(g) * (base + d)
        q = softmax(b + np.outer(xs @ w, rank))
        value = -np.mean(np.log(np.clip((q * onehot).sum(1), EPS, 1))) \
            + DEVIATION_PULL * float(d @ d) + (1.0 / n) * g * g + (0.5 / n) * float(b @ b)
        r = (q - onehot) / n                                  # d loss / d z
        ds = r @ rank                                         # d loss / d s, per pair
        dw = xs.T @ ds
        grad_b = r.sum(0) + (1.0 / n) * b
        grad_g = float(dw @ (np.exp(g) * (base + d))) + (2.0 / n) * g
        grad_d = np.exp(g) * dw + 2 * DEVIATION_PULL * d
        return value, np.concatenate([grad_b, [grad_g], grad_d])

    bounds = [(None, None)] * (n_grades + 1) + [(-base, None)] * k  # a weight may shrink to zero, never flip
    theta = minimize(loss, np.zeros(n_grades + 1 + k), jac=True, method="L-BFGS-B", bounds=bounds).x
    b, g, d = unpack(theta)
    return b - b.mean(), np.exp(g) * (base + d)


def _fit_per_grade(teacher_probs, gold, features, names, n_grades) -> Correction:
    """The earlier correction: log p + b + f W^T, free per-grade weights on raw features, L2 0.5/n."""
    n = len(gold)
    probs = np.full((n, n_grades), 1.0 / n_grades) if teacher_probs is None else np.asarray(teacher_probs, float)
    x = np.zeros((n, 0)) if features is None else np.asarray(features, float)
    f = x.shape[1]
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    xs = (x - mu) / sd
    logp, onehot, l2 = np.log(np.clip(probs, EPS, 1)), np.eye(n_grades)[gold], 0.5 / n

    def loss(theta):
        b, w = theta[:n_grades], theta[n_grades:].reshape(n_grades, f)
        q = softmax(logp + b + xs @ w.T)
        d = (q - onehot) / n
        value = -np.mean(np.log(np.clip((q * onehot).sum(1), EPS, 1))) + l2 * float(theta @ theta)
        return value, np.concatenate([d.sum(0), (d.T @ xs).ravel()]) + 2 * l2 * theta

    theta = minimize(loss, np.zeros(n_grades * (1 + f)), jac=True, method="L-BFGS-B").x
    w = theta[n_grades:].reshape(n_grades, f) / sd
    b = theta[:n_grades] - w @ mu
    signals = ([TEACHER] if teacher_probs is not None else []) + list(names)
    return Correction("per-grade", n_grades, signals, b - b.mean(), np.zeros(0), per_grade=w - w.mean(axis=0, keepdims=True))


def leave_one_out(teacher_probs, gold, features, names, n_grades: int, mode: str = "ordinal", reference=None) -> dict:
    """How well a correction fitted on the other seed pairs labels each seed pair: NLL and the rank
    correlation of the expected grade with the human grade, the seed's own (noisy: a few dozen pairs)
    estimate of the labels' quality."""
    gold = np.asarray(gold, int)
    n = len(gold)
    if n < 4:
        return {}
    out = np.zeros((n, n_grades))
    for i in range(n):
        keep = np.arange(n) != i
        c = fit(None if teacher_probs is None else teacher_probs[keep], gold[keep],
                None if features is None else features[keep], names, n_grades, mode, reference)
        out[i] = c.apply(None if teacher_probs is None else teacher_probs[i:i + 1],
                         None if features is None else features[i:i + 1])[0]
    from scipy.stats import spearmanr

    rho = spearmanr(expected_grade(out), gold).correlation if len(set(gold)) > 1 else None
    return {"nll": round(nll(out, gold), 4), "spearman": None if rho is None or np.isnan(rho) else round(float(rho), 4)}


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
