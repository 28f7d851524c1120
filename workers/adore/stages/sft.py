"""sft: seed the teacher with LoRA on rationales that agree with human labels.

For every seed pair the teacher samples `samplesPerPair` rationales; those
whose grade equals the human grade are kept. When none agrees (or none
parses), the pair gets a rule rationale written from the attribute extractor
with the human grade, and the metrics count how often that happened.
"""
from __future__ import annotations

import json

from ..data.contract import write_jsonl
from ..teacher.llm import sft_lora
from ..teacher.prompt import PREFILL, consistent, parse, rule_rationale
from . import common
from .base import StageContext


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.sft
    grades = ctx.spec.grades
    items = common.catalogue(ctx)
    seed = common.pairs(ctx, "seed")
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=()), items)
    repeated = [(p.query, items[p.item_id]) for p in seed for _ in range(cfg.samples_per_pair)]
    judged = teacher.judge(repeated, ctx.spec.teacher.max_new_tokens, ctx.spec.teacher.batch_size,
                           sample=True, progress="sft: sampling seed rationales",
                           max_prompt_tokens=ctx.spec.teacher.max_prompt_tokens)
    examples, records = [], []
    parsed = agreeing = fallback = 0
    for i, p in enumerate(seed):
        samples = judged[i * cfg.samples_per_pair:(i + 1) * cfg.samples_per_pair]
        parsed += sum(j.grade is not None for j in samples)
        # Agreeing, and consistent with the rules: a rationale that agrees with the human only by
        # chance (template placeholders, a type mismatch graded exact) is not kept.
        good = [j for j in samples if j.grade == p.grade
                and consistent(parse(j.rationale.removeprefix(PREFILL), grades), grades)]
        item = items[p.item_id]
        if good:
            agreeing += 1
            rationale, origin = good[0].rationale, "teacher"
        else:
            fallback += 1
            rationale, origin = rule_rationale(p.query, item, p.grade, teacher.brands).text(), "rules"
        examples.append((teacher.prompt(p.query, item), teacher.completion(p.query, item, rationale)))
        records.append({"query": p.query, "item_id": p.item_id, "grade": p.grade, "origin": origin,
                        "rationale": rationale})
    write_jsonl(ctx.out / "seed_rationales.jsonl", records)
    train = sft_lora(teacher, examples, ctx.out / "adapter", epochs=cfg.epochs, lr=cfg.learning_rate,
                     batch_size=cfg.batch_size, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    (ctx.out / common.ADAPTERS_FILE).write_text(json.dumps(["adapter"]))
    return {"seedPairs": len(seed), "samples": len(judged), "parsedSamples": parsed,
            "pairsWithAgreeingRationale": agreeing, "pairsWithRuleRationale": fallback,
            "humanLabelsUsed": len(seed), **{f"train_{k}": v for k, v in train.items()}}
