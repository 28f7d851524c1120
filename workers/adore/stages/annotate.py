"""annotate: the aligned teacher labels the unlabelled pool.

Each record keeps the grade, the probabilities over the grade scheme, the
rationale and the key attributes (the teacher's own, as parsed from its
rationale, and the fast extractor's). Rationales that do not parse are
kept with grade null and counted; they are never turned into a grade.
"""
from __future__ import annotations

import time
from collections import Counter

from .. import attributes as attr
from ..data.contract import write_jsonl
from ..teacher.prompt import PREFILL, parse
from . import common
from .base import StageContext, StageError


def run(ctx: StageContext) -> dict:
    t = ctx.spec.teacher
    items = common.catalogue(ctx)
    pool = common.pairs(ctx, "pool")
    brands = common.brands(items)
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), items)
    start = time.time()
    judged = teacher.judge([(p.query, items[p.item_id]) for p in pool], t.max_new_tokens, t.batch_size,
                           progress="annotate", max_prompt_tokens=t.max_prompt_tokens)
    seconds = time.time() - start
    records = []
    for p, j in zip(pool, judged):
        item = items[p.item_id]
        rec = {"query": p.query, "item_id": p.item_id, "grade": j.grade, "probs": j.probs,
               "rationale": j.rationale,
               "query_attributes": attr.extract(p.query, brands=brands),
               "item_attributes": attr.extract(item.title, item.attributes, brands)}
        if j.grade is not None:
            r = parse(j.rationale.removeprefix(PREFILL), ctx.spec.grades)
            rec["teacher_attributes"] = {"query": r.query_attributes, "item": r.item_attributes,
                                         "comparison": r.comparison}
        else:
            rec["error"] = j.error
        records.append(rec)
    write_jsonl(ctx.out / "annotations.jsonl", records)
    parsed = [r for r in records if r["grade"] is not None]
    if not parsed:
        raise StageError(f"annotate: none of {len(records)} rationales parsed; the teacher did not learn the "
                         "rationale format (raise stages.sft.epochs or the seed size)")
    return {"pairs": len(records), "parsed": len(parsed), "unparsed": len(records) - len(parsed),
            "pairsPerSecond": round(len(records) / seconds, 3), "grades": dict(Counter(r["grade"] for r in parsed)),
            "meanConfidence": round(sum(max(r["probs"]) for r in parsed) / len(parsed), 4),
            "batchSize": t.batch_size, "maxNewTokens": t.max_new_tokens}
