"""How steady is the seed correction on a 32-pair seed? Equal-weight prior against free weights.

    python benchmarks/correction_seeds.py WORKDIR [--draws 20] [--seed-pairs 32]

WORKDIR is a round's workdir with a finished annotate stage whose pool pairs have hidden human
labels (prepare's train_labels.jsonl; no stage trains on them). Each draw takes SEED_PAIRS random
pool pairs as the seed (their human grades), fits the ordinal correction on their teacher
probabilities and evidence features (annotations.jsonl: teacher_probs, rule_features) twice,
  prior: as annotate fits it (weights pulled towards equal, teacher.correction.DEVIATION_PULL),
  free:  the same fit without the pull (DEVIATION_PULL 0),
and scores the corrected labels of the other pool pairs against their human grades (AUC:
relevant = above the lowest grade, by the expected grade; Spearman). Prints mean, sd and the
worst draw of each.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score


def load(workdir: Path):
    from teacher_pool_quality import grades_of  # noqa: E402 - the benchmark beside this one

    grades = grades_of(workdir)
    rows = lambda p: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]  # noqa: E731
    human = {(r["query"], r["item_id"]): grades.index(r["grade"]) for r in rows(workdir / "stages/prepare/train_labels.jsonl")}
    ann = [a for a in rows(workdir / "stages/annotate/annotations.jsonl")
           if a.get("teacher_probs") and (a["query"], a["item_id"]) in human]
    names = list(ann[0].get("rule_features") or {})
    probs = np.array([a["teacher_probs"] for a in ann])
    x = np.array([[a["rule_features"][n] for n in names] for a in ann]) if names else None
    y = np.array([human[(a["query"], a["item_id"])] for a in ann])
    return grades, names, probs, x, y


def draw(rng, n: int, k: int, y: np.ndarray) -> np.ndarray:
    """k pool indices with at least two grades among them (a seed of one grade fits nothing)."""
    while True:
        idx = rng.choice(n, size=k, replace=False)
        if len(set(y[idx])) > 1:
            return idx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seed-pairs", type=int, default=32)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adore.hardware import cpu_summary
    from adore.metrics import expected_grade
    from adore.teacher import correction

    grades, names, probs, x, y = load(args.workdir)
    rng = np.random.default_rng(0)
    pull = correction.DEVIATION_PULL
    out: dict[str, list[tuple[float, float]]] = {"prior": [], "free": []}
    for _ in range(args.draws):
        seed = draw(rng, len(y), args.seed_pairs, y)
        rest = np.setdiff1d(np.arange(len(y)), seed)
        for how, strength in (("prior", pull), ("free", 0.0)):
            correction.DEVIATION_PULL = strength
            fit = correction.fit(probs[seed], y[seed], None if x is None else x[seed], names, len(grades),
                                 "ordinal", (probs, x))
            score = expected_grade(fit.apply(probs[rest], None if x is None else x[rest]))
            out[how].append((roc_auc_score(y[rest] > 0, score), spearmanr(score, y[rest]).correlation))
    correction.DEVIATION_PULL = pull
    print(f"# {args.workdir}: {len(y)} annotated pool pairs with hidden labels, signals teacher + {names}, "
          f"{args.draws} draws of {args.seed_pairs} seed pairs; {cpu_summary()}")
    print("| weights | AUC mean | AUC sd | AUC worst | Spearman mean | Spearman sd |")
    print("|---|---|---|---|---|---|")
    for how, v in out.items():
        a = np.array(v)
        print(f"| {how} | {a[:, 0].mean():.3f} | {a[:, 0].std():.3f} | {a[:, 0].min():.3f} | "
              f"{a[:, 1].mean():.3f} | {a[:, 1].std():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
