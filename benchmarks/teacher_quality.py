"""Teacher quality: zero-shot vs after SFT vs after SFT+KTO, next to BM25, on human-labelled dev.

    python benchmarks/teacher_quality.py --dataset homedepot --workdir runs/teacher-homedepot
    python benchmarks/teacher_quality.py --dataset crowdflower --workdir runs/teacher-crowdflower

Runs the round's prepare, sft and align stages (`adore stage ...`, exactly what a
Job runs) from examples/DATASET-round.yaml with the knobs below, then judges the
same dev pairs (whole queries, seeded sample) with the three teachers:

- zero-shot: the base model, no adapter (same prompt, rules and decoding);
- sft: + the SFT adapter (human seed only);
- sft+kto: + the KTO adapter (behaviour simulated from training labels: the
  align stage's click model, stated in its metrics);
- sft+kto+calibrated: the same judgements with grade offsets fitted on the
  human seed (what the annotate stage writes by default).

Prints, per teacher: parsed share, accuracy, macro-F1, NDCG@10, RMSE of the
expected grade on the label scale (Home Depot's 1-3 means; CrowdFlower's 1-4
medians), QWK, the "too strict" rate (dev pairs with strong positive simulated
behaviour that the teacher calls the lowest grade) and annotation throughput
(pairs/s with batch size and token lengths). Unparsed rationales are counted,
never turned into a grade; metrics are over parsed pairs. Writes
WORKDIR/teacher_quality.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def round_file(dataset: str, work: Path, args) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / f"{dataset}-round.yaml").read_text())
    spec = doc["spec"]
    spec["dataset"]["path"] = str(Path(args.data or ROOT.parent / "shared" / "data" / dataset).resolve())
    spec["dataset"]["maxPairs"] = args.max_pairs
    spec["dataset"]["maxSeedPairs"] = args.seed_pairs
    spec["teacher"]["rulesFile"] = str((ROOT / "examples" / spec["teacher"]["rulesFile"]).resolve())
    spec["stages"]["sft"]["epochs"] = args.sft_epochs
    spec["stages"]["align"].update({"pairs": args.align_pairs, "steps": args.align_steps})
    work.mkdir(parents=True, exist_ok=True)
    f = work / "round.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    return f


def run_stages(f: Path, work: Path) -> None:
    adore = Path(sys.executable).with_name("adore")
    for stage in ("prepare", "sft", "align"):
        print(f"== adore stage {stage}", flush=True)
        subprocess.run([str(adore), "stage", stage, "--round", str(f), "--workdir", str(work)], check=True)


def too_strict_rate(dev, judged, grades, cm, seed: int) -> tuple[float | None, int]:
    from adore.behaviour import simulate
    from adore.stages.align import behaviour_grade

    beh = {(b.query, b.item_id): b for b in simulate(dev, grades, cm, seed)}
    strong = [j for p, j in zip(dev, judged)
              if behaviour_grade(beh[(p.query, p.item_id)], grades, 0.02, 0.02) == grades[-1] and j.grade is not None]
    if not strong:
        return None, 0
    return round(sum(j.grade == grades[0] for j in strong) / len(strong), 4), len(strong)


def score(dev, judged, grades, k: int = 10) -> dict:
    from adore.metrics import graded_report

    keep = [(p, j) for p, j in zip(dev, judged) if j.grade is not None]
    gold = np.array([grades.index(p.grade) for p, _ in keep])
    probs = np.array([j.probs for _, j in keep])
    expected = probs @ np.arange(len(grades))
    rep = graded_report([p.query for p, _ in keep], gold, probs.argmax(1), expected, grades, k,
                        np.array([p.score for p, _ in keep]), 1 + expected)
    rep["parsedShare"] = round(len(keep) / len(dev), 4)
    rep["predictedShares"] = {g: round(float(s), 3) for g, s in
                              zip(grades, np.bincount(probs.argmax(1), minlength=len(grades)) / max(len(keep), 1))}
    return rep


def bm25_row(items, seed, dev, grades, k: int = 10) -> dict:
    from adore.bm25 import BM25Baseline
    from adore.metrics import graded_report

    bm25 = BM25Baseline({i: it.title for i, it in items.items()})
    bm25.fit_thresholds(bm25.score([p.query for p in seed], [p.item_id for p in seed]),
                        np.array([grades.index(p.grade) for p in seed]), len(grades))
    s = bm25.score([p.query for p in dev], [p.item_id for p in dev])
    pred = bm25.grades(s)
    return graded_report([p.query for p in dev], np.array([grades.index(p.grade) for p in dev]), pred, s, grades, k,
                         np.array([p.score for p in dev]), 1 + pred)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["homedepot", "crowdflower"], required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--data", help="dataset folder (default ../shared/data/DATASET)")
    ap.add_argument("--max-pairs", type=int, default=3000, help="pairs sampled (by whole queries) before the split")
    ap.add_argument("--seed-pairs", type=int, default=64, help="human-labelled SFT seed (capped at 5%% of train)")
    ap.add_argument("--sft-epochs", type=int, default=2)
    ap.add_argument("--align-pairs", type=int, default=48)
    ap.add_argument("--align-steps", type=int, default=8)
    ap.add_argument("--dev-pairs", type=int, default=150, help="dev pairs judged (whole queries, seeded)")
    ap.add_argument("--variants", default="zero-shot,sft,sft+kto")
    ap.add_argument("--no-calibrated", dest="calibrated", action="store_false",
                    help="skip the sft+kto+calibrated row (seed-fitted grade offsets, annotate's default)")
    args = ap.parse_args()

    from adore.schema import load_round
    from adore.stages import common
    from adore.data.contract import read_catalogue, read_pairs
    from adore import hardware
    from adore.teacher.llm import JudgeSettings, Teacher
    from adore.stages.prepare import sample_whole_queries

    work = args.workdir.resolve()
    f = round_file(args.dataset, work, args)
    t0 = time.time()
    run_stages(f, work)
    stage_seconds = time.time() - t0
    rnd = load_round(f)
    grades, spec = rnd.spec.grades, rnd.spec
    st = work / "stages"
    items = read_catalogue(st / "prepare" / "catalogue.jsonl")
    dev = sample_whole_queries(read_pairs(st / "prepare" / "dev.jsonl", grades), args.dev_pairs,
                               random.Random(spec.dataset.split_seed))
    seed = read_pairs(st / "prepare" / "seed.jsonl", grades)
    chains = {"zero-shot": [], "sft": [st / "sft" / a for a in json.loads((st / "sft" / common.ADAPTERS_FILE).read_text())]}
    chains["sft+kto"] = chains["sft"] + [st / "align" / a for a in json.loads((st / "align" / common.ADAPTERS_FILE).read_text())]
    rules = Path(spec.teacher.rules_file).read_text()
    results = {"dataset": args.dataset, "devPairs": len(dev), "devQueries": len({p.query for p in dev}),
               "humanSeedPairs": len(seed), "args": {k: str(v) for k, v in vars(args).items()},
               "sftAlignSeconds": round(stage_seconds, 1),
               "align": json.loads((st / "align" / "metrics.json").read_text()),
               "bm25": bm25_row(items, seed, dev, grades)}
    hw = hardware.for_stage(spec.runtime, "annotate")
    settings = JudgeSettings.of(spec.teacher, hw)
    for variant in args.variants.split(","):
        teacher = Teacher.load(spec.teacher.model, rules, grades, chains[variant], f.parent,
                               brands=common.brands(items), prefill_attributes=spec.teacher.prefill_attributes,
                               hardware=hw, settings=settings)
        prompts = [teacher.prompt(p.query, items[p.item_id]) for p in dev]
        lengths = [len(teacher.tokenizer(x, add_special_tokens=False).input_ids) for x in prompts]
        start = time.time()
        judged = teacher.judge([(p.query, items[p.item_id]) for p in dev], progress=f"{args.dataset} {variant}")
        secs = time.time() - start
        row = score(dev, judged, grades)
        row["tooStrictRate"], row["strongPositivePairs"] = too_strict_rate(dev, judged, grades,
                                                                           spec.stages.align.click_model, spec.dataset.split_seed)
        row["pairsPerSecond"] = round(len(dev) / secs, 3)
        row["throughputSetting"] = (f"{hw.describe()}, batch {settings.batch_size}, prompt tokens mean {np.mean(lengths):.0f} / max "
                                    f"{max(lengths)} (cap {spec.teacher.max_prompt_tokens}), up to {spec.teacher.max_new_tokens} new tokens")
        results[variant] = row
        print(json.dumps({variant: row}), flush=True)
        if variant == "sft+kto" and args.calibrated:
            # What annotate writes by default: the same judgements with seed-fitted grade offsets.
            from adore.teacher.calibration import apply_offsets, fit_offsets

            sj = teacher.judge([(p.query, items[p.item_id]) for p in seed], progress=f"{args.dataset} seed for calibration")
            ok = [(p, j) for p, j in zip(seed, sj) if j.probs is not None]
            offsets = fit_offsets(np.array([j.probs for _, j in ok]), np.array([grades.index(p.grade) for p, _ in ok]))
            cal = [j if j.probs is None else replace(j, probs=list(apply_offsets(np.array(j.probs), offsets)),
                                                     grade=grades[int(np.argmax(apply_offsets(np.array(j.probs), offsets)))])
                   for j in judged]
            crow = score(dev, cal, grades)
            crow["tooStrictRate"], crow["strongPositivePairs"] = too_strict_rate(
                dev, cal, grades, spec.stages.align.click_model, spec.dataset.split_seed)
            crow["offsets"] = [round(float(b), 3) for b in offsets]
            results["sft+kto+calibrated"] = crow
            print(json.dumps({"sft+kto+calibrated": crow}), flush=True)
    (work / "teacher_quality.json").write_text(json.dumps(results, indent=1))
    cols = ["parsedShare", "accuracy", "macroF1", "ndcg@10", "rmse", "qwk", "tooStrictRate", "pairsPerSecond"]
    print(f"\n{args.dataset}: {len(dev)} dev pairs / {results['devQueries']} queries, {len(seed)} human seed pairs; "
          f"too-strict over pairs with strong simulated behaviour")
    print("| teacher | " + " | ".join(cols) + " |\n|---" * 1 + "|---" * len(cols) + "|")
    for name in ["bm25"] + args.variants.split(",") + (["sft+kto+calibrated"] if "sft+kto+calibrated" in results else []):
        r = results[name]
        print(f"| {name} | " + " | ".join("–" if r.get(c) is None else f"{r[c]:.3f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
