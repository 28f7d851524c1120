"""Simulated shopper behaviour: a position-based click model.

Used only when a catalogue has no real log, and always marked `simulated`.
For every query the training pairs are shown in a random order (the rank r
is 1-based). Per impression:

    P(examine)  = 1 / r ** position_decay
    P(click)    = P(examine) * click_prob[grade]    * noise_c
    P(cart)     = P(click)   * purchase_prob[grade] * 1.5 (capped at 1)
    P(purchase) = P(click)   * purchase_prob[grade] * noise_p

noise_c and noise_p are drawn once per pair, uniformly in [1 - noise, 1 + noise].
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .data.contract import Behaviour, Pair
from .schema import ClickModelSpec

CLICK_MODEL_NOTE = ("behaviour SIMULATED from training labels with a position-based click model "
                    "(examination 1/rank^decay x grade-dependent click and purchase probabilities, with noise)")


def simulate(pairs: list[Pair], grades: list[str], cm: ClickModelSpec, seed: int = 0) -> list[Behaviour]:
    rng = np.random.default_rng(seed)
    by_query: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        if p.grade is not None:
            by_query[p.query].append(p)
    out = []
    for query in sorted(by_query):
        ranked = by_query[query]
        order = rng.permutation(len(ranked))
        for rank, idx in enumerate(order, 1):
            p = ranked[idx]
            g = grades.index(p.grade)
            examine = 1.0 / rank ** cm.position_decay
            nc, np_ = rng.uniform(1 - cm.noise, 1 + cm.noise, size=2)
            p_click = min(1.0, examine * cm.click_prob[g] * nc)
            clicks = int(rng.binomial(cm.impressions, p_click))
            p_buy = min(1.0, cm.purchase_prob[g] * np_)
            purchases = int(rng.binomial(clicks, p_buy))
            carts = max(purchases, int(rng.binomial(clicks, min(1.0, p_buy * 1.5))))
            out.append(Behaviour(query, p.item_id, cm.impressions, clicks, carts, purchases, simulated=True))
    return out
