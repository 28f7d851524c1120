"""distill: train the student (bi-encoder, cross-encoder, or both under auto) on the teacher's soft labels and the synthetic pairs.

Loss terms (each switched off by a zero weight in spec.stages.distill): KL to
the teacher's grade probabilities, cross-entropy on the synthetic pairs' hard
grades, and the auxiliary per-attribute match heads. Afterwards a softmax
temperature is fitted on one half of dev and stored in the student folder.
With distill.compress the trained student then teaches a shallower one
(compressed/), which promote ships when it keeps the quality.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import torch

from .. import attributes as attr
from ..data.contract import read_catalogue, read_pairs, read_records
from ..metrics import expected_grade, graded_report, nll, share_cutoffs, softmax
from ..student import interpolate
from ..student.calibrate import calibrate, fit_temperature, split_by_query
from ..student.model import BI_ENCODER, CROSS_ENCODER, Student
from ..student.targets import aux_targets
from ..student.train import Example, train
from . import common, inherit
from .base import StageContext, StageError

AUTO = "auto"
AUTO_CANDIDATES = (BI_ENCODER, CROSS_ENCODER)
COMPRESSED = "compressed"  # the folder of distill.compress's shallower student, beside student/


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.distill
    items = common.catalogue(ctx)
    brands = common.brands(items)
    examples, n_teacher, n_evidence, n_synthetic, sources = training_examples(ctx, items, brands)
    archs = _architectures(ctx)
    runs = [_distil(ctx, arch, examples, brands, items, select=len(archs) > 1) for arch in archs]
    choice = None
    if len(runs) > 1:
        candidates = {r["architecture"]: {**r["selection"], "trainSeconds": r["metrics"].get("trainSeconds")} for r in runs}
        chosen, reason = choose_architecture(candidates, cfg.architecture_tolerance)
        choice = {"candidates": candidates, "chosen": chosen, "reason": reason, "tolerance": cfg.architecture_tolerance}
        runs = [r for r in runs if r["architecture"] == chosen]
    run_ = runs[0]
    student = run_["student"]
    compression = _compress(ctx, student, examples, brands, items, run_["architecture"]) if cfg.compress else None
    student.save(ctx.out / "student")
    if compression:
        compression.pop("student").save(ctx.out / COMPRESSED)
    return {**run_["start"], "architecture": run_["architecture"], **({"architectureChoice": choice} if choice else {}),
            "labelSource": cfg.label_source, **({"headFromSeed": run_["head"]} if run_["head"] else {}),
            "teacherExamples": n_teacher, "evidenceExamples": n_evidence, "syntheticExamples": n_synthetic,
            **run_["metrics"], "backbone": cfg.backbone, "layers": student.model.config.num_hidden_layers,
            "useAttributes": cfg.use_attributes,
            "lossWeights": {"kl": cfg.kl_weight, "temperature": cfg.temperature, "synthetic": cfg.synthetic_weight,
                            "aux": cfg.aux_weight},
            "auxTargetSources": dict(sources) if cfg.aux_weight > 0 else {},
            "calibration": run_["calibration"], "temperature": student.meta.temperature, "gradeDecoding": run_["decoding"],
            **({"compression": compression} if compression else {})}


def training_examples(ctx: StageContext, items: dict, brands) -> tuple[list[Example], int, int, int, Counter]:
    """What the student learns: annotate's labelled pool (and evidence pool), then the synthetic near misses;
    with how many of each and where the aux targets came from."""
    cfg = ctx.spec.stages.distill
    grades = ctx.spec.grades
    syn_items = read_catalogue(ctx.input("synthesize", "synthetic_catalogue.jsonl")) \
        if ctx.input("synthesize", "synthetic_catalogue.jsonl").stat().st_size else {}
    all_items = {**items, **syn_items}
    examples, sources = [], Counter()
    evidence_file = ctx.input("annotate", common.EVIDENCE_LABELS)
    use_pool = evidence_file.is_file() and cfg.use_evidence_pool and cfg.label_source != "teacher"
    evidence_labels = list(read_records(evidence_file)) if use_pool else []
    for a in [*read_records(ctx.input("annotate", "annotations.jsonl")), *evidence_labels]:
        soft = label_of(a, cfg.label_source)
        if soft is None:
            continue  # unparsed rationale: no label
        item = all_items[a["item_id"]]
        qa = a.get("query_attributes") or attr.extract(a["query"], brands=brands)
        ia = a.get("item_attributes") or attr.extract(item.title, item.attributes, brands)
        aux, src = aux_targets(a, qa, ia)
        sources[src] += 1
        examples.append(Example(a["query"], item.title, item.attributes, soft=soft, aux=aux))
    n_teacher = len(examples) - len(evidence_labels)
    synthetic = read_pairs(ctx.input("synthesize", "synthetic.jsonl"), grades, all_items)
    for p in synthetic:
        item = all_items[p.item_id]
        aux, src = aux_targets(None, attr.extract(p.query, brands=brands), attr.extract(item.title, item.attributes, brands))
        sources[src] += 1
        examples.append(Example(p.query, item.title, item.attributes, hard=grades.index(p.grade), aux=aux))
    if not examples:
        raise StageError("distill: no training examples (no parsed annotation and no synthetic pair)")
    return examples, n_teacher, len(evidence_labels), len(synthetic), sources


def _architectures(ctx: StageContext) -> list[str]:
    """What distill trains: the architecture asked for; for auto both, unless a previous student is continued
    (distill.initFrom previous): a lineage keeps the architecture its first round chose."""
    cfg = ctx.spec.stages.distill
    if cfg.architecture != AUTO:
        return [cfg.architecture]
    prev = inherit.previous_student(ctx) if cfg.init_from == "previous" else None
    if prev is not None:
        return [Student.load_meta(prev).architecture]
    return list(AUTO_CANDIDATES)


def _distil(ctx: StageContext, architecture: str, examples: list[Example], brands, items: dict, select: bool,
            begin: tuple[Student, dict] | None = None, embedding_weight: float = 0.0) -> dict:
    """One student of one architecture, trained, calibrated and read through the seed cut-offs
    (and, when it competes with another, scored on the selection half of dev). begin: the student to
    train and how it was made, instead of distill.initFrom's; embedding_weight: the embedding term's
    (examples carrying a teacher's embeddings, distill.compress)."""
    cfg = ctx.spec.stages.distill
    torch.manual_seed(cfg.seed)  # the aux heads and the grade head start from the same draw on every run
    student, start = begin or _start(ctx, brands, architecture)
    head = _start_head(ctx, student, items) if start["initFrom"] == "backbone" else None
    before = interpolate.snapshot(student.model) if cfg.interpolation != [1.0] else None
    metrics = train(student, examples, cfg, embedding_weight=embedding_weight)
    mix = _interpolate(ctx, student, before, items) if before is not None else None
    calibration = _calibrate(ctx, student, items) if cfg.calibration == "temperature" else {"method": "none"}
    decoding = _fit_cutoffs(ctx, student, items) if cfg.grade_decoding == "seed-cutoffs" else {"method": "argmax"}
    return {"architecture": architecture, "student": student, "start": start, "head": head,
            "metrics": {**metrics, **({"interpolation": mix} if mix else {})},
            "calibration": calibration, "decoding": decoding,
            "selection": _selection_scores(ctx, student, items) if select else None}


def _compress(ctx: StageContext, teacher: Student, examples: list[Example], brands, items: dict, architecture: str) -> dict:
    """The second distillation (distill.compress): the trained, calibrated student labels every pair it learned
    from with its grade probabilities, and a copy of it keeping compress.layers of its layers (shallow_layers)
    learns them (the synthetic pairs keep their hard grades), trained, calibrated and decoded as the first.
    Both are scored on dev's held-out half, as auto scores its candidates; promote decides which ships."""
    cfg = ctx.spec.stages.distill
    depth = teacher.model.config.num_hidden_layers
    if cfg.compress.layers >= depth:
        raise StageError(f"spec.stages.distill.compress.layers: {cfg.compress.layers} is not fewer than the first "
                         f"student's {depth} layers: the second student must be the shallower one")
    soft = [e for e in examples if e.soft is not None]
    probs = iter(teacher.predict([e.query for e in soft], [e.title for e in soft], [e.attributes for e in soft]))
    taught = [dataclasses.replace(e, soft=[float(x) for x in next(probs)]) if e.soft is not None else e for e in examples]
    embedding_weight = cfg.compress.embedding_weight if teacher.is_bi else 0.0
    if embedding_weight > 0:  # every pair, the synthetic ones too: the embeddings need no label
        u, v = teacher.embeddings([e.query for e in taught], [e.title for e in taught], [e.attributes for e in taught])
        taught = [dataclasses.replace(e, embeddings=(u[i], v[i])) for i, e in enumerate(taught)]
    # The shallow student starts as the trained one with evenly spaced layers kept, the first and the last
    # among them (its head reads the last layer's space): the first layers of the pretrained backbone with
    # a fresh seed head learnt these labels far worse on Home Depot (dev AUC 0.658 against the first's 0.79).
    keep = shallow_layers(depth, cfg.compress.layers)
    shallow = teacher.with_layers(keep)
    shallow.meta.temperature, shallow.meta.calibration, shallow.meta.grade_cutoffs = 1.0, {}, []
    # begin= gives _distil the student, so only what trains it changes here.
    sub = _with_distill(ctx, epochs=cfg.compress.epochs or cfg.epochs, interpolation=[1.0], compress=None)
    run_ = _distil(sub, architecture, taught, brands, items, select=True,
                   begin=(shallow.to(ctx.hardware), {"initFrom": "first student", "keptLayers": keep}),
                   embedding_weight=embedding_weight)
    return {"student": run_["student"], "layers": cfg.compress.layers, "keptLayers": keep,
            "epochs": cfg.compress.epochs or cfg.epochs, "embeddingWeight": embedding_weight,
            "meanTerms": run_["metrics"].get("meanTerms"),
            "taughtExamples": len(soft), "syntheticExamples": len(examples) - len(soft),
            **{k: run_["metrics"].get(k) for k in ("trainSeconds", "steps")},
            "temperature": run_["student"].meta.temperature, "gradeDecoding": run_["decoding"],
            "selection": {"first": _selection_scores(ctx, teacher, items), COMPRESSED: run_["selection"]}}


def shallow_layers(depth: int, n: int) -> list[int]:
    """n of a student's depth layers, evenly spaced, the first and the last kept (6 -> 3: 0, 2, 5)."""
    if n == 1:
        return [depth - 1]
    return sorted({round(i * (depth - 1) / (n - 1) - 1e-9) for i in range(n)})


def _with_distill(ctx: StageContext, **update) -> StageContext:
    """The same stage context with some distill settings changed (no validation: the callers set known values)."""
    spec = ctx.spec
    stages = spec.stages.model_copy(update={"distill": spec.stages.distill.model_copy(update=update)})
    return dataclasses.replace(ctx, round=ctx.round.model_copy(update={"spec": spec.model_copy(update={"stages": stages})}))


def _selection_scores(ctx: StageContext, student: Student, items: dict) -> dict:
    """macro-F1 and AUC on the half of dev the temperature was not fitted on (calibrate's held-out half),
    read as evaluate reads the student: its calibrated probabilities through its grade decoding."""
    dev = common.pairs(ctx, "dev")
    if not dev:
        return {"pairs": 0, "macroF1": None, "auc": None}
    _, held = split_by_query([p.query for p in dev])
    sel = [dev[i] for i in held]
    probs = student.predict(*common.columns(sel, items))
    gold = common.gold(sel, ctx.spec.grades)
    report = graded_report([p.query for p in sel], gold, student.grade(probs), expected_grade(probs), ctx.spec.grades)
    return {"pairs": len(sel), "macroF1": report["macroF1"], "auc": report["auc"]}


def _interpolate(ctx: StageContext, student: Student, start: dict, items: dict) -> dict:
    """Blend the trained student with the one it started as (distill.interpolation), keeping the weight whose
    AUC (then NLL, after its own temperature) is best on the half of dev the temperature is fitted on
    (calibrate's fit half): the other half stays unseen by every choice distill makes on dev but auto's.
    AUC, not NLL: on CrowdFlower the fit half's NLL was flat from 0.7 to 1 while AUC and QWK peaked
    at 0.5-0.7 (a blend grid over a trained CrowdFlower student, 2026-12-03, not kept in the repository)."""
    weights = ctx.spec.stages.distill.interpolation
    trained = interpolate.snapshot(student.model)
    dev = common.pairs(ctx, "dev")
    fit = [dev[i] for i in split_by_query([p.query for p in dev])[0]] if dev else []
    if len(weights) == 1 or len(fit) < 4:
        chosen = weights[-1]  # sorted: the one listed, or the most trained of them
        interpolate.blend(student.model, start, trained, chosen)
        why = "the one weight listed" if len(weights) == 1 else f"dev's fit half has {len(fit)} pairs (< 4): the largest weight"
        return {"weight": chosen, "reason": why, "candidates": []}
    cols, gold = common.columns(fit, items), common.gold(fit, ctx.spec.grades)
    candidates = []
    for a in weights:
        interpolate.blend(student.model, start, trained, a)
        logits = student.logits(*cols)
        t = fit_temperature(logits, gold)
        probs = softmax(logits / t)
        report = graded_report(cols[0], gold, probs.argmax(1), expected_grade(probs), ctx.spec.grades)
        candidates.append({"weight": a, "nll": round(nll(probs, gold), 4), "temperature": round(t, 4),
                           "auc": report["auc"]})
    best = choose_interpolation(candidates)
    interpolate.blend(student.model, start, trained, best["weight"])
    return {"weight": best["weight"], "reason": f"highest AUC, then lowest NLL, on dev's fit half ({len(fit)} pairs)",
            "candidates": candidates}


def choose_interpolation(candidates: list[dict]) -> dict:
    """The candidate with the highest AUC (a dev half with one class has none: NLL alone), then the lowest NLL,
    then the largest weight (the more trained student)."""
    return max(candidates, key=lambda c: (c["auc"] if c["auc"] is not None else -1.0, -c["nll"], c["weight"]))


def choose_architecture(candidates: dict[str, dict], tolerance: float) -> tuple[str, str]:
    """The architecture distill.architecture auto keeps. The bi-encoder unless the cross-encoder's dev macro-F1
    is higher by more than the tolerance: within it, the bi-encoder serves 100 candidates from one query
    embedding (item embeddings computed at promotion), about 50x the cross-encoder's pairs/s on a CPU
    (docs/student.md). Macro-F1 ties (a small selection half) are broken by AUC beyond the same tolerance."""
    bi, cross = candidates[BI_ENCODER], candidates[CROSS_ENCODER]
    for key in ("macroF1", "auc"):
        b, c = bi.get(key), cross.get(key)
        if b is None or c is None:
            continue
        if c - b > tolerance:
            return CROSS_ENCODER, f"cross-encoder {key} {c:.4f} > bi-encoder {b:.4f} + {tolerance:g}"
        if b - c > tolerance or key == "auc":
            return BI_ENCODER, (f"bi-encoder {key} {b:.4f} vs cross-encoder {c:.4f}: "
                                + ("higher" if b - c > tolerance else f"within {tolerance:g}, the faster one"))
    return BI_ENCODER, "no dev pairs to compare on: the faster one"


def _start(ctx: StageContext, brands, architecture: str) -> tuple[Student, dict]:
    """The student to train: the previous round's (distill.initFrom previous, when there is one) or a new one."""
    cfg = ctx.spec.stages.distill
    aux = list(attr.HIERARCHY) if cfg.aux_weight > 0 else []
    prev = inherit.previous_student(ctx) if cfg.init_from == "previous" else None
    if prev is None:
        try:
            student = Student.create(cfg.backbone, ctx.spec.grades, cfg.use_attributes, cfg.max_length,
                                     sorted(brands.brands), ctx.round.resolve("."), aux_attributes=aux,
                                     layers=cfg.layers, architecture=architecture)
        except ValueError as e:
            raise StageError(str(e)) from None
        why = "distill.initFrom is backbone" if cfg.init_from == "backbone" else "no previous round's student"
        return student.to(ctx.hardware), {"initFrom": "backbone", "initReason": why}
    student = Student.load(prev)
    m = student.meta
    wanted = {"architecture": architecture, "grades": ctx.spec.grades, "maxLength": cfg.max_length,
              "useAttributes": cfg.use_attributes, "auxAttributes": aux}
    found = {"architecture": m.architecture, "grades": m.grades, "maxLength": m.max_length,
             "useAttributes": m.use_attributes, "auxAttributes": m.aux_attributes}
    differ = [f"{k} {found[k]!r} (this round: {wanted[k]!r})" for k in wanted if found[k] != wanted[k]]
    if differ:
        raise StageError(f"spec.stages.distill.initFrom: previous, but the student of {ctx.spec.previous_round} at {prev} "
                         f"cannot continue here: " + "; ".join(differ) + ". Set initFrom: backbone, or match them.")
    # This round's catalogue names the brands the item text marks; the weights carry over unchanged.
    m.brands = sorted(brands.brands)
    student.lexicon = attr.BrandLexicon(m.brands)
    m.temperature, m.calibration, m.grade_cutoffs = 1.0, {}, []  # refitted on this round's dev and seed
    return student.to(ctx.hardware), {"initFrom": "previous", "previousStudent": str(prev)}


def label_of(record: dict, source: str) -> list[float] | None:
    """The soft label of an annotation for distill.labelSource (evidence-pool records carry one label)."""
    if record["grade"] is None:
        return None
    if source == "both" or record.get("source") == "evidence":
        return record["probs"]
    labels = record.get("labels") or {}
    if source not in labels:
        raise StageError(f"spec.stages.distill.labelSource: {source}, but annotate wrote no {source}-only labels "
                         "(they need stages.annotate.calibrate and, for evidence, some evidence switched on)")
    return labels[source]


def _start_head(ctx: StageContext, student: Student, items: dict) -> dict | None:
    """A bi-encoder starts from the backbone's cosine read through an ordinal head fitted on the human seed."""
    seed = common.pairs(ctx, "seed")
    if not student.is_bi or len(seed) < len(ctx.spec.grades):
        return None
    return student.fit_head(*common.columns(seed, items), common.gold(seed, ctx.spec.grades))


def _fit_cutoffs(ctx: StageContext, student: Student, items: dict) -> dict:
    """Seed-fitted cut-offs on the calibrated expected grade (after the temperature, which moves it)."""
    seed = common.pairs(ctx, "seed")
    grades = ctx.spec.grades
    if len(seed) < len(grades):
        return {"method": "argmax", "reason": f"the seed has {len(seed)} pairs, fewer than the {len(grades)} grades"}
    probs = student.predict(*common.columns(seed, items))
    gold = common.gold(seed, grades)
    cutoffs = share_cutoffs(expected_grade(probs), gold, len(grades))
    student.meta.grade_cutoffs = [round(float(c), 6) for c in cutoffs]
    return {"method": "seed-cutoffs", "cutoffs": student.meta.grade_cutoffs, "seedPairs": len(seed),
            "seedAccuracyArgmax": round(float((probs.argmax(1) == gold).mean()), 4),
            "seedAccuracyCutoffs": round(float((student.grade(probs) == gold).mean()), 4)}


def _calibrate(ctx: StageContext, student: Student, items: dict) -> dict:
    dev = common.pairs(ctx, "dev")
    if len(dev) < 4:
        return {"method": "none", "reason": f"dev has {len(dev)} pairs (< 4)"}
    cols = common.columns(dev, items)
    result = calibrate(student.logits(*cols), common.gold(dev, ctx.spec.grades), cols[0])
    student.meta.temperature = result["temperature"]
    student.meta.calibration = result
    return result
