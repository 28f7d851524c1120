"""BM25 baseline (rank-bm25), with grade thresholds fitted on the human seed only."""
from __future__ import annotations

import re

import numpy as np
from rank_bm25 import BM25Okapi

from .metrics import grades_from_cutoffs, share_cutoffs

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25Baseline:
    def __init__(self, corpus: dict[str, str]):
        self.ids = list(corpus)
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.bm25 = BM25Okapi([tokens(corpus[i]) or ["<empty>"] for i in self.ids])
        self.thresholds: np.ndarray | None = None

    def score(self, queries: list[str], item_ids: list[str]) -> np.ndarray:
        out = np.zeros(len(queries))
        cache: dict[str, np.ndarray] = {}
        for n, (q, i) in enumerate(zip(queries, item_ids)):
            if q not in cache:
                cache[q] = self.bm25.get_scores(tokens(q))
            out[n] = cache[q][self.index[i]]
        return out

    def fit_thresholds(self, scores: np.ndarray, grades: np.ndarray, n_grades: int) -> None:
        """Cut points so the predicted grade shares match the seed's grade shares."""
        self.thresholds = share_cutoffs(scores, grades, n_grades)

    def grades(self, scores: np.ndarray) -> np.ndarray:
        assert self.thresholds is not None, "fit_thresholds first"
        return grades_from_cutoffs(scores, self.thresholds)
