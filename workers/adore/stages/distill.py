"""distill: train the student cross-encoder on the teacher's soft labels and the synthetic pairs."""
from __future__ import annotations

from ..data.contract import read_catalogue, read_pairs, read_records
from ..student.model import Student
from ..student.train import Example, train
from . import common
from .base import StageContext, StageError


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.distill
    grades = ctx.spec.grades
    items = common.catalogue(ctx)
    syn_items = read_catalogue(ctx.input("synthesize", "synthetic_catalogue.jsonl")) \
        if ctx.input("synthesize", "synthetic_catalogue.jsonl").stat().st_size else {}
    all_items = {**items, **syn_items}
    examples = []
    for a in read_records(ctx.input("annotate", "annotations.jsonl")):
        if a["grade"] is None:
            continue  # unparsed rationale: no label
        item = all_items[a["item_id"]]
        examples.append(Example(a["query"], item.title, item.attributes, soft=a["probs"]))
    n_teacher = len(examples)
    synthetic = read_pairs(ctx.input("synthesize", "synthetic.jsonl"), grades, all_items)
    for p in synthetic:
        item = all_items[p.item_id]
        examples.append(Example(p.query, item.title, item.attributes, hard=grades.index(p.grade)))
    if not examples:
        raise StageError("distill: no training examples (no parsed annotation and no synthetic pair)")
    student = Student.create(cfg.backbone, grades, cfg.use_attributes, cfg.max_length,
                             sorted(common.brands(items).brands), ctx.round.resolve("."))
    metrics = train(student, examples, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate,
                    temperature=cfg.temperature, synthetic_weight=cfg.synthetic_weight, seed=cfg.seed)
    student.save(ctx.out / "student")
    return {"teacherExamples": n_teacher, "syntheticExamples": len(synthetic), **metrics,
            "backbone": cfg.backbone, "useAttributes": cfg.use_attributes}
