"""In-context demonstrations for the teacher: the human-labelled seed pairs nearest to the pair it judges.

Each demonstration is a seed pair with its human grade and the rule rationale for that grade,
shown as an earlier chat turn. Nearness is the bi-encoder cosine of "query | title" texts.
Only seed pairs are ever shown (prepare draws the seed from the training split), so no dev pair
reaches a prompt.
"""
from __future__ import annotations

import numpy as np

from ..data.contract import Item
from .prompt import Demonstration, rule_rationale


def pair_text(query: str, item: Item) -> str:
    return f"{query} | {item.title}"


class DemoBank:
    def __init__(self, seed: list[tuple[str, Item, str]], k: int, embedder, brands=None):
        """seed: (query, item, human grade) triples; k demonstrations per judged pair, nearest first."""
        self.k = min(k, len(seed))
        self.demos = [Demonstration(q, it, rule_rationale(q, it, g, brands).text()) for q, it, g in seed]
        self.keys = {(q, it.item_id) for q, it, _ in seed}
        self.embedder = embedder
        self.vectors = embedder.embed([pair_text(q, it) for q, it, _ in seed]) if seed else np.zeros((0, 1))
        self._cache: dict[str, np.ndarray] = {}

    def prepare(self, pairs: list[tuple[str, Item]]) -> None:
        """Embed the pairs to be judged in one batch (judge() calls this before building prompts)."""
        texts = [t for t in {pair_text(q, it) for q, it in pairs} if t not in self._cache]
        if texts:
            for t, v in zip(texts, self.embedder.embed(texts)):
                self._cache[t] = v

    def __call__(self, query: str, item: Item) -> list[Demonstration]:
        """The k nearest seed pairs, most similar last (closest to the pair in the prompt); a seed pair
        is never its own demonstration."""
        if self.k == 0:
            return []
        text = pair_text(query, item)
        if text not in self._cache:
            self.prepare([(query, item)])
        sims = self.vectors @ self._cache[text]
        order = [i for i in np.argsort(-sims, kind="stable")
                 if (self.demos[i].query, self.demos[i].item.item_id) != (query, item.item_id)][:self.k]
        return [self.demos[i] for i in reversed(order)]
