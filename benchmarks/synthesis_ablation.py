"""Does error-type-aware synthesis help the student? Student trained with vs without synthetic pairs.

    nice -n 10 .venv/bin/python benchmarks/synthesis_ablation.py --dataset homedepot --max-pairs 600 --dev-pairs 600

On a slice of a real catalogue (split by query as the prepare stage does):
- `plain`:  the student trained on the training labels only;
- `round1`: the same labels + synthetic near misses, mix weighted by plain's dev error profile;
- `round2`: the same labels + synthetic near misses, mix weighted by round1's dev error profile.
Each is measured on the human-labelled dev slice (macro-F1, NDCG@10) and on an adversarial test
set generated from dev pairs only (another seed, an even budget per type, never trained on).

Labels: the training pairs' human grades as one-hot soft labels, a stand-in for the teacher's
labels (the 135M teacher labels about 1 pair/s here); the same labels go into every arm, so only
the synthetic pairs differ. Prints one JSON document (and writes it with --out).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from adore import error_profile  # noqa: E402
from adore.attributes import BrandLexicon  # noqa: E402
from adore.data.importers import import_dataset  # noqa: E402
from adore.metrics import graded_report  # noqa: E402
from adore.stages.prepare import sample_whole_queries, split_by_query  # noqa: E402
from adore.schema import DistillSpec  # noqa: E402
from adore.metrics import expected_grade  # noqa: E402
from adore.student.model import Student  # noqa: E402
from adore.student.train import Example, train  # noqa: E402
from adore.synthesis import generate, mix  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"homedepot": (DATA / "homedepot" / "pairs.csv", ["irrelevant", "partial", "exact"]),
        "crowdflower": (DATA / "crowdflower" / "pairs.csv", ["irrelevant", "somewhat", "mostly", "exact"])}
TYPES = ["category", "brand", "model", "colour", "size", "material", "quantity", "audience", "accessory", "negation"]


def fit(grades, brands, labelled, synthetic, items, args):
    student = Student.create("builtin:minilm-l6", grades, True, args.max_length, sorted(brands.brands))
    ex = [Example(p.query, items[p.item_id].title, items[p.item_id].attributes,
                  soft=[float(i == grades.index(p.grade)) for i in range(len(grades))]) for p in labelled]
    ex += [Example(n.query, n.item.title, n.item.attributes, hard=grades.index(n.grade)) for n in synthetic]
    train(student, ex, DistillSpec(epochs=args.epochs, batch_size=16, learning_rate=args.lr, synthetic_weight=1.0, seed=0),
          progress=False)
    return student


def measure(student, grades, dev, items, adv, brands, label):
    queries = [p.query for p in dev]
    probs = student.predict(queries, [items[p.item_id].title for p in dev], [items[p.item_id].attributes for p in dev])
    gold = np.array([grades.index(p.grade) for p in dev])
    rep = graded_report(queries, gold, probs.argmax(1), expected_grade(probs), grades, 10)
    prof = error_profile.profile([{"query": p.query, "title": items[p.item_id].title, "attributes": items[p.item_id].attributes,
                            "gold": p.grade, "pred": grades[i]} for p, i in zip(dev, probs.argmax(1))],
                          f"{label} student on dev", TYPES, brands)
    a_probs = student.predict([n.query for n in adv], [n.item.title for n in adv], [n.item.attributes for n in adv])
    hits = {}
    for n, pr in zip(adv, a_probs.argmax(1)):
        hits.setdefault(n.type, []).append(int(grades[pr] == n.grade))
    shares = np.bincount(probs.argmax(1), minlength=len(grades)) / len(dev)
    return {"dev": {**{k: rep[k] for k in ("accuracy", "macroF1", "ndcg@10", "qwk")},   # shares show a collapsed student
                    "predictedShares": {g: round(float(v), 3) for g, v in zip(grades, shares)}},
            "adversarial": {"accuracy": round(float(np.mean([h for v in hits.values() for h in v])), 4),
                            "perType": {t: round(float(np.mean(v)), 4) for t, v in sorted(hits.items())},
                            "pairsPerType": {t: len(v) for t, v in sorted(hits.items())}},
            "profile": error_profile.summary(prof), "_rates": error_profile.rates(prof)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(SETS), required=True)
    ap.add_argument("--max-pairs", type=int, default=600, help="training pairs (whole queries)")
    ap.add_argument("--dev-pairs", type=int, default=600, help="dev pairs (whole queries)")
    ap.add_argument("--per-type", type=int, default=24, help="mean synthetic training pairs per error type")
    ap.add_argument("--floor", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--rounds", type=int, default=2, choices=[1, 2], help="synthetic arms after plain")
    ap.add_argument("--out")
    args = ap.parse_args()
    path, grades = SETS[args.dataset]
    if not path.is_file():
        print(f"{path} not present (the Kaggle sets are not shipped)", file=sys.stderr)
        return 2
    t0 = time.time()
    items, pairs = import_dataset(args.dataset, path, grades)
    rng = random.Random(args.seed)
    train_all, dev_all = split_by_query([p for p in pairs if p.grade], 0.3, args.seed)
    labelled = sample_whole_queries(train_all, args.max_pairs, rng)
    dev = sample_whole_queries(dev_all, args.dev_pairs, rng)
    brands = BrandLexicon.from_catalogue(items.values())
    sources = [p for p in labelled if p.grade == grades[-1]]
    dev_sources = [p for p in dev if p.grade == grades[-1]]
    assert not {p.query for p in sources} & {p.query for p in dev}, "train and dev share queries"
    adv, adv_counts = generate(dev_sources, items, grades, {t: args.per_type for t in TYPES}, args.seed + 1000)
    result = {"dataset": args.dataset, "trainPairs": len(labelled), "trainSources": len(sources), "devPairs": len(dev),
              "devQueries": len({p.query for p in dev}), "adversarialPairs": len(adv),
              "adversarialPerType": {k: v["generated"] for k, v in adv_counts.items()}, "arms": {}}
    adv_keys = {(n.query, n.item.item_id) for n in adv}

    plain = measure(fit(grades, brands, labelled, [], items, args), grades, dev, items, adv, brands, "plain")
    result["arms"]["plain"] = plain
    _write(result, args.out, t0)
    prev = plain
    for arm in ("round1", "round2")[:args.rounds]:
        plan = mix(prev["_rates"], TYPES, args.per_type * len(TYPES), args.floor)
        syn, _ = generate(sources, items, grades, plan, args.seed + (1 if arm == "round1" else 2))
        syn = [n for n in syn if (n.query, n.item.item_id) not in adv_keys]
        leak = {n.source for n in syn} & {n.source for n in adv}
        assert not leak, f"synthetic training pairs share sources with the adversarial set: {sorted(leak)[:3]}"
        r = measure(fit(grades, brands, labelled, syn, items, args), grades, dev, items, adv, brands, arm)
        r["mix"], r["syntheticPairs"] = plan, len(syn)
        result["arms"][arm] = prev = r
        _write(result, args.out, t0)   # partial results survive an interrupted run
    print(_write(result, args.out, t0))
    return 0


def _write(result: dict, out: str | None, t0: float) -> str:
    result["seconds"] = round(time.time() - t0, 1)
    text = json.dumps({**result, "arms": {k: {f: v for f, v in a.items() if f != "_rates"}
                                          for k, a in result["arms"].items()}}, indent=1)
    if out:
        Path(out).write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
