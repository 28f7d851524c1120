"""Relevance metrics over graded labels (grade indices, 0 = lowest)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

EPS = 1e-12  # floor of a probability under a log


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (stable for large logits)."""
    z = np.asarray(logits, float)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def nll(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean negative log-likelihood of the gold grade indices under grade probabilities (n, grades)."""
    p = np.asarray(probs, float)[np.arange(len(gold)), gold]
    return float(-np.log(np.clip(p, EPS, 1.0)).mean())


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """Expected grade index (0 = lowest) under grade probabilities: every model's relevance score."""
    return np.asarray(probs, float) @ np.arange(np.shape(probs)[-1])


def ndcg_at_k(queries: list[str], gold: np.ndarray, scores: np.ndarray, k: int = 10) -> float | None:
    """Mean NDCG@k over queries with at least two distinct gold grades; gain = grade index."""
    by_q: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        by_q[q].append(i)
    values = []
    for idx in by_q.values():
        g = gold[idx].astype(float)
        if len(set(g)) < 2:
            continue
        order = np.argsort(-scores[idx], kind="stable")[:k]
        ideal = np.sort(g)[::-1][:k]
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        dcg = float(((2 ** g[order] - 1) * disc[:len(order)]).sum())
        idcg = float(((2 ** ideal - 1) * disc[:len(ideal)]).sum())
        values.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(values)) if values else None


def macro_f1(gold: np.ndarray, pred: np.ndarray, n_grades: int) -> float:
    """Macro-F1 over every grade of the scheme (a grade never predicted nor present counts as 0)."""
    return round(float(f1_score(gold, pred, labels=list(range(n_grades)), average="macro", zero_division=0)), 4)


def graded_report(queries: list[str], gold: np.ndarray, pred: np.ndarray, scores: np.ndarray, grades: list[str],
                  k: int = 10, raw_gold: np.ndarray | None = None, raw_pred: np.ndarray | None = None) -> dict:
    labels = list(range(len(grades)))
    per_grade = f1_score(gold, pred, labels=labels, average=None, zero_division=0)
    out = {
        "pairs": int(len(gold)),
        "accuracy": round(float(accuracy_score(gold, pred)), 4),
        "macroF1": macro_f1(gold, pred, len(grades)),
        "perGradeF1": {g: round(float(f), 4) for g, f in zip(grades, per_grade)},
        f"ndcg@{k}": _round(ndcg_at_k(queries, gold, scores, k)),
        "qwk": round(float(cohen_kappa_score(gold, pred, weights="quadratic")), 4) if len(set(gold)) > 1 else None,
    }
    relevant = (gold > 0).astype(int)
    out["auc"] = round(float(roc_auc_score(relevant, scores)), 4) if 0 < relevant.sum() < len(relevant) else None
    if raw_gold is not None and raw_pred is not None:
        out["rmse"] = round(float(np.sqrt(np.mean((raw_gold - raw_pred) ** 2))), 4)
    return out


def share_cutoffs(scores: np.ndarray, gold: np.ndarray, n_grades: int) -> np.ndarray:
    """Cut points on a relevance score such that the predicted grade shares match those of `gold`.

    Fitted on the human seed, this turns any monotone score (BM25, a cosine, a
    student's expected grade) into grades without letting one grade swallow
    the rest; it is how every model in a report is read, so they compare fairly.
    """
    if not len(scores):
        return np.zeros(n_grades - 1)
    shares = np.array([(gold == g).mean() for g in range(n_grades)])
    return np.quantile(scores, np.cumsum(shares)[:-1])


def grades_from_cutoffs(scores: np.ndarray, cutoffs) -> np.ndarray:
    """Grade index per score: how many cut points lie at or below it."""
    return np.searchsorted(np.asarray(cutoffs, dtype=float), scores, side="right")


def _round(v):
    return None if v is None else round(v, 4)
