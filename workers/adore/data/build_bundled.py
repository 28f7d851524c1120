"""Build the bundled default dataset from the ESCI sample (Apache-2.0).

    python -m adore.data.build_bundled ../shared/data/esci-sample/products_exact.csv

The ESCI sample holds only exact (E) pairs. The demo needs all three grades,
so this script adds, deterministically:
- partial pairs: items of a *related* query (same product type, another brand,
  model or size; the hand-made groups below), which the rules grade partial;
- irrelevant pairs: items of unrelated queries.
Those two grades are therefore constructed labels, not human ones; the
bundled README says so. Real evaluations use Home Depot or CrowdFlower.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from .contract import Pair, write_jsonl
from .importers import BUNDLED_DIR, import_esci

RELATED_QUERIES = [
    {"incase macbook air 13 inch case", "mac book pro 13 cover"},
    {"yeti tall thin can cooler", "brumate hopsulator slim"},
    {"adidas original superstar women", "saucony jazz mens olive"},
    {"6 dining chairs", "square table with chairs"},
]


def build(csv_path: Path, out_dir: Path = BUNDLED_DIR, seed: int = 0) -> tuple[int, int]:
    catalogue, exact, _ = import_esci(csv_path)
    rng = random.Random(seed)
    by_query: dict[str, list[str]] = {}
    for p in exact:
        by_query.setdefault(p.query, []).append(p.item_id)
    queries = sorted(by_query)
    pairs = [Pair(p.query, p.item_id, "exact") for p in exact]
    for q in queries:
        group = next((g for g in RELATED_QUERIES if q in g), set())
        related = sorted({i for r in group - {q} for i in by_query.get(r, [])} - set(by_query[q]))
        for item_id in rng.sample(related, min(6, len(related))):
            pairs.append(Pair(q, item_id, "partial"))
        unrelated = sorted({i for r in queries if r not in group and r != q for i in by_query[r]} - set(by_query[q]))
        for item_id in rng.sample(unrelated, max(4, len(by_query[q]))):
            pairs.append(Pair(q, item_id, "irrelevant"))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "catalogue.jsonl", (catalogue[k] for k in sorted(catalogue)))
    write_jsonl(out_dir / "pairs.jsonl", pairs)
    return len(catalogue), len(pairs)


if __name__ == "__main__":
    n_items, n_pairs = build(Path(sys.argv[1]))
    print(f"wrote {n_items} items and {n_pairs} pairs to {BUNDLED_DIR}")
