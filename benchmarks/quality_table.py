"""The student quality table: one command per row, per dataset.

    python benchmarks/quality_table.py --dataset homedepot --row bm25
    python benchmarks/quality_table.py --dataset homedepot --row zeroshot
    python benchmarks/quality_table.py --dataset homedepot --row teacher
    python benchmarks/quality_table.py --dataset homedepot --row student-teacher
    python benchmarks/quality_table.py --dataset homedepot --row +attributes
    python benchmarks/quality_table.py --dataset homedepot --row +synthetic
    python benchmarks/quality_table.py --dataset homedepot --row +aux
    python benchmarks/quality_table.py --dataset homedepot --row all-labels
    python benchmarks/quality_table.py --dataset homedepot --table      # prints the markdown table

(--dataset crowdflower likewise.) Data: ../shared/data/DATASET/pairs.csv,
split by query by the round's prepare stage (examples/DATASET-round.yaml with
the sizes below). The teacher rows run the real stages (`adore stage prepare,
sft, align, annotate, synthesize`, cached in WORKDIR); each student row then
runs the distill stage's own function with that row's loss switches and scores
the dev split. Rows accumulate in WORKDIR/rows.json.

Rows: bm25 and zeroshot (MiniLM bi-encoder cosine) turn scores into grades with
cut-offs fitted on the human seed; teacher is the SFT+KTO teacher on a bounded
sample of dev (whole queries, --teacher-dev pairs) with annotate's
seed-fitted correction (grade offsets and rule evidence), as it labels the pool; student-teacher is the
student from teacher soft labels only (title only, no synthetic pairs, no aux
heads); +attributes adds the key attributes to the input; +synthetic adds CE on
synthetic near misses; +aux adds the per-attribute heads (the full ADORE
student); all-labels is the same backbone trained with CE on every training
human label (the reference). Every student row is temperature-calibrated on
one half of dev by query (one parameter; the argmax and so accuracy/F1 do not
change).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STUDENT_ROWS = {  # row -> distill spec overrides (the ablation ladder)
    "student-teacher": {"useAttributes": False, "syntheticWeight": 0.0, "auxWeight": 0.0},
    "+attributes": {"useAttributes": True, "syntheticWeight": 0.0, "auxWeight": 0.0},
    "+synthetic": {"useAttributes": True, "syntheticWeight": 1.0, "auxWeight": 0.0},
    "+aux": {"useAttributes": True, "syntheticWeight": 1.0, "auxWeight": 0.3},
}
ROWS = ["bm25", "zeroshot", "teacher", *STUDENT_ROWS, "all-labels"]


def round_file(args, work: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / f"{args.dataset}-round.yaml").read_text())
    spec = doc["spec"]
    spec["dataset"].update({"path": str((Path(args.data) / args.dataset / "pairs.csv").resolve()),
                            "maxPairs": args.max_pairs, "poolSize": args.pool})
    if args.per_query:
        spec["dataset"]["maxPairsPerQuery"] = args.per_query
    spec["dataset"]["evidencePoolSize"] = args.evidence_pool  # explicit: the example rounds may set one
    spec["teacher"]["rulesFile"] = str((ROOT / "examples" / spec["teacher"]["rulesFile"]).resolve())
    spec["stages"]["distill"] = {"epochs": args.epochs, "maxLength": args.max_length, "learningRate": args.lr}
    if args.layers:
        spec["stages"]["distill"]["layers"] = args.layers
    if args.temperature:
        spec["stages"]["distill"]["temperature"] = args.temperature
    spec["stages"]["synthesize"]["pairsPerType"] = args.synthetic_per_type
    work.mkdir(parents=True, exist_ok=True)
    f = work / "round.yaml"
    text = yaml.safe_dump(doc, sort_keys=False)
    if not f.is_file() or f.read_text() != text:
        f.write_text(text)
    return f


def stage(f: Path, work: Path, *names: str) -> None:
    adore = Path(sys.executable).with_name("adore")
    for name in names:
        subprocess.run([str(adore), "stage", name, "--round", str(f), "--workdir", str(work)], check=True,
                       stdout=subprocess.DEVNULL)


def stage_seconds(work: Path, names) -> float:
    return round(sum(json.loads((work / "stages" / n / "metrics.json").read_text()).get("durationSeconds", 0)
                     for n in names), 1)


class Data:
    def __init__(self, round_, work: Path):
        from adore.data.contract import read_catalogue, read_pairs

        prep = work / "stages" / "prepare"
        self.grades = round_.spec.grades
        self.items = read_catalogue(prep / "catalogue.jsonl")
        self.seed = read_pairs(prep / "seed.jsonl", self.grades)
        self.train = read_pairs(prep / "train_labels.jsonl", self.grades)
        self.dev = read_pairs(prep / "dev.jsonl", self.grades)

    def cols(self, pairs):
        return ([p.query for p in pairs], [self.items[p.item_id].title for p in pairs],
                [self.items[p.item_id].attributes for p in pairs])

    def brands(self):
        from adore.attributes import BrandLexicon

        return BrandLexicon.from_catalogue(self.items.values())

    def gold(self, pairs):
        return np.array([self.grades.index(p.grade) for p in pairs])


def score_row(d: Data, pairs, pred, scores, probs=None) -> dict:
    from adore.metrics import graded_report
    from adore.student.calibrate import ece

    raw = np.array([p.score for p in pairs]) if all(p.score is not None for p in pairs) else None
    if raw is not None and raw.max() > len(d.grades):  # CrowdFlower keeps no raw mean: QWK is its metric
        raw = None
    raw_pred = None
    if raw is not None:
        raw_pred = 1 + (probs @ np.arange(len(d.grades)) if probs is not None else pred)
    r = graded_report([p.query for p in pairs], d.gold(pairs), pred, scores, d.grades, 10, raw, raw_pred)
    if probs is not None:
        r["ece"] = round(ece(probs, d.gold(pairs)), 4)
    return r


def cutoff_row(d: Data, score_fn) -> tuple[dict, int]:
    """Scores -> grades with the BM25 baseline's seed-fitted cut-offs (grade shares match the seed's)."""
    from adore.bm25 import BM25Baseline

    cut = BM25Baseline({"x": "x"})
    cut.fit_thresholds(score_fn(d.seed), d.gold(d.seed), len(d.grades))
    s = score_fn(d.dev)
    return score_row(d, d.dev, cut.grades(s), s), len(d.seed)


def bm25_scores(d: Data):
    from adore.bm25 import BM25Baseline

    bm = BM25Baseline({i: it.title for i, it in d.items.items()})
    return lambda pairs: bm.score([p.query for p in pairs], [p.item_id for p in pairs])


def zeroshot_scores(d: Data):
    from adore import models
    from adore.similarity import embedder

    enc = embedder(models.MINILM)

    def score(pairs):
        q, t, _ = d.cols(pairs)
        return enc.cosine(q, t)
    return score


def teacher_row(args, round_, work: Path, d: Data) -> tuple[dict, int]:
    from adore.stages import common
    from adore.stages.base import StageContext

    sample, seen = [], set()
    for p in sorted(d.dev, key=lambda p: (hash_q(p.query), p.item_id)):
        if len(sample) >= args.teacher_dev and p.query not in seen:
            break
        seen.add(p.query)
        sample.append(p)
    ctx = StageContext(round_, work, work / "tmp", "annotate")
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), d.items)
    t0 = time.time()
    judged = teacher.judge([(p.query, d.items[p.item_id]) for p in sample], progress="teacher dev")
    secs = time.time() - t0
    ok = [(p, j) for p, j in zip(sample, judged) if j.grade is not None]
    probs = np.array([j.probs for _, j in ok])
    pairs = [p for p, _ in ok]
    own = score_row(d, pairs, probs.argmax(1), probs @ np.arange(len(d.grades)), probs)
    # The teacher as it labels the pool: annotate's seed-fitted correction (offsets, rule evidence).
    probs = corrected(round_, work, d, pairs, probs)
    r = score_row(d, pairs, probs.argmax(1), probs @ np.arange(len(d.grades)), probs)
    r.update({"judgedPairs": len(sample), "parsedPairs": len(ok), "teacherPairsPerSecond": round(len(sample) / secs, 3),
              "uncorrected": {k: own.get(k) for k in ("accuracy", "macroF1", "ndcg@10", "rmse", "qwk", "auc")}})
    return r, len(d.seed)


def corrected(round_, work: Path, d: Data, pairs, probs: np.ndarray) -> np.ndarray:
    from adore.stages.annotate import evidence, evidence_rows
    from adore.stages.base import StageContext
    from adore.teacher.calibration import apply_correction

    m = json.loads((work / "stages" / "annotate" / "metrics.json").read_text())
    if "calibrationOffsets" not in m:
        return probs
    offsets = np.array([m["calibrationOffsets"][g] for g in d.grades])
    if "ruleWeights" not in m:
        return apply_correction(probs, offsets)
    names, x = evidence(StageContext(round_, work, work / "tmp", "annotate"), d.items,
                        evidence_rows(pairs, d.items, d.brands()))
    weights = np.array([[m["ruleWeights"][g][f] for f in names] for g in d.grades])
    return apply_correction(probs, offsets, weights, x)


def hash_q(q: str) -> str:
    import hashlib

    return hashlib.sha1(q.encode()).hexdigest()


def row_key(args) -> str:
    return args.row + (f" ({args.layers} layers)" if args.layers and args.row in STUDENT_ROWS else "")


def student_row(args, round_, work: Path, d: Data, row: str) -> tuple[dict, int]:
    from adore.schema import parse_round
    from adore.stages import distill
    from adore.stages.base import StageContext
    from adore.student.model import Student

    doc = round_.model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["stages"]["distill"].update({**STUDENT_ROWS[row], "gradeDecoding": args.decoding})
    r2 = parse_round(doc, "quality-table", base_dir=round_.resolve("."), check_paths=False)
    out = work / "rows" / row_key(args).replace(" ", "_")
    out.mkdir(parents=True, exist_ok=True)
    m = distill.run(StageContext(r2, work, out, "distill"))
    student = Student.load(out / "student")
    probs = student.predict(*d.cols(d.dev))
    r = score_row(d, d.dev, student.grade(probs), probs @ np.arange(len(d.grades)), probs)
    r.update({"trainExamples": m["teacherExamples"] + m.get("evidenceExamples", 0) + m["syntheticExamples"],
              "evidenceExamples": m.get("evidenceExamples", 0), "calibration": m["calibration"],
              "gradeDecoding": m["gradeDecoding"], "distillSeconds": m["trainSeconds"]})
    return r, len(d.seed)


def all_labels_row(args, round_, work: Path, d: Data) -> tuple[dict, int]:
    import torch

    from adore.metrics import share_cutoffs
    from adore.stages import common
    from adore.student.calibrate import calibrate
    from adore.student.model import Student, expected_grade
    from adore.student.train import Example, train as fit

    cfg = round_.spec.stages.distill
    torch.manual_seed(cfg.seed)
    student = Student.create(cfg.backbone, d.grades, True, cfg.max_length, sorted(common.brands(d.items).brands),
                             aux_attributes=[])
    train, items = d.train, d.items
    if args.ref_data == "whole-set":  # every training-split label of the whole dataset, not only the sample's
        train, items = whole_set_train(round_, d)
    ex = [Example(p.query, items[p.item_id].title, items[p.item_id].attributes, hard=d.grades.index(p.grade))
          for p in train]
    m = fit(student, ex, epochs=args.ref_epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate, kl_weight=0.0,
              synthetic_weight=1.0, seed=cfg.seed)
    q = d.cols(d.dev)
    cal = calibrate(student.logits(*q), d.gold(d.dev), q[0])
    student.meta.temperature = cal["temperature"]
    if args.decoding == "seed-cutoffs":  # read exactly as the distilled students are
        student.meta.grade_cutoffs = share_cutoffs(expected_grade(student.predict(*d.cols(d.seed))), d.gold(d.seed),
                                                   len(d.grades)).tolist()
    probs = student.predict(*q)
    r = score_row(d, d.dev, student.grade(probs), probs @ np.arange(len(d.grades)), probs)
    argmax = score_row(d, d.dev, probs.argmax(1), probs @ np.arange(len(d.grades)), probs)
    r.update({"trainExamples": len(ex), "trainQueries": len({p.query for p in train}), "refData": args.ref_data,
              "epochs": args.ref_epochs, "calibration": cal, "distillSeconds": m["trainSeconds"],
              "gradeDecoding": {"method": args.decoding, "cutoffs": student.meta.grade_cutoffs},
              "argmaxMacroF1": argmax["macroF1"], "argmaxQwk": argmax["qwk"]})
    return r, len(train)


def whole_set_train(round_, d: Data):
    """The labelled training split of the whole dataset under the round's own query split (the
    sample's dev queries are dev here too: the split hashes the query, whatever the sample)."""
    from adore.data.importers import import_dataset
    from adore.stages.prepare import split_by_query

    ds = round_.spec.dataset
    catalogue, pairs = import_dataset(ds.source, round_.resolve(ds.path), round_.spec.grades)
    train, _ = split_by_query([p for p in pairs if p.grade is not None], ds.dev_fraction, ds.split_seed)
    dev_queries = {p.query for p in d.dev}
    if any(p.query in dev_queries for p in train):
        raise SystemExit("whole-set reference: a dev query of the sample fell in the training split")
    return train, catalogue


def run_row(args) -> dict:
    from adore.schema import load_round

    work = Path(args.workdir or ROOT / "runs" / f"quality-{args.dataset}")
    f = round_file(args, work)
    round_ = load_round(f, check_paths=False)
    t0 = time.time()
    stage(f, work, "prepare")
    upstream = []
    if args.row not in ("bm25", "zeroshot", "all-labels"):
        upstream = ["sft", "align", "annotate"] + (["synthesize"] if args.row in STUDENT_ROWS else [])
        stage(f, work, *upstream)
    d = Data(round_, work)
    t1 = time.time()
    if args.row == "bm25":
        r, used = cutoff_row(d, bm25_scores(d))
    elif args.row == "zeroshot":
        r, used = cutoff_row(d, zeroshot_scores(d))
    elif args.row == "teacher":
        r, used = teacher_row(args, round_, work, d)
    elif args.row in STUDENT_ROWS:
        r, used = student_row(args, round_, work, d, args.row)
    else:
        r, used = all_labels_row(args, round_, work, d)
    r.update({"row": args.row, "dataset": args.dataset, "humanLabelsUsed": used, "devPairs": len(d.dev),
              "devQueries": len({p.query for p in d.dev}), "rowSeconds": round(time.time() - t1, 1),
              "upstreamStageSeconds": stage_seconds(work, upstream), "poolPairs": args.pool,
              "maxPairs": args.max_pairs, "perQuery": args.per_query, "wallSeconds": round(time.time() - t0, 1),
              "command": " ".join(["python", "benchmarks/quality_table.py", *sys.argv[1:]])})
    rows_file = work / "rows.json"
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    rows[row_key(args)] = r
    rows_file.write_text(json.dumps(rows, indent=1))
    return r


def table(work: Path, dataset: str) -> str:
    rows = json.loads((work / "rows.json").read_text())
    last = "rmse" if dataset == "homedepot" else "qwk"
    lines = [f"| {dataset} dev | accuracy | macro-F1 | NDCG@10 | {last.upper()} | ECE | human labels used | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in [*ROWS, *(k for k in rows if k not in ROWS)]:
        if name in rows:
            r = rows[name]
            f = lambda k: "–" if r.get(k) is None else f"{r[k]:.3f}"
            wall = f"{r['rowSeconds']:.0f}" + (f" (+{r['upstreamStageSeconds']:.0f} stages)" if r.get("upstreamStageSeconds") else "")
            lines.append(f"| {name} | {f('accuracy')} | {f('macroF1')} | {f('ndcg@10')} | {f(last)} | {f('ece')} | "
                         f"{r['humanLabelsUsed']} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["homedepot", "crowdflower"], required=True)
    ap.add_argument("--row", choices=ROWS)
    ap.add_argument("--table", action="store_true", help="print the rows measured so far as markdown")
    ap.add_argument("--workdir")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--max-pairs", type=int, default=2000, help="pairs sampled by whole queries before the split")
    ap.add_argument("--per-query", type=int, help="keep at most this many pairs per query before sampling (dataset.maxPairsPerQuery)")
    ap.add_argument("--evidence-pool", type=int, default=0, help="further training pairs labelled from the evidence alone (dataset.evidencePoolSize)")
    ap.add_argument("--pool", type=int, default=800, help="training pairs the teacher annotates (~1 pair/s)")
    ap.add_argument("--synthetic-per-type", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=3, help="distillation epochs of the student rows")
    ap.add_argument("--ref-epochs", type=int, default=3, help="epochs of the all-labels reference")
    ap.add_argument("--ref-data", choices=["sample", "whole-set"], default="sample",
                    help="what the all-labels reference trains on: the sample's training labels, or every training-split label of the whole dataset")
    ap.add_argument("--temperature", type=float, help="distillation temperature of the student rows (distill.temperature)")
    ap.add_argument("--layers", type=int, help="student rows keep only the backbone's first N layers (distill.layers)")
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-4, help="distillation learning rate of the student rows")
    ap.add_argument("--decoding", choices=["seed-cutoffs", "argmax"], default="seed-cutoffs",
                    help="how the student and all-labels rows read grades (distill.gradeDecoding); bm25/zeroshot always use seed cut-offs")
    ap.add_argument("--teacher-dev", type=int, default=80, help="dev pairs (whole queries) the teacher row judges")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.workdir or ROOT / "runs" / f"quality-{args.dataset}"), args.dataset))
        return
    if not args.row:
        ap.error("give --row NAME or --table")
    if not (Path(args.data) / args.dataset / "pairs.csv").is_file():
        sys.exit(f"{Path(args.data) / args.dataset / 'pairs.csv'} not found (the Kaggle sets are not shipped; --data DIR)")
    print(json.dumps(run_row(args), indent=1))


if __name__ == "__main__":
    main()
