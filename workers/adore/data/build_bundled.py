"""Build the bundled default dataset from the ESCI sample (Apache-2.0).

    python -m adore.data.build_bundled ../shared/data/esci-sample/products_exact.csv

The ESCI sample holds only exact (E) pairs. The demo needs all three grades and
negatives a word-matching ranker cannot sort out, so this script adds,
deterministically, for every query:
- partial: items of a *related* query (the same product type in another brand,
  model or size; the hand-made groups below), and its own exact items with one
  attribute the query names changed (another brand of the catalogue, another
  colour, another number: size or pack count);
- irrelevant, hard: the items of unrelated queries that share the most words
  with the query (a BM25 ranking of the other queries' titles: other products
  that look like a match to word overlap), and accessories made from its own
  exact items ("Replacement Cover for <title>": the rules grade an accessory
  irrelevant);
- irrelevant, easy: a few items of unrelated queries drawn at random.
Partial and irrelevant are therefore constructed labels, not human ones; the
bundled README says so. Real evaluations use Home Depot or CrowdFlower.
"""
from __future__ import annotations

import hashlib
import random
import re
import sys
from pathlib import Path

from .contract import Item, Pair, write_jsonl
from .importers import BUNDLED_DIR, import_esci

RELATED_QUERIES = [
    {"incase macbook air 13 inch case", "mac book pro 13 cover"},
    {"yeti tall thin can cooler", "brumate hopsulator slim"},
    {"adidas original superstar women", "saucony jazz mens olive"},
    {"6 dining chairs", "square table with chairs"},
]
ACCESSORIES = ["Replacement Cover for", "Carrying Case for", "Protective Sleeve for"]
COLOURS = ["black", "white", "red", "blue", "green", "yellow", "orange", "pink", "purple", "brown", "grey", "gray",
           "tan", "olive", "silver", "gold", "navy", "beige"]
PER_QUERY = {"related": 6, "swap": 3, "hard": 6, "accessory": 2, "easy": 2}


def _derived(item: Item, kind: str, title: str, attributes: dict) -> Item:
    digest = hashlib.sha1(f"{item.item_id}|{kind}|{title}".encode()).hexdigest()[:10]
    return Item(f"{item.item_id}-{kind}-{digest}", title, "", attributes)


def _swap(query: str, item: Item, brands: list[str], rng: random.Random) -> Item | None:
    """The item with one attribute the query names changed: its brand, a colour or a number (size, pack)."""
    brand = item.attributes.get("brand", "")
    if brand and brand.lower() in query and brand.lower() in item.title.lower():
        other = rng.choice([b for b in brands if b.lower() != brand.lower()])
        title = re.sub(re.escape(brand), other, item.title, count=1, flags=re.I)
        return _derived(item, "brand", title, {**item.attributes, "brand": other})
    words = set(re.findall(r"[a-z0-9]+", query))
    for colour in sorted(words & set(COLOURS)):
        if re.search(rf"\b{colour}\b", item.title, re.I):
            other = rng.choice([c for c in COLOURS if c not in words])
            title = re.sub(rf"\b{colour}\b", other.title(), item.title, count=1, flags=re.I)
            return _derived(item, "colour", title, {k: v for k, v in item.attributes.items() if k != "colour"})
    for number in sorted(w for w in words if w.isdigit()):
        if re.search(rf"\b{number}\b", item.title):
            title = re.sub(rf"\b{number}\b", str(int(number) * 2), item.title, count=1)
            return _derived(item, "size", title, dict(item.attributes))
    return None


def _words_overlap_ranking(query: str, candidates: list[str], titles: dict[str, str]) -> list[str]:
    from ..bm25 import BM25Baseline

    bm = BM25Baseline({i: titles[i] for i in candidates})
    scores = bm.score([query] * len(candidates), candidates)
    return [i for _, i in sorted(zip(-scores, candidates))]


def build(csv_path: Path, out_dir: Path = BUNDLED_DIR, seed: int = 0) -> tuple[int, int]:
    catalogue, exact, _ = import_esci(csv_path)
    rng = random.Random(seed)
    by_query: dict[str, list[str]] = {}
    for p in exact:
        by_query.setdefault(p.query, []).append(p.item_id)
    queries = sorted(by_query)
    brands = sorted({it.attributes["brand"] for it in catalogue.values() if it.attributes.get("brand")})
    titles = {i: it.title for i, it in catalogue.items()}
    pairs = [Pair(p.query, p.item_id, "exact") for p in exact]
    derived: dict[str, Item] = {}
    for q in queries:
        group = next((g for g in RELATED_QUERIES if q in g), {q})
        own = sorted(set(by_query[q]))
        related = sorted({i for r in group - {q} for i in by_query.get(r, [])} - set(own))
        for item_id in rng.sample(related, min(PER_QUERY["related"], len(related))):
            pairs.append(Pair(q, item_id, "partial"))
        swaps = 0
        for item in [catalogue[i] for i in rng.sample(own, len(own))]:
            swapped = _swap(q, item, brands, rng) if swaps < PER_QUERY["swap"] else None
            if swapped:
                derived[swapped.item_id] = swapped
                pairs.append(Pair(q, swapped.item_id, "partial"))
                swaps += 1
        for item_id in rng.sample(own, min(PER_QUERY["accessory"], len(own))):
            item = catalogue[item_id]
            acc = _derived(item, "accessory", f"{rng.choice(ACCESSORIES)} {item.title}", {})
            derived[acc.item_id] = acc
            pairs.append(Pair(q, acc.item_id, "irrelevant"))
        unrelated = sorted({i for r in queries if r not in group for i in by_query[r]} - set(own))
        hard = _words_overlap_ranking(q, unrelated, titles)[:PER_QUERY["hard"]]
        pairs += [Pair(q, i, "irrelevant") for i in hard]
        easy = sorted(set(unrelated) - set(hard))
        pairs += [Pair(q, i, "irrelevant") for i in rng.sample(easy, min(PER_QUERY["easy"], len(easy)))]
    out_dir.mkdir(parents=True, exist_ok=True)
    items = {**catalogue, **derived}
    write_jsonl(out_dir / "catalogue.jsonl", (items[k] for k in sorted(items)))
    write_jsonl(out_dir / "pairs.jsonl", pairs)
    return len(items), len(pairs)


if __name__ == "__main__":
    n_items, n_pairs = build(Path(sys.argv[1]))
    print(f"wrote {n_items} items and {n_pairs} pairs to {BUNDLED_DIR}")
