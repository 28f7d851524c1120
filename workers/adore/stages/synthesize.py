"""synthesize: adversarial near-miss pairs for training and a separate test set.

Training pairs come from relevant *training* pairs (the teacher's top-grade
annotations and the human seed); the adversarial test set comes from dev
pairs only, with another seed, so no synthetic training pair shares a
source with it.
"""
from __future__ import annotations

from ..data.contract import Pair, read_records, write_jsonl
from ..synthesis import generate, to_records
from . import common
from .base import StageContext, StageError


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.synthesize
    grades = ctx.spec.grades
    items = common.catalogue(ctx)
    seed = common.pairs(ctx, "seed")
    annotations = read_records(ctx.input("annotate", "annotations.jsonl"))
    sources = [p for p in seed if p.grade == grades[-1]]
    sources += [Pair(a["query"], a["item_id"], a["grade"]) for a in annotations if a["grade"] == grades[-1]]
    dev_sources = [p for p in common.pairs(ctx, "dev") if p.grade == grades[-1]]
    if not sources:
        raise StageError("synthesize: no relevant training pair to derive near misses from "
                         f"(no {grades[-1]!r} grade in the seed or the teacher's annotations)")
    per_type = {t: cfg.pairs_per_type for t in cfg.error_types}
    train_near, train_counts = generate(sources, items, grades, per_type, cfg.seed)
    test_near, test_counts = generate(dev_sources, items, grades, per_type, cfg.seed + 1000)
    train_pairs, train_items = to_records(train_near)
    test_pairs, test_items = to_records(test_near)
    write_jsonl(ctx.out / "synthetic.jsonl", train_pairs)
    write_jsonl(ctx.out / "synthetic_catalogue.jsonl", train_items)
    write_jsonl(ctx.out / "adversarial_test.jsonl", test_pairs)
    write_jsonl(ctx.out / "adversarial_catalogue.jsonl", test_items)
    return {"trainSources": len(sources), "syntheticPairs": len(train_pairs), "adversarialTestPairs": len(test_pairs),
            "perType": {k: v["generated"] for k, v in train_counts.items()},
            "testPerType": {k: v["generated"] for k, v in test_counts.items()},
            "teacherCheck": "not yet run (pairs carry rule-implied grades)"}
