"""How good were the teacher's labels? Compare a round's annotations with the
hidden human labels of the same training pairs (which no stage trains on).

    python benchmarks/teacher_pool_quality.py WORKDIR

Prints accuracy, macro-F1 and AUC (relevant = above the lowest grade, scored
by the expected grade) of the teacher on the annotated pool, and the align
stage's agreement counts with (simulated) behaviour.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def main(workdir: str) -> int:
    d = Path(workdir) / "stages"
    grades = json.loads((d / "evaluate" / "report.json").read_text())["grades"]
    truth = {(r["query"], r["item_id"]): r["grade"]
             for r in map(json.loads, (d / "prepare" / "train_labels.jsonl").read_text().splitlines())}
    ann = [a for a in map(json.loads, (d / "annotate" / "annotations.jsonl").read_text().splitlines()) if a["grade"]]
    probs = np.array([a["probs"] for a in ann])
    y = np.array([grades.index(truth[(a["query"], a["item_id"])]) for a in ann])
    pred = probs.argmax(1)
    print(f"teacher on the annotated pool ({len(ann)} parsed pairs): accuracy {accuracy_score(y, pred):.3f}, "
          f"macro-F1 {f1_score(y, pred, average='macro'):.3f}, "
          f"AUC {roc_auc_score(y > 0, probs @ np.arange(len(grades))):.3f}")
    shares = np.bincount(pred, minlength=len(grades)) / len(pred)
    print("predicted grade shares:", {g: round(float(s), 3) for g, s in zip(grades, shares)})
    align = json.loads((d / "align" / "metrics.json").read_text())
    print("align vs behaviour:", {k: align.get(k) for k in ("judgedPairs", "agree", "tooStrict", "tooLenient", "unparsed", "other")})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
