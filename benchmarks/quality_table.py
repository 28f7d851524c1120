"""The student quality table: one command per row, per dataset, every row read the same way.

    python benchmarks/quality_table.py --dataset homedepot --row bm25
    python benchmarks/quality_table.py --dataset homedepot --row zeroshot
    python benchmarks/quality_table.py --dataset homedepot --row teacher
    python benchmarks/quality_table.py --dataset homedepot --row evidence-labels   # (a) no LLM
    python benchmarks/quality_table.py --dataset homedepot --row teacher-labels    # (b) the LLM alone
    python benchmarks/quality_table.py --dataset homedepot --row both-labels       # (c) both
    python benchmarks/quality_table.py --dataset homedepot --row full              # the full ADORE student
    python benchmarks/quality_table.py --dataset homedepot --row full-no-synthetic # full less one addition
    python benchmarks/quality_table.py --dataset homedepot --row reference         # every training-split label
    python benchmarks/quality_table.py --dataset homedepot --table                 # markdown of the rows so far
    python benchmarks/quality_table.py --dataset homedepot --row both-labels --distill epochs=8  # one knob changed

(--dataset crowdflower likewise.) The round is examples/DATASET-round.yaml as it is (teacher,
judging, distillation), with only the data path and the sample size set here; its stages run
for real (`adore stage prepare ... distill`, cached in the workdir). Data: ../shared/data.

Every row turns its score into grades with cut-offs fitted on the same 32-pair human seed (the
grade shares of the seed), and RMSE (Home Depot, on the raters' 1-3 mean) comes from a linear
map of the row's continuous score fitted on the same seed: a row read differently would compare
the decoding, not the model. AUC: relevant = above the lowest grade, by the score. Each figure
comes with a 95% bootstrap interval over dev queries; student rows train three seeds
(distill.seed 0, 1, 2) and give the mean and the spread (max - min) beside the interval of
seed 0.

Rows: bm25 and zeroshot (the bi-encoder cosine of the student's backbone, untrained); teacher
(the aligned teacher's own grade probabilities on dev, and corrected as annotate corrects the
pool); the LLM-share ablation (a) evidence-labels, (b) teacher-labels, (c) both-labels: students
trained on annotate's pool labels from one source or both (distill.labelSource), the pool only
(no evidence pool, no synthetic pairs, no aux heads); full: the round's own distillation
(evidence pool, synthetic near misses, aux heads); full-no-evidence-pool, full-no-synthetic,
full-no-aux: full with that one addition taken out (one change at a time); full-cross-encoder and
full-auto: full with distill.architecture cross-encoder or auto (auto trains both and keeps one by
distill's rule on the held-out half of dev, so its row is read after that choice); full-interpolated:
full blended with its start (distill.interpolation, the weight chosen on dev's fit half), and
full-not-interpolated, full as trained (the Home Depot and CrowdFlower examples blend, so there full is
full-interpolated);
full-compressed: full's second distillation into 3 layers (distill.compress), the row reading the
shallow student; reference: the same
student trained on every human label of the whole dataset's training split under the round's
query split.
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

ABLATION = {"evidence-labels": "evidence", "teacher-labels": "teacher", "both-labels": "both"}
# The full student with one of the round's additions taken out, the rest as the round has it: which one
# moves a column is read against full itself, one change at a time.
WITHOUT = {"full-no-evidence-pool": {"useEvidencePool": False}, "full-no-synthetic": {"syntheticWeight": 0.0},
           "full-no-aux": {"auxWeight": 0.0}}
# The full student with its architecture changed (distill.architecture), the labels and the rest as full has them.
ARCHITECTURE_ROWS = {"full-cross-encoder": {"architecture": "cross-encoder"}, "full-auto": {"architecture": "auto"}}
# The full student blended with the student it started as (distill.interpolation), the weight chosen on dev's fit
# half; and the full student as trained, unblended (the Home Depot and CrowdFlower examples blend, so there
# full-interpolated is full itself and full-not-interpolated is the one change).
INTERPOLATION_ROWS = {"full-interpolated": {"interpolation": [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
                      "full-not-interpolated": {"interpolation": [1.0]}}
# The full student's second distillation into 3 layers (distill.compress): the row reads the shallow student.
COMPRESS_ROWS = {"full-compressed": {"compress": {"layers": 3}}}
STUDENT_ROWS = [*ABLATION, "full", *WITHOUT, *ARCHITECTURE_ROWS, *INTERPOLATION_ROWS, *COMPRESS_ROWS, "reference"]
ROWS = ["bm25", "zeroshot", "teacher", *STUDENT_ROWS]
COLUMNS = ["macroF1", "auc", "ndcg@10", "rmse", "qwk"]
DEFAULT_SIZE = {"homedepot": 16000, "crowdflower": None}  # pairs sampled by whole queries; None: every pair


def round_file(args, work: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / f"{args.dataset}-round.yaml").read_text())
    spec = doc["spec"]
    spec["dataset"]["path"] = str((Path(args.data) / args.dataset / "pairs.csv").resolve())
    spec["dataset"]["maxPairs"] = args.max_pairs
    if args.pool:
        spec["dataset"]["poolSize"] = args.pool
    if args.pool_selection:
        spec["dataset"]["poolSelection"] = args.pool_selection
    spec["teacher"]["rulesFile"] = str((ROOT / "examples" / spec["teacher"]["rulesFile"]).resolve())
    spec["promotion"]["gates"] = {"minMacroF1": 0.0, "mustBeatBm25": False}  # measured here, not gated
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


class Data:
    def __init__(self, round_, work: Path):
        from adore.data.contract import read_catalogue, read_pairs

        prep = work / "stages" / "prepare"
        self.round = round_
        self.grades = round_.spec.grades
        self.items = read_catalogue(prep / "catalogue.jsonl")
        self.seed = read_pairs(prep / "seed.jsonl", self.grades)
        self.dev = read_pairs(prep / "dev.jsonl", self.grades)
        raw = [p.score for p in self.dev]
        self.has_raw = all(r is not None for r in raw) and max(raw) <= len(self.grades)

    def cols(self, pairs):
        return ([p.query for p in pairs], [self.items[p.item_id].title for p in pairs],
                [self.items[p.item_id].attributes for p in pairs])

    def gold(self, pairs) -> np.ndarray:
        return np.array([self.grades.index(p.grade) for p in pairs])

    def raw(self, pairs) -> np.ndarray:
        return np.array([p.score for p in pairs], float)


def read_same_way(d: Data, seed_scores: np.ndarray, dev_scores: np.ndarray) -> dict:
    """Grades by the seed's grade shares, RMSE from a seed-fitted linear map of the score: every row alike."""
    from adore.metrics import grades_from_cutoffs, share_cutoffs

    cut = share_cutoffs(seed_scores, d.gold(d.seed), len(d.grades))
    pred = grades_from_cutoffs(dev_scores, cut)
    cont, check = None, None
    if d.has_raw:
        a, b = np.polyfit(seed_scores, d.raw(d.seed), 1) if np.ptp(seed_scores) > 0 else (0.0, d.raw(d.seed).mean())
        cont = np.clip(a * dev_scores + b, 1, len(d.grades))
        check = map_check(d, seed_scores, dev_scores, a)
    return {"pred": pred, "scores": dev_scores, "continuous": cont, "mapCheck": check}


def map_check(d: Data, seed_scores: np.ndarray, dev_scores: np.ndarray, seed_slope: float) -> dict | None:
    """How much of a row's RMSE is the 32-pair seed's map rather than the score: the map's slope and the score's
    Pearson r with the raters' mean on the seed and on dev, and the RMSE a map fitted on dev itself would give.
    A diagnosis only, never a column: no row may fit on dev."""
    raw_seed, raw_dev = d.raw(d.seed), d.raw(d.dev)
    if np.ptp(seed_scores) == 0 or np.ptp(dev_scores) == 0:
        return None
    a, b = np.polyfit(dev_scores, raw_dev, 1)
    oracle = np.sqrt(np.mean((np.clip(a * dev_scores + b, 1, len(d.grades)) - raw_dev) ** 2))
    return {"seedSlope": round(float(seed_slope), 3), "devSlope": round(float(a), 3),
            "seedPearson": round(float(np.corrcoef(seed_scores, raw_seed)[0, 1]), 3),
            "devPearson": round(float(np.corrcoef(dev_scores, raw_dev)[0, 1]), 3),
            "seedRawMean": round(float(raw_seed.mean()), 3), "devRawMean": round(float(raw_dev.mean()), 3),
            "rmseDevFittedMap": round(float(oracle), 4)}


def metrics(d: Data, pairs, pred, scores, cont, queries: list | None = None) -> dict:
    """queries: the ranking groups of NDCG (default: each pair's query)."""
    from adore.metrics import graded_report

    raw = d.raw(pairs) if d.has_raw else None
    r = graded_report(queries or [p.query for p in pairs], d.gold(pairs), pred, scores, d.grades, 10, raw, cont)
    return {k: r.get(k) for k in ("accuracy", *COLUMNS)}


def with_intervals(d: Data, read: dict, resamples: int = 400) -> dict:
    """The row's figures on dev, each with a 95% bootstrap interval over dev queries."""
    point = metrics(d, d.dev, read["pred"], read["scores"], read["continuous"])
    by_query: dict[str, list[int]] = {}
    for i, p in enumerate(d.dev):
        by_query.setdefault(p.query, []).append(i)
    groups = list(by_query.values())
    rng = np.random.default_rng(0)
    draws = {k: [] for k in point}
    for _ in range(resamples):
        drawn = rng.integers(0, len(groups), len(groups))
        idx = np.concatenate([groups[g] for g in drawn])
        # A query drawn twice is two queries of the resample: NDCG ranks each copy on its own.
        queries = [j for j, g in enumerate(drawn) for _ in groups[g]]
        pairs = [d.dev[i] for i in idx]
        cont = None if read["continuous"] is None else read["continuous"][idx]
        for k, v in metrics(d, pairs, read["pred"][idx], read["scores"][idx], cont, queries).items():
            if v is not None:
                draws[k].append(v)
    ci = {k: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]
          for k, v in draws.items() if v and point.get(k) is not None}
    return {**point, "ci95": ci, **({"mapCheck": read["mapCheck"]} if read.get("mapCheck") else {})}


def bm25_row(d: Data, args) -> dict:
    from adore.bm25 import BM25Baseline

    bm = BM25Baseline({i: it.title for i, it in d.items.items()})
    score = lambda ps: bm.score([p.query for p in ps], [p.item_id for p in ps])
    return with_intervals(d, read_same_way(d, score(d.seed), score(d.dev)))


def zeroshot_row(d: Data, args) -> dict:
    from adore import hardware, models
    from adore.similarity import embedder

    enc = embedder(models.MINILM, hardware.choose(hardware.found()))
    score = lambda ps: enc.cosine(*d.cols(ps)[:2])
    return with_intervals(d, read_same_way(d, score(d.seed), score(d.dev)))


def teacher_row(d: Data, args, work: Path) -> dict:
    """The aligned teacher on the whole dev split, as annotate judges: its own grade probabilities, then corrected
    as the pool was (the seed fit of annotate, recomputed here on the same seed judgments)."""
    from adore.stages import annotate, common
    from adore.stages.base import StageContext
    from adore.metrics import expected_grade
    from adore.teacher import correction

    ctx = StageContext(d.round, work, work / "tmp", "annotate")
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), d.items)
    direct = annotate.direct_pairs(ctx, d.dev + d.seed)
    t0 = time.time()
    judged = annotate.judge_mixed(teacher, [(p.query, d.items[p.item_id]) for p in d.dev + d.seed], direct, "teacher dev")
    secs = time.time() - t0
    flat = np.full(len(d.grades), 1 / len(d.grades))
    probs = np.array([j.probs if j.probs is not None else flat for j in judged])
    dev_p, seed_p = probs[:len(d.dev)], probs[len(d.dev):]
    own = with_intervals(d, read_same_way(d, expected_grade(seed_p), expected_grade(dev_p)))
    names, seed_x = annotate.evidence(ctx, d.items, annotate.evidence_rows(d.seed, d.items, common.brands(d.items)))
    _, dev_x = annotate.evidence(ctx, d.items, annotate.evidence_rows(d.dev, d.items, common.brands(d.items)))
    fit = correction.fit(seed_p, d.gold(d.seed), seed_x, names, len(d.grades),
                         d.round.spec.stages.annotate.evidence_weights, (dev_p, dev_x))
    fixed = fit.apply(dev_p, dev_x)
    corrected = with_intervals(d, read_same_way(d, expected_grade(fit.apply(seed_p, seed_x)), expected_grade(fixed)))
    return {**own, "corrected": corrected, "correction": fit.report(d.grades), "judgedPairs": len(judged),
            "unparsed": sum(j.probs is None for j in judged), "pairsPerSecond": round(len(judged) / secs, 2),
            "teacher": d.round.spec.teacher.model, "device": teacher.hardware.describe()}


def student_row(d: Data, args, work: Path, row: str) -> dict:
    """Three seeds of a distilled student (or of the reference); the mean, the spread and seed 0's intervals."""
    runs = [train_student(d, args, work, row, s) for s in args.seeds]
    out = dict(runs[0])
    for k in COLUMNS + ["accuracy"]:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k] = round(float(np.mean(vals)), 4)
            out.setdefault("spread", {})[k] = round(float(max(vals) - min(vals)), 4)
    out["seeds"] = {s: {k: r.get(k) for k in COLUMNS} for s, r in zip(args.seeds, runs)}
    return out


def row_overrides(row: str) -> dict:
    """The distill settings a student row changes from the round's own (full: none)."""
    if row in ABLATION:  # the pool's labels only, from one source or both
        return {"labelSource": ABLATION[row], "useEvidencePool": False, "syntheticWeight": 0.0, "auxWeight": 0.0}
    return dict(WITHOUT.get(row) or ARCHITECTURE_ROWS.get(row) or INTERPOLATION_ROWS.get(row) or COMPRESS_ROWS.get(row) or {})


def distill_settings(texts: list[str] | None) -> dict:
    """--distill KEY=VALUE (repeatable): distill settings every student of the row changes, one knob at a time
    against the row without them. Values are read as YAML (4, 5e-5, true, [0.0, 1.0]); a key DistillSpec does
    not have, or a value it refuses, is an error naming the key."""
    from pydantic import ValidationError

    from adore.schema import DistillSpec

    fields = DistillSpec().model_dump(by_alias=True)
    out = {}
    for text in texts or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--distill {text!r}: give KEY=VALUE, e.g. --distill epochs=4")
        key = key.strip()
        if key not in fields:
            raise SystemExit(f"--distill {key}: not a distill setting (one of {', '.join(sorted(fields))})")
        try:  # the value as DistillSpec reads it (YAML reads 5e-5 as text; the spec makes it a number)
            out[key] = DistillSpec(**{key: yaml.safe_load(value)}).model_dump(by_alias=True)[key]
        except ValidationError as e:
            raise SystemExit(f"--distill {key}={value}: {e.errors()[0]['msg']}") from None
    return out


def check_distill_for_row(row: str, settings: dict) -> None:
    """--distill changes one knob against the row as it is: a row that trains no student has no knob, and a
    setting the row makes itself (labelSource on evidence-labels) would turn it into another row under its
    name, so both are refused, naming the row and the key."""
    if row not in STUDENT_ROWS:
        raise ValueError(f"--distill changes students; --row {row} trains none")
    own = row_overrides(row)
    clash = sorted(k for k in settings if k in own)
    if clash:
        raise ValueError(f"--distill {clash[0]}: --row {row} sets it itself ({clash[0]}={json.dumps(own[clash[0]])}); "
                         "the row would no longer be itself: choose the row that has the value you want")


def row_key(row: str, settings: dict) -> str:
    """The row's name in rows.json and under rows/: the row, then the settings it changes, e.g.
    `both-labels [epochs=8]`."""
    if not settings:
        return row
    return f"{row} [{','.join(f'{k}={json.dumps(v)}' for k, v in sorted(settings.items()))}]"


def train_student(d: Data, args, work: Path, row: str, seed: int) -> dict:
    from adore.schema import parse_round
    from adore.stages import distill
    from adore.stages.base import StageContext
    from adore.metrics import expected_grade
    from adore.student.model import Student

    doc = d.round.model_dump(by_alias=True, exclude_none=True)
    dist = doc["spec"]["stages"]["distill"]
    dist["seed"] = seed
    dist.update(row_overrides(row))
    dist.update(args.distill_settings)
    r2 = parse_round(doc, "quality-table", base_dir=d.round.resolve("."), check_paths=False)
    out = work / "rows" / f"{row_key(row, args.distill_settings).replace(' ', '')}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(r2, work, out, "distill")
    m = distill.run(ctx) if row != "reference" else reference(ctx, d, args)
    student = Student.load(out / ("compressed" if row in COMPRESS_ROWS else "student")).to(ctx.hardware)
    score = lambda ps: expected_grade(student.predict(*d.cols(ps)))
    res = with_intervals(d, read_same_way(d, score(d.seed), score(d.dev)), resamples=args.resamples if seed == args.seeds[0] else 0)
    return {**res, "trainExamples": m.get("trainExamples") or m["teacherExamples"] + m.get("evidenceExamples", 0) + m["syntheticExamples"],
            "architecture": m.get("architecture"), "trainSeconds": m.get("trainSeconds"), "device": m.get("device"),
            **({"architectureChoice": m["architectureChoice"]} if m.get("architectureChoice") else {}),
            **({"interpolation": m["interpolation"]} if m.get("interpolation") else {}),
            **({"compression": m["compression"]} if m.get("compression") else {})}


def reference(ctx, d: Data, args) -> dict:
    """The round's student trained on every human label of the whole dataset's training split (hard labels)."""
    import torch

    from adore.stages import common
    from adore.stages.distill import AUTO, _start_head
    from adore.student.model import BI_ENCODER, Student
    from adore.student.train import Example, train

    cfg = ctx.spec.stages.distill
    # auto would train both on the whole split (hours): the reference is the default, the bi-encoder.
    arch = BI_ENCODER if cfg.architecture == AUTO else cfg.architecture
    train_pairs, items = whole_set_train(d)
    torch.manual_seed(cfg.seed)
    student = Student.create(cfg.backbone, d.grades, cfg.use_attributes, cfg.max_length, sorted(common.brands(items).brands),
                             aux_attributes=[], layers=cfg.layers, architecture=arch).to(ctx.hardware)
    _start_head(ctx, student, d.items)
    ex = [Example(p.query, items[p.item_id].title, items[p.item_id].attributes, hard=d.grades.index(p.grade))
          for p in train_pairs]
    m = train(student, ex, cfg.model_copy(update={"epochs": args.ref_epochs, "kl_weight": 0.0, "synthetic_weight": 1.0,
                                                  "aux_weight": 0.0}))
    student.save(ctx.out / "student")
    return {**m, "trainExamples": len(ex), "trainQueries": len({p.query for p in train_pairs}),
            "architecture": arch, "device": ctx.hardware.describe()}


def whole_set_train(d: Data):
    """The labelled training split of the whole dataset under the round's own query split (the
    sample's dev queries are dev here too: the split hashes the query, whatever the sample)."""
    from adore.data.importers import import_dataset
    from adore.stages.prepare import split_by_query

    ds = d.round.spec.dataset
    catalogue, pairs = import_dataset(ds.source, d.round.resolve(ds.path), d.grades)
    train, _ = split_by_query([p for p in pairs if p.grade is not None], ds.dev_fraction, ds.split_seed)
    dev_queries = {p.query for p in d.dev}
    if any(p.query in dev_queries for p in train):
        raise SystemExit("whole-set reference: a dev query of the sample fell in the training split")
    return train, catalogue


def run_row(args) -> dict:
    from adore.schema import load_round

    work = Path(args.workdir or ROOT / "runs" / f"qt-{args.dataset}")
    f = round_file(args, work)
    round_ = load_round(f, check_paths=False)
    t0 = time.time()
    upstream = {"bm25": ["prepare"], "zeroshot": ["prepare"], "reference": ["prepare"],
                "teacher": ["prepare", "sft", "align", "annotate"]}.get(args.row, ["prepare", "sft", "align", "annotate", "synthesize"])
    stage(f, work, *upstream)
    d = Data(round_, work)
    t1 = time.time()
    if args.row == "bm25":
        r = bm25_row(d, args)
    elif args.row == "zeroshot":
        r = zeroshot_row(d, args)
    elif args.row == "teacher":
        r = teacher_row(d, args, work)
    else:
        r = student_row(d, args, work, args.row)
    from adore import hardware

    key = row_key(args.row, args.distill_settings)
    r.update({"row": key, "dataset": args.dataset, "distillSettings": args.distill_settings, "devPairs": len(d.dev), "devQueries": len({p.query for p in d.dev}),
              "humanLabels": len(d.seed) if args.row != "reference" else r.get("trainExamples"),
              "rowSeconds": round(time.time() - t1, 1), "wallSeconds": round(time.time() - t0, 1),
              "upstreamStageSeconds": {s: json.loads((work / "stages" / s / "metrics.json").read_text()).get("durationSeconds")
                                       for s in upstream},
              "cpu": hardware.cpu_summary(),
              "command": " ".join(["python", "benchmarks/quality_table.py", *sys.argv[1:]])})
    rows_file = work / "rows.json"
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    rows[key] = r
    rows_file.write_text(json.dumps(rows, indent=1))
    return r


def _cell(r: dict, k: str) -> str:
    v = r.get(k)
    if v is None:
        return "–"
    text = f"{v:.3f}"
    if r.get("spread", {}).get(k) is not None:
        text += f" ±{r['spread'][k] / 2:.3f}"
    ci = r.get("ci95", {}).get(k)
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table(work: Path, dataset: str) -> str:
    rows = json.loads((work / "rows.json").read_text())
    last = "rmse" if dataset == "homedepot" else "qwk"
    cols = ["macroF1", "auc", "ndcg@10", last]
    lines = [f"| {dataset} dev | " + " | ".join(c.upper() if c in ("rmse", "qwk", "auc") else c for c in cols) + " | human labels |",
             "|---" * (len(cols) + 2) + "|"]
    names = {"teacher": "teacher (own probabilities)"}
    for name in ordered(rows):
        r = rows[name]
        lines.append(f"| {names.get(name, name)} | " + " | ".join(_cell(r, c) for c in cols) + f" | {r.get('humanLabels')} |")
        if name == "teacher":
            lines.append("| teacher (corrected) | " + " | ".join(_cell(r["corrected"], c) for c in cols) + f" | {r.get('humanLabels')} |")
    return "\n".join(lines + gap_lines(rows, cols) + map_lines(rows))


def ordered(rows: dict) -> list[str]:
    """The measured rows in the table's order, each row's --distill variants right after it."""
    return [k for row in ROWS for k in [row] * (row in rows) + sorted(k for k in rows if k.startswith(row + " ["))]


def map_lines(rows: dict) -> list[str]:
    """Each row's RMSE map, seed against dev (map_check): a diagnosis printed under the table, not a column."""
    out = [f"{name}: RMSE map slope {c['seedSlope']} on the seed (r {c['seedPearson']}) against {c['devSlope']} on dev "
           f"(r {c['devPearson']}); a dev-fitted map (an oracle) would read RMSE {c['rmseDevFittedMap']}"
           for name in ordered(rows) if (c := rows[name].get("mapCheck"))]
    return ["", *out] if out else []


def gap_closed(rows: dict, row: str, col: str) -> float | None:
    """The share of the way from BM25 to the whole-set reference that ROW covers on COL (1.0: as good as the
    reference; above 1: better). The same formula for RMSE, where lower is better: both signs flip."""
    try:
        lo, hi, v = rows["bm25"][col], rows["reference"][col], rows[row][col]
    except KeyError:
        return None
    if None in (lo, hi, v) or hi == lo:
        return None
    return (v - lo) / (hi - lo)


def gap_lines(rows: dict, cols: list[str]) -> list[str]:
    out = []
    for row in ("full", "both-labels"):
        gaps = {c: gap_closed(rows, row, c) for c in cols}
        if row in rows and any(g is not None for g in gaps.values()):
            out.append(f"\n{row}: share of the BM25-to-reference gap closed: "
                       + ", ".join(f"{c} {100 * g:.0f}%" for c, g in gaps.items() if g is not None))
            if "zeroshot" in rows:
                lower = {"rmse"}
                beats = [c for c in cols if rows[row].get(c) is not None and rows["zeroshot"].get(c) is not None
                         and (rows[row][c] < rows["zeroshot"][c] if c in lower else rows[row][c] > rows["zeroshot"][c])]
                out.append(f"{row} beats the zero-shot bi-encoder on: {', '.join(beats) or 'no column'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["homedepot", "crowdflower"], required=True)
    ap.add_argument("--row", choices=ROWS)
    ap.add_argument("--table", action="store_true", help="print the rows measured so far as markdown")
    ap.add_argument("--workdir")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--max-pairs", type=int, default=-1, help="pairs sampled by whole queries before the split (default: 16000 Home Depot, all CrowdFlower)")
    ap.add_argument("--pool", type=int, help="override dataset.poolSize (the LLM's budget)")
    ap.add_argument("--pool-selection", choices=["random", "uncertain"],
                    help="override dataset.poolSelection (which pairs the LLM labels; prepare, sft and align do not "
                         "read it, so a workdir holding another selection's first three stages reuses them)")
    ap.add_argument("--distill", action="append", metavar="KEY=VALUE",
                    help="a distill setting the row's students change (repeatable; e.g. epochs=8): the row is kept "
                         "as 'ROW [KEY=VALUE]' beside the row without it")
    ap.add_argument("--seeds", default="0,1,2", help="distill seeds of the student rows")
    ap.add_argument("--ref-epochs", type=int, default=2, help="epochs of the whole-set reference")
    ap.add_argument("--resamples", type=int, default=400, help="bootstrap resamples over dev queries")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.distill_settings = distill_settings(args.distill)
    if args.distill_settings and args.row:
        try:
            check_distill_for_row(args.row, args.distill_settings)
        except ValueError as e:
            ap.error(str(e))
    if args.max_pairs == -1:
        args.max_pairs = DEFAULT_SIZE[args.dataset]
    if args.table:
        print(table(Path(args.workdir or ROOT / "runs" / f"qt-{args.dataset}"), args.dataset))
        return
    if not args.row:
        ap.error("give --row NAME or --table")
    if not (Path(args.data) / args.dataset / "pairs.csv").is_file():
        sys.exit(f"{Path(args.data) / args.dataset / 'pairs.csv'} not found (the Kaggle sets are not shipped; --data DIR)")
    print(json.dumps(run_row(args), indent=1))


if __name__ == "__main__":
    main()
