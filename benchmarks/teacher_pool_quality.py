"""How good were the teacher's labels? Compare a round's annotations with the
hidden human labels of the same training pairs (which no stage trains on).

    python benchmarks/teacher_pool_quality.py WORKDIR [--student DIR ...]

Prints accuracy, macro-F1, AUC (relevant = above the lowest grade, scored by
the expected grade) and Spearman's rank correlation of the expected grade
with the human grade, for the labels the student learns from (after
annotate's seed-fitted correction) and for the teacher's own verdicts kept
beside them (teacher_probs), for the evidence-only labels of the evidence
pool when there are any, then the align stage's agreement counts with
(simulated) behaviour. With --student, each saved student (a distill
`student/` folder) scores the same pool pairs it was trained on: how closely
it learnt its labels (Spearman of its expected grade with the labels') beside
the bi-encoder cosine it started from, and both against the hidden grades.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def grades_of(workdir: Path) -> list[str]:
    report = workdir / "stages" / "evaluate" / "report.json"
    if report.is_file():
        return json.loads(report.read_text())["grades"]
    return yaml.safe_load((workdir / "round.yaml").read_text())["spec"]["grades"]


def quality(probs: np.ndarray, y: np.ndarray, n_grades: int) -> str:
    pred, score = probs.argmax(1), probs @ np.arange(n_grades)
    shares = np.bincount(pred, minlength=n_grades) / len(pred)
    return (f"accuracy {accuracy_score(y, pred):.3f}, macro-F1 {f1_score(y, pred, average='macro'):.3f}, "
            f"AUC {roc_auc_score(y > 0, score):.3f}, Spearman {spearmanr(score, y).correlation:.3f}, "
            f"predicted grade shares {[round(float(s), 3) for s in shares]}")


def student_fit(student_dir: Path, items: dict, ann: list[dict], y: np.ndarray, n_grades: int) -> str:
    """How closely a student learnt the pool's labels, next to the cosine it started from. items: the round's
    catalogue (prepare's catalogue.jsonl), by item id."""
    from adore import hardware
    from adore.metrics import expected_grade
    from adore.student.model import Student

    student = Student.load(student_dir).to(hardware.choose(hardware.found()))
    probs = student.predict([a["query"] for a in ann], [items[a["item_id"]].title for a in ann],
                            [items[a["item_id"]].attributes for a in ann])
    score = expected_grade(probs)
    # Each kind of label the pool carries (distill.labelSource: both = probs, teacher, evidence), whichever it learnt.
    kinds = {"both": [a["probs"] for a in ann]}
    for k in ("teacher", "evidence"):
        if all(k in a.get("labels", {}) for a in ann):
            kinds[k] = [a["labels"][k] for a in ann]
    cos = [a.get("rule_features", {}).get("embeddingSimilarity") for a in ann]
    fits = []
    for k, lab in kinds.items():
        label = np.array(lab) @ np.arange(n_grades)
        fit = f"{k} {spearmanr(score, label).correlation:.3f}"
        if None not in cos:  # the cosine it started from, against the same labels
            fit += f" (cosine {spearmanr(cos, label).correlation:.3f})"
        fits.append(fit)
    return (f"Spearman with the labels: {', '.join(fits)}; AUC {roc_auc_score(y > 0, score):.3f}, "
            f"Spearman with the hidden grades {spearmanr(score, y).correlation:.3f}")


def main(workdir: str, students: list[str]) -> int:
    w = Path(workdir)
    d = w / "stages"
    grades = grades_of(w)
    truth = {(r["query"], r["item_id"]): r["grade"]
             for r in map(json.loads, (d / "prepare" / "train_labels.jsonl").read_text().splitlines())}
    ann = [a for a in map(json.loads, (d / "annotate" / "annotations.jsonl").read_text().splitlines()) if a["grade"]]
    y = np.array([grades.index(truth[(a["query"], a["item_id"])]) for a in ann])
    print(f"annotated pool: {len(ann)} parsed pairs, grades {grades}")
    print("labels the student learns from:", quality(np.array([a["probs"] for a in ann]), y, len(grades)))
    if all("teacher_probs" in a for a in ann):
        print("the teacher's own verdicts:     ", quality(np.array([a["teacher_probs"] for a in ann]), y, len(grades)))
    if ann and all("rule_features" in a for a in ann):
        for f in ann[0]["rule_features"]:
            x = np.array([a["rule_features"][f] for a in ann])
            print(f"  one feature alone, {f}: AUC {roc_auc_score(y > 0, x):.3f}, Spearman {spearmanr(x, y).correlation:.3f}")
    if students:
        from adore.data.contract import read_catalogue

        items = read_catalogue(d / "prepare" / "catalogue.jsonl")  # once, for every student
    for sd in students:
        print(f"student {sd} on the pool it learnt:", student_fit(Path(sd), items, ann, y, len(grades)))
    evidence = d / "annotate" / "evidence_labels.jsonl"
    if evidence.is_file():
        ev = [a for a in map(json.loads, evidence.read_text().splitlines())]
        if ev:
            ye = np.array([grades.index(truth[(a["query"], a["item_id"])]) for a in ev])
            print(f"evidence-only labels ({len(ev)} pairs):", quality(np.array([a["probs"] for a in ev]), ye, len(grades)))
    m = json.loads((d / "annotate" / "metrics.json").read_text())
    if "ruleWeights" in m:
        print("rule-evidence weights:", m["ruleWeights"])
    align = json.loads((d / "align" / "metrics.json").read_text())
    print("align vs behaviour:", {k: align.get(k) for k in ("judgedPairs", "agree", "tooStrict", "tooLenient", "unparsed", "other")})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdir")
    ap.add_argument("--student", action="append", default=[], help="a saved student folder (repeatable)")
    a = ap.parse_args()
    raise SystemExit(main(a.workdir, a.student))
