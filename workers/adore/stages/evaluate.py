"""evaluate: the student and BM25 on held-out human labels, plus the adversarial set.

Writes report.json (machine-readable, read by promote and the status) and
report.md (for people).
"""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from .. import error_profile
from ..atomic import atomic_write_json, atomic_write_text
from ..bm25 import BM25Baseline
from ..data.contract import read_catalogue, read_pairs
from ..metrics import graded_report
from ..student.model import Student
from . import common
from .base import StageContext, stage_dir
from .evaluate_extras import calibration_section, previous_student_report, score_student, write_html


def run(ctx: StageContext) -> dict:
    grades = ctx.spec.grades
    k = ctx.spec.stages.evaluate.ndcg_k
    items = common.catalogue(ctx)
    dev = common.pairs(ctx, "dev")
    seed = common.pairs(ctx, "seed")
    student = Student.load(ctx.input("distill", "student")).to(ctx.hardware)
    queries = [p.query for p in dev]
    gold = common.gold(dev, grades)
    has_raw = all(p.score is not None for p in dev)
    raw_gold = np.array([p.score for p in dev]) if has_raw else None

    probs, s_scores, student_report = score_student(student, dev, items, gold, grades, k, raw_gold)
    pred = student.grade(probs)

    bm25 = BM25Baseline({i: it.title for i, it in items.items()})
    bm25.fit_thresholds(bm25.score([p.query for p in seed], [p.item_id for p in seed]),
                        common.gold(seed, grades), len(grades))
    b_scores = bm25.score(queries, [p.item_id for p in dev])
    b_pred = bm25.grades(b_scores)
    bm25_report = graded_report(queries, gold, b_pred, b_scores, grades, k, raw_gold, 1 + b_pred if has_raw else None)

    adv_items = {**items, **read_catalogue(ctx.input("synthesize", "adversarial_catalogue.jsonl"))} \
        if ctx.input("synthesize", "adversarial_catalogue.jsonl").stat().st_size else items
    adv = read_pairs(ctx.input("synthesize", "adversarial_test.jsonl"), grades, adv_items)
    adversarial = {}
    if adv:
        a_probs = student.predict(*common.columns(adv, adv_items))
        hits = defaultdict(list)
        for p, pr in zip(adv, student.grade(a_probs)):
            hits[p.synthetic["type"]].append(int(pr == grades.index(p.grade)))
        adversarial = {"pairs": len(adv), "accuracy": round(float(np.mean([h for v in hits.values() for h in v])), 4),
                       "perType": {t: round(float(np.mean(v)), 4) for t, v in sorted(hits.items())},
                       "pairsPerType": {t: len(v) for t, v in sorted(hits.items())}}

    # The student's errors on dev by type: the next round's synthesis mix follows this profile.
    profile = error_profile.profile([{"query": p.query, "title": items[p.item_id].title, "attributes": items[p.item_id].attributes,
                               "gold": p.grade, "pred": grades[i]} for p, i in zip(dev, pred)],
                             "student on dev (human labels)", list(ctx.spec.stages.synthesize.error_types),
                             common.brands(items))
    atomic_write_json(ctx.out / "error_profile.json", profile)

    bins = ctx.spec.stages.evaluate.calibration_bins
    student_report["ece"], reliability, confusion = calibration_section(probs, gold, pred, bins)
    previous = previous_student_report(ctx, dev, items, gold, k, raw_gold)

    behaviour = json.loads(ctx.input("align", "metrics.json").read_text())
    report = {
        "round": ctx.round.metadata.name, "grades": grades, "devPairs": len(dev),
        "devQueries": len(set(queries)), "student": student_report, "bm25": bm25_report,
        "adversarial": adversarial, "behaviour": behaviour.get("behaviour"),
        "humanLabelsUsedForTraining": len(seed), "errorProfile": error_profile.summary(profile),
    }
    report.update({"previousStudent": previous, "confusion": confusion, "calibration": student.meta.calibration})
    html_path = None
    if ctx.spec.stages.evaluate.html_report:
        html_path = stage_dir(ctx.workdir, "evaluate") / "report.html"  # where it lies once the stage completes
        report["reportHtml"] = str(html_path)
        write_html(ctx.out / "report.html", report, {"gold": gold, "studentScores": s_scores, "bm25Scores": b_scores,
                   "confusion": confusion, "reliability": {"student (calibrated)": reliability}}, k)
    atomic_write_json(ctx.out / "report.json", report)
    atomic_write_text(ctx.out / "report.md", render_markdown(report, k))
    return {"macroF1": student_report["macroF1"], "accuracy": student_report["accuracy"],
            f"ndcg@{k}": student_report[f"ndcg@{k}"], "bm25MacroF1": bm25_report["macroF1"],
            f"bm25Ndcg@{k}": bm25_report[f"ndcg@{k}"], "adversarialAccuracy": adversarial.get("accuracy"),
            "adversarialPerType": adversarial.get("perType"), "errorProfile": error_profile.summary(profile),
            "ece": student_report["ece"], "reportHtml": str(html_path) if html_path else None,
            "devPairs": len(dev), "adversarialPairs": adversarial.get("pairs", 0)}


def render_markdown(r: dict, k: int) -> str:
    cols = ["accuracy", "macroF1", f"ndcg@{k}", "auc", "qwk", "rmse", "ece"]
    lines = [f"# Round {r['round']}: evaluation", "",
             f"Held-out human labels: {r['devPairs']} pairs over {r['devQueries']} queries. "
             f"Human labels used for training: {r['humanLabelsUsedForTraining']} (the teacher's SFT seed).", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in [n for n in ("student", "previousStudent", "bm25") if r.get(n)]:
        lines.append(f"| {name} | " + " | ".join(_fmt(r[name].get(c)) for c in cols) + " |")
    lines += ["", "Per-grade F1 (student): " + ", ".join(f"{g} {v:.3f}" for g, v in r["student"]["perGradeF1"].items())]
    if r["adversarial"]:
        a = r["adversarial"]
        lines += ["", f"Adversarial test set ({a['pairs']} near-miss pairs from dev): accuracy {a['accuracy']:.3f}; "
                  + ", ".join(f"{t} {v:.3f}" for t, v in a["perType"].items())]
    prof = r.get("errorProfile")
    if prof:
        lines += ["", f"Student error profile on dev (error rate {_fmt(prof['errorRate'])}): "
                  + ", ".join(f"{t} {v['errors']} ({_fmt(v['rate'])})" for t, v in prof["perType"].items())]
    if r.get("behaviour"):
        lines += ["", f"Alignment used {r['behaviour']}."]
    if r.get("reportHtml"):
        lines += ["", f"Plots (confusion matrix, per-grade F1, error types, calibration, scores): {r['reportHtml']}"]
    return "\n".join(lines) + "\n"


def _fmt(v):
    return "–" if v is None else f"{v:.4f}"
