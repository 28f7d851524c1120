"""evaluate: the student and BM25 on held-out human labels, plus the adversarial set.

Writes report.json (machine-readable, read by promote and the status) and
report.md (for people).
"""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..bm25 import BM25Baseline
from ..data.contract import read_catalogue, read_pairs
from ..metrics import graded_report
from ..student.model import Student, expected_grade
from . import common
from .base import StageContext


def run(ctx: StageContext) -> dict:
    grades = ctx.spec.grades
    k = ctx.spec.stages.evaluate.ndcg_k
    items = common.catalogue(ctx)
    dev = common.pairs(ctx, "dev")
    seed = common.pairs(ctx, "seed")
    student = Student.load(ctx.input("distill", "student"))
    queries = [p.query for p in dev]
    gold = np.array([grades.index(p.grade) for p in dev])
    has_raw = all(p.score is not None for p in dev)
    raw_gold = np.array([p.score for p in dev]) if has_raw else None

    probs = student.predict(queries, [items[p.item_id].title for p in dev], [items[p.item_id].attributes for p in dev])
    s_scores = expected_grade(probs)
    student_report = graded_report(queries, gold, probs.argmax(1), s_scores, grades, k, raw_gold,
                                   1 + s_scores if has_raw else None)

    bm25 = BM25Baseline({i: it.title for i, it in items.items()})
    bm25.fit_thresholds(bm25.score([p.query for p in seed], [p.item_id for p in seed]),
                        np.array([grades.index(p.grade) for p in seed]), len(grades))
    b_scores = bm25.score(queries, [p.item_id for p in dev])
    b_pred = bm25.grades(b_scores)
    bm25_report = graded_report(queries, gold, b_pred, b_scores, grades, k, raw_gold, 1 + b_pred if has_raw else None)

    adv_items = {**items, **read_catalogue(ctx.input("synthesize", "adversarial_catalogue.jsonl"))} \
        if ctx.input("synthesize", "adversarial_catalogue.jsonl").stat().st_size else items
    adv = read_pairs(ctx.input("synthesize", "adversarial_test.jsonl"), grades, adv_items)
    adversarial = {}
    if adv:
        a_probs = student.predict([p.query for p in adv], [adv_items[p.item_id].title for p in adv],
                                  [adv_items[p.item_id].attributes for p in adv])
        hits = defaultdict(list)
        for p, pr in zip(adv, a_probs.argmax(1)):
            hits[p.synthetic["type"]].append(int(pr == grades.index(p.grade)))
        adversarial = {"pairs": len(adv), "accuracy": round(float(np.mean([h for v in hits.values() for h in v])), 4),
                       "perType": {t: round(float(np.mean(v)), 4) for t, v in sorted(hits.items())}}

    behaviour = json.loads(ctx.input("align", "metrics.json").read_text())
    report = {
        "round": ctx.round.metadata.name, "grades": grades, "devPairs": len(dev),
        "devQueries": len(set(queries)), "student": student_report, "bm25": bm25_report,
        "adversarial": adversarial, "behaviour": behaviour.get("behaviour"),
        "humanLabelsUsedForTraining": len(seed),
    }
    atomic_write_json(ctx.out / "report.json", report)
    atomic_write_text(ctx.out / "report.md", render_markdown(report, k))
    return {"macroF1": student_report["macroF1"], "accuracy": student_report["accuracy"],
            f"ndcg@{k}": student_report[f"ndcg@{k}"], "bm25MacroF1": bm25_report["macroF1"],
            f"bm25Ndcg@{k}": bm25_report[f"ndcg@{k}"], "adversarialAccuracy": adversarial.get("accuracy")}


def render_markdown(r: dict, k: int) -> str:
    cols = ["accuracy", "macroF1", f"ndcg@{k}", "auc", "qwk", "rmse"]
    lines = [f"# Round {r['round']}: evaluation", "",
             f"Held-out human labels: {r['devPairs']} pairs over {r['devQueries']} queries. "
             f"Human labels used for training: {r['humanLabelsUsedForTraining']} (the teacher's SFT seed).", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in ("student", "bm25"):
        lines.append(f"| {name} | " + " | ".join(_fmt(r[name].get(c)) for c in cols) + " |")
    lines += ["", "Per-grade F1 (student): " + ", ".join(f"{g} {v:.3f}" for g, v in r["student"]["perGradeF1"].items())]
    if r["adversarial"]:
        a = r["adversarial"]
        lines += ["", f"Adversarial test set ({a['pairs']} near-miss pairs from dev): accuracy {a['accuracy']:.3f}; "
                  + ", ".join(f"{t} {v:.3f}" for t, v in a["perType"].items())]
    if r.get("behaviour"):
        lines += ["", f"Alignment used {r['behaviour']}."]
    return "\n".join(lines) + "\n"


def _fmt(v):
    return "–" if v is None else f"{v:.4f}"
