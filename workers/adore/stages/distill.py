"""distill: train the student cross-encoder on the teacher's soft labels and the synthetic pairs.

Loss terms (each switched off by a zero weight in spec.stages.distill): KL to
the teacher's grade probabilities, cross-entropy on the synthetic pairs' hard
grades, and the auxiliary per-attribute match heads. Afterwards a softmax
temperature is fitted on one half of dev and stored in the student folder.
"""
from __future__ import annotations

from collections import Counter

import torch

from .. import attributes as attr
from ..data.contract import read_catalogue, read_pairs, read_records
from ..metrics import expected_grade, share_cutoffs
from ..student.calibrate import calibrate
from ..student.model import Student
from ..student.targets import aux_targets
from ..student.train import Example, train
from . import common, inherit
from .base import StageContext, StageError


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.distill
    grades = ctx.spec.grades
    items = common.catalogue(ctx)
    brands = common.brands(items)
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
    torch.manual_seed(cfg.seed)  # the aux heads and the grade head start from the same draw on every run
    student, start = _start(ctx, brands)
    head = _start_head(ctx, student, items) if start["initFrom"] == "backbone" else None
    metrics = train(student, examples, cfg)
    calibration = _calibrate(ctx, student, items) if cfg.calibration == "temperature" else {"method": "none"}
    decoding = _fit_cutoffs(ctx, student, items) if cfg.grade_decoding == "seed-cutoffs" else {"method": "argmax"}
    student.save(ctx.out / "student")
    return {**start, "architecture": cfg.architecture, "labelSource": cfg.label_source, **({"headFromSeed": head} if head else {}), "teacherExamples": n_teacher, "evidenceExamples": len(evidence_labels), "syntheticExamples": len(synthetic), **metrics,
            "backbone": cfg.backbone, "layers": student.model.config.num_hidden_layers, "useAttributes": cfg.use_attributes,
            "lossWeights": {"kl": cfg.kl_weight, "temperature": cfg.temperature, "synthetic": cfg.synthetic_weight,
                            "aux": cfg.aux_weight},
            "auxTargetSources": dict(sources) if cfg.aux_weight > 0 else {},
            "calibration": calibration, "temperature": student.meta.temperature, "gradeDecoding": decoding}


def _start(ctx: StageContext, brands) -> tuple[Student, dict]:
    """The student to train: the previous round's (distill.initFrom previous, when there is one) or a new one."""
    cfg = ctx.spec.stages.distill
    aux = list(attr.HIERARCHY) if cfg.aux_weight > 0 else []
    prev = inherit.previous_student(ctx) if cfg.init_from == "previous" else None
    if prev is None:
        try:
            student = Student.create(cfg.backbone, ctx.spec.grades, cfg.use_attributes, cfg.max_length,
                                     sorted(brands.brands), ctx.round.resolve("."), aux_attributes=aux,
                                     layers=cfg.layers, architecture=cfg.architecture)
        except ValueError as e:
            raise StageError(str(e)) from None
        why = "distill.initFrom is backbone" if cfg.init_from == "backbone" else "no previous round's student"
        return student.to(ctx.hardware), {"initFrom": "backbone", "initReason": why}
    student = Student.load(prev)
    m = student.meta
    wanted = {"architecture": cfg.architecture, "grades": ctx.spec.grades, "maxLength": cfg.max_length,
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
