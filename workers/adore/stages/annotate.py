"""annotate: the aligned teacher labels the unlabelled pool.

Each record keeps the grade, the probabilities over the grade scheme, the
rationale and the key attributes (the teacher's own, as parsed from its
rationale, and the fast extractor's). Rationales that do not parse are
kept with grade null and counted; they are never turned into a grade.
"""
from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np

from .. import attributes as attr
from ..data.contract import write_jsonl
from ..teacher.calibration import FEATURE_SIGNS, RULE_FEATURES, apply_correction, fit_correction, nll, rule_features
from ..teacher.prompt import PREFILL, parse
from . import base, common
from .base import StageContext, StageError, merge_shards, stage_dir


def label(ctx: StageContext, shard: tuple[int, int] | None) -> dict:
    """Label the pool (or the pairs of one shard: every N-th pair from index i).

    The whole pool (not a shard) is then corrected with the seed-fitted grade offsets."""
    t = ctx.spec.teacher
    items = common.catalogue(ctx)
    pool = common.pairs(ctx, "pool")
    if shard is not None:
        pool = pool[shard[0]::shard[1]]
    brands = common.brands(items)
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), items)
    start = time.time()
    desc = "annotate" if shard is None else f"annotate shard {shard[0] + 1}/{shard[1]}"
    judged = teacher.judge([(p.query, items[p.item_id]) for p in pool], t.max_new_tokens, t.batch_size,
                           progress=desc, max_prompt_tokens=t.max_prompt_tokens)
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
    calibration = calibrate(ctx, records, teacher, items) if shard is None else {}
    write_jsonl(ctx.out / "annotations.jsonl", records)
    return {**summarise(records, seconds, t), **calibration}


def calibrate(ctx: StageContext, records: list[dict], teacher=None, items=None) -> dict:
    """Correct the teacher's grade prior and weigh in the evidence beside it (the key-attribute
    comparison, the bi-encoder cosine), fitted on the human seed (teacher/calibration.py).

    Records keep the teacher's own grade and probabilities as teacher_grade / teacher_probs,
    and the evidence as rule_features.
    """
    cfg, grades = ctx.spec.stages.annotate, ctx.spec.grades
    if not cfg.calibrate:
        return {"calibration": "off (stages.annotate.calibrate is false)"}
    seed = common.pairs(ctx, "seed")
    if len(seed) < MIN_SEED_FOR_CALIBRATION:
        return {"calibration": f"skipped: {len(seed)} seed pairs (< {MIN_SEED_FOR_CALIBRATION})"}
    items = common.catalogue(ctx) if items is None else items
    if teacher is None:
        teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), items)
    t = ctx.spec.teacher
    judged = teacher.judge([(p.query, items[p.item_id]) for p in seed], t.max_new_tokens, t.batch_size,
                           progress="annotate: judging the seed for calibration", max_prompt_tokens=t.max_prompt_tokens)
    ok = [(p, j) for p, j in zip(seed, judged) if j.probs is not None]
    if len(ok) < MIN_SEED_FOR_CALIBRATION:
        return {"calibration": f"skipped: only {len(ok)} seed rationales parsed"}
    probs = np.array([j.probs for _, j in ok])
    gold = common.gold([p for p, _ in ok], grades)
    brands = common.brands(items)
    names, x = evidence(ctx, items, evidence_rows([p for p, _ in ok], items, brands))
    offsets, weights = fit_evidence(ctx, probs, gold, x, names)
    fixed = apply_correction(probs, offsets, weights, x)
    live = [r for r in records if r["probs"] is not None]
    _, fx = evidence(ctx, items, [(r["query"], r["item_id"], r["query_attributes"], r["item_attributes"]) for r in live])
    for i, rec in enumerate(live):
        f = None if fx is None else fx[i]
        rec["teacher_grade"], rec["teacher_probs"] = rec["grade"], rec["probs"]
        rec["probs"] = [round(float(v), 6) for v in apply_correction(np.array(rec["probs"]), offsets, weights, f)]
        rec["grade"] = grades[int(np.argmax(rec["probs"]))]
        if f is not None:
            rec["rule_features"] = {n: round(float(v), 4) for n, v in zip(names, f)}
    evidence_only = label_from_evidence(ctx, items, brands, x, gold, names)
    kinds = [k for k, on in (("rule-evidence", cfg.rule_evidence), ("embedding-evidence", cfg.embedding_evidence)) if on]
    out = {"calibration": "grade offsets" + "".join(f" and {k} weights" for k in kinds) + " fitted on the human seed",
           "calibrationOffsets": {g: round(float(b), 4) for g, b in zip(grades, offsets)},
           "seedAccuracyBefore": round(float((probs.argmax(1) == gold).mean()), 4),
           "seedAccuracyAfter": round(float((fixed.argmax(1) == gold).mean()), 4),
           "seedNllBefore": round(nll(probs, gold), 4), "seedNllAfter": round(nll(fixed, gold), 4)}
    if names:
        out["evidenceWeights"] = cfg.evidence_weights
        out["ruleWeights"] = {g: dict(zip(names, (round(float(v), 4) for v in row))) for g, row in zip(grades, weights)}
    return {**out, **evidence_only}


EVIDENCE_LABELS = "evidence_labels.jsonl"


def label_from_evidence(ctx: StageContext, items, brands, seed_x, seed_gold, names) -> dict:
    """Label the evidence pool (prepare's evidence_pool.jsonl) from the evidence alone: the same
    fit on the seed as the teacher's correction, without the teacher's probabilities. Writes
    evidence_labels.jsonl (records shaped like annotations, source "evidence") for distill."""
    path = ctx.input("prepare", "evidence_pool.jsonl")
    pool = common.pairs(ctx, "evidence_pool") if path.is_file() else []
    if not pool or seed_x is None:
        if pool:
            return {"evidenceLabels": f"skipped: {len(pool)} evidence-pool pairs but no evidence is switched on"}
        return {}
    grades = ctx.spec.grades
    flat = np.full((len(seed_gold), len(grades)), 1.0 / len(grades))
    offsets, weights = fit_evidence(ctx, flat, seed_gold, seed_x, names)
    rows = evidence_rows(pool, items, brands)
    _, x = evidence(ctx, items, rows)
    probs = apply_correction(np.full((len(pool), len(grades)), 1.0 / len(grades)), offsets, weights, x)
    records = [{"query": q, "item_id": i, "grade": grades[int(np.argmax(pr))],
                "probs": [round(float(v), 6) for v in pr], "source": "evidence",
                "query_attributes": qa, "item_attributes": ia,
                "rule_features": {n: round(float(v), 4) for n, v in zip(names, f)}}
               for (q, i, qa, ia), pr, f in zip(rows, probs, x)]
    write_jsonl(ctx.out / EVIDENCE_LABELS, records)
    return {"evidenceLabels": len(records), "evidenceOnlyWeights": {n: round(float(v), 4) for n, v in zip(names, weights[-1] - weights[0])},
            "evidenceLabelGrades": dict(Counter(r["grade"] for r in records))}


EMBEDDING_FEATURE = "embeddingSimilarity"


def evidence_rows(pairs, items, brands) -> list[tuple]:
    """(query, item_id, query attributes, item attributes) per pair, as evidence() takes them."""
    return [(p.query, p.item_id, attr.extract(p.query, brands=brands),
             attr.extract(items[p.item_id].title, items[p.item_id].attributes, brands)) for p in pairs]


def fit_evidence(ctx: StageContext, probs, gold, x, names) -> tuple[np.ndarray, np.ndarray]:
    """fit_correction with the round's evidence weighing (evidenceWeights, FEATURE_SIGNS)."""
    return fit_correction(probs, gold, x, ordinal=ctx.spec.stages.annotate.evidence_weights == "ordinal",
                          signs=[FEATURE_SIGNS[n] for n in names])


def evidence(ctx: StageContext, items, rows) -> tuple[list[str], np.ndarray | None]:
    """The evidence the correction weighs beside the teacher, one row per (query, item_id, query
    attributes, item attributes): the fast extractor's key-attribute comparison (ruleEvidence)
    and the bi-encoder cosine of query and title (embeddingEvidence). (names, None) when off."""
    cfg = ctx.spec.stages.annotate
    names = (list(RULE_FEATURES) if cfg.rule_evidence else []) + ([EMBEDDING_FEATURE] if cfg.embedding_evidence else [])
    if not names:
        return names, None
    if not rows:
        return names, np.zeros((0, len(names)))
    cols = []
    if cfg.rule_evidence:
        cols.append(np.array([rule_features(q, items[i].title, qa, ia) for q, i, qa, ia in rows]).reshape(len(rows), -1))
    if cfg.embedding_evidence:
        from ..models import resolve
        from ..similarity import embedder

        enc = embedder(resolve(cfg.embedding_evidence, ctx.resolve(".")))
        cols.append(enc.cosine([r[0] for r in rows], [items[r[1]].title for r in rows]).reshape(-1, 1))
    return names, np.hstack(cols)


MIN_SEED_FOR_CALIBRATION = 4


def summarise(records: list[dict], seconds: float, t) -> dict:
    parsed = [r for r in records if r["grade"] is not None]
    if records and not parsed:
        raise StageError(f"annotate: none of {len(records)} rationales parsed; the teacher did not learn the "
                         "rationale format (raise stages.sft.epochs or the seed size)")
    return {"pairs": len(records), "parsed": len(parsed), "unparsed": len(records) - len(parsed),
            "labelSeconds": round(seconds, 2), "pairsPerSecond": round(len(records) / max(seconds, 1e-9), 3),
            "grades": dict(Counter(r["grade"] for r in parsed)),
            "meanConfidence": round(sum(max(r["probs"]) for r in parsed) / len(parsed), 4) if parsed else None,
            "batchSize": t.batch_size, "maxNewTokens": t.max_new_tokens}


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' with 0 <= i < N (the form `adore stage annotate --shard` takes)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < N")
    return i, n


def run(ctx: StageContext) -> dict:
    """One shard: everything. Several: run the shards that are not complete yet, then merge them in pool order."""
    from . import BY_NAME

    n = ctx.spec.stages.annotate.shards
    if n == 1:
        return label(ctx, None)
    shards = [shard_stage(BY_NAME["annotate"], i, n) for i in range(n)]
    records = merge_shards(ctx, shards, "annotations.jsonl")
    calibration = calibrate(ctx, records)
    write_jsonl(ctx.out / "annotations.jsonl", records)
    seconds = sum(json.loads((stage_dir(ctx.workdir, s.name) / "metrics.json").read_text())["labelSeconds"] for s in shards)
    return {**summarise(records, seconds, ctx.spec.teacher), "shards": n, **calibration}


def shard_stage(annotate, i: int, n: int):
    """The Stage of one shard: labels every N-th pool pair from index i."""
    return base.shard_stage(annotate, i, n, lambda ctx: label(ctx, (i, n)))
