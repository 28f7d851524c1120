"""prepare: import the dataset into the contract and split it by query.

Outputs (data contract, JSONL):
  catalogue.jsonl    every item referenced
  seed.jsonl         human-labelled seed for the teacher's SFT (small)
  train_labels.jsonl training pairs with human labels, used only to simulate
                     behaviour when no log is given (never shown to a model)
  pool.jsonl         unlabelled training pairs for the teacher to annotate
  evidence_pool.jsonl further unlabelled training pairs, labelled from the evidence
                     alone (dataset.evidencePoolSize; empty by default)
  dev.jsonl          held-out human-labelled pairs for evaluation

With spec.previousRound and promotion.requestLog, the pairs the previous
round's student served with low confidence enter the pool first
(stages.inherit.served_pairs; metrics servedPairs and served).
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter

from ..data.contract import Pair, write_jsonl
from ..data.importers import import_dataset
from . import inherit
from .base import StageContext, StageError


def _query_bucket(query: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}|{query}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_by_query(pairs: list[Pair], dev_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    train = [p for p in pairs if _query_bucket(p.query, seed) >= dev_fraction]
    dev = [p for p in pairs if _query_bucket(p.query, seed) < dev_fraction]
    return train, dev


def sample_whole_queries(pairs: list[Pair], n: int, rng: random.Random) -> list[Pair]:
    """Whole queries, in an order drawn with rng, until at least n pairs; grouped by query in that order."""
    by_query: dict[str, list[Pair]] = {}
    for p in pairs:
        by_query.setdefault(p.query, []).append(p)
    queries = sorted(by_query)
    rng.shuffle(queries)
    out: list[Pair] = []
    for q in queries:
        if len(out) >= n:
            break
        out += by_query[q]
    return out


def cap_per_query(pairs: list[Pair], cap: int, rng: random.Random) -> list[Pair]:
    """At most cap pairs of each query, drawn with rng; the input order is kept."""
    by_query: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_query.setdefault(p.query, []).append(i)
    keep: set[int] = set()
    for q in sorted(by_query):
        idx = by_query[q]
        keep.update(idx if len(idx) <= cap else rng.sample(idx, cap))
    return [p for i, p in enumerate(pairs) if i in keep]


def run(ctx: StageContext) -> dict:
    ds = ctx.spec.dataset
    path = ctx.resolve(ds.path) if ds.path else None
    catalogue, pairs = import_dataset(ds.source, path, ctx.spec.grades)
    labelled = [p for p in pairs if p.grade is not None]
    if not labelled:
        raise StageError(f"dataset {ds.source!r} has no labelled pairs: a dev split needs human grades")
    rng = random.Random(ds.split_seed)
    if ds.max_pairs_per_query:
        pairs = cap_per_query(pairs, ds.max_pairs_per_query, rng)
    if ds.max_pairs and len(pairs) > ds.max_pairs:
        keep = {p.query for p in sample_whole_queries(pairs, ds.max_pairs, rng)}
        pairs = [p for p in pairs if p.query in keep]
    train, dev = split_by_query(pairs, ds.dev_fraction, ds.split_seed)
    dev = [p for p in dev if p.grade is not None]
    if not dev or not train:
        raise StageError(f"spec.dataset.devFraction={ds.dev_fraction} leaves an empty {'dev' if not dev else 'train'} split")
    shuffled = train[:]
    rng.shuffle(shuffled)
    labelled_train = [p for p in shuffled if p.grade is not None]
    n_seed = min(ds.max_seed_pairs, max(1, round(ds.seed_fraction * len(train))), len(labelled_train))
    seed = labelled_train[:n_seed]
    seed_keys = {(p.query, p.item_id) for p in seed}
    # The previous round's low-confidence served pairs come first: the candidates the loop exists for.
    limit = ds.pool_size if ds.max_served_pairs is None else ds.max_served_pairs
    served, new_items, served_info = inherit.served_pairs(
        ctx, catalogue, lambda q: _query_bucket(q, ds.split_seed) < ds.dev_fraction, set(seed_keys), limit)
    served_keys = {(p.query, p.item_id) for p in served}
    taken = seed_keys | served_keys
    pool = served + [Pair(p.query, p.item_id, query_id=p.query_id) for p in shuffled
                     if (p.query, p.item_id) not in taken]
    pool, evidence_pool = pool[:ds.pool_size], pool[ds.pool_size:ds.pool_size + ds.evidence_pool_size]
    catalogue = {**catalogue, **new_items}
    used = {p.item_id for p in train} | {p.item_id for p in dev} | {p.item_id for p in pool + evidence_pool}
    write_jsonl(ctx.out / "catalogue.jsonl", (catalogue[i] for i in sorted(used)))
    write_jsonl(ctx.out / "seed.jsonl", seed)
    write_jsonl(ctx.out / "train_labels.jsonl", [p for p in train if p.grade is not None])
    write_jsonl(ctx.out / "pool.jsonl", pool)
    write_jsonl(ctx.out / "evidence_pool.jsonl", evidence_pool)
    write_jsonl(ctx.out / "dev.jsonl", dev)
    return {
        "source": ds.source, "items": len(used), "trainPairs": len(train), "devPairs": len(dev),
        "seedPairs": len(seed), "poolPairs": len(pool), "evidencePoolPairs": len(evidence_pool),
        "trainQueries": len({p.query for p in train}), "devQueries": len({p.query for p in dev}),
        "devGrades": dict(Counter(p.grade for p in dev)),
        "humanLabelsUsedForTraining": len(seed),
        "servedPairs": sum((p.query, p.item_id) in served_keys for p in pool), **({"served": served_info} if served_info else {}),
    }
