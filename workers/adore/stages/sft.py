"""sft: seed the teacher with LoRA on rationales that agree with human labels.

The teacher is tuned in the format(s) annotate will judge in (common.judging_modes):
- chain of thought: for every seed pair the teacher samples `samplesPerPair` rationales;
  those whose grade equals the human grade (and whose comparison does not contradict it)
  are kept. When none agrees (or none parses), the pair gets a rule rationale written from
  the attribute extractor with the human grade, and the metrics count how often that happened.
- direct: the completion after 'Grade:' is the human grade itself.
"""
from __future__ import annotations

import json

from ..data.contract import write_jsonl
from ..teacher import training
from ..teacher.prompt import consistent
from . import common
from .base import StageContext


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.sft
    items = common.catalogue(ctx)
    seed = common.pairs(ctx, "seed")
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=()), items, training=True)
    examples, records, metrics = [], [], {"seedPairs": len(seed), "humanLabelsUsed": len(seed)}
    for direct in common.judging_modes(ctx):
        made = direct_examples(teacher, seed, items) if direct else rationale_examples(ctx, teacher, seed, items, metrics)
        examples += [ex for ex, _ in made]
        records += [rec for _, rec in made]
    write_jsonl(ctx.out / "seed_rationales.jsonl", records)
    metrics.update(training.sft(teacher, examples, ctx.out / "adapter", cfg))
    (ctx.out / common.ADAPTERS_FILE).write_text(json.dumps(["adapter"]))
    return {**metrics, "sftExamples": len(examples)}


def _record(p, origin: str, answer: str, judging: str) -> dict:
    return {"query": p.query, "item_id": p.item_id, "grade": p.grade, "origin": origin, "rationale": answer,
            "judging": judging}


def direct_examples(teacher, seed, items) -> list[tuple[tuple[str, str], dict]]:
    out = []
    for p in seed:
        item = items[p.item_id]
        answer = teacher.answer(p.query, item, p.grade, direct=True)
        out.append((teacher.training_pair(p.query, item, answer, direct=True), _record(p, "human", answer, "direct")))
    return out


def rationale_examples(ctx: StageContext, teacher, seed, items, metrics: dict) -> list[tuple[tuple[str, str], dict]]:
    cfg, grades = ctx.spec.stages.sft, ctx.spec.grades
    repeated = [(p.query, items[p.item_id]) for p in seed for _ in range(cfg.samples_per_pair)]
    judged = teacher.judge(repeated, sample=True, progress="sft: sampling seed rationales")
    out = []
    parsed = agreeing = fallback = 0
    for i, p in enumerate(seed):
        samples = judged[i * cfg.samples_per_pair:(i + 1) * cfg.samples_per_pair]
        parsed += sum(j.parsed is not None for j in samples)
        # Agreeing, and consistent with the rules: a rationale that agrees with the human only by
        # chance (template placeholders, a type mismatch graded exact) is not kept.
        good = [j for j in samples if j.grade == p.grade and consistent(j.parsed, grades)]
        item = items[p.item_id]
        if good:
            agreeing += 1
            answer, origin = good[0].rationale, "teacher"
        else:
            fallback += 1
            answer, origin = teacher.answer(p.query, item, p.grade), "rules"
        out.append((teacher.training_pair(p.query, item, answer), _record(p, origin, answer, "rationale")))
    metrics.update({"samples": len(judged), "parsedSamples": parsed, "pairsWithAgreeingRationale": agreeing,
                    "pairsWithRuleRationale": fallback})
    return out
