"""align: KTO on the teacher's rationales, against shopper behaviour.

Behaviour gives a verdict where it is strong: purchases/impressions at or
above `strongPurchaseRate` says the item is relevant (top grade); clicks/
impressions below `weakClickRate` says shoppers ignore it (lowest grade).
The SFT teacher judges `pairs` training pairs with such verdicts. Then:
- agreeing rationales are desirable;
- a rationale that contradicts behaviour (or does not parse) is undesirable,
  and a corrected rule rationale with the behaviour's grade is desirable.
trl's KTOTrainer trains a new LoRA adapter on the merged SFT teacher; the
reference model is that same teacher with the adapter disabled.
"""
from __future__ import annotations

import json
import random
from collections import Counter

from ..behaviour import CLICK_MODEL_NOTE, simulate
from ..data.contract import read_behaviour, write_jsonl
from ..feedback import behaviour_from_events
from ..teacher import training
from . import common
from .base import StageContext


def behaviour_grade(b, grades: list[str], strong_purchase: float, weak_click: float) -> str | None:
    if b.impressions == 0:
        return None
    if b.purchases / b.impressions >= strong_purchase:
        return grades[-1]
    if b.clicks / b.impressions < weak_click:
        return grades[0]
    return None


def build_kto_examples(judged, verdicts, prompts, completions, fixes, grades) -> tuple[list[dict], dict]:
    """KTO rows {prompt, completion, label} from teacher judgements and behaviour verdicts.

    `completions[i]` is what the teacher wrote for pair i; `fixes[i]` a corrected completion
    carrying the behaviour's grade."""
    rows, counts = [], {"agree": 0, "tooStrict": 0, "tooLenient": 0, "unparsed": 0, "other": 0}
    for j, verdict, prompt, completion, fix in zip(judged, verdicts, prompts, completions, fixes):
        if j.grade == verdict:
            counts["agree"] += 1
            rows.append({"prompt": prompt, "completion": completion, "label": True})
            continue
        if j.grade is None:
            counts["unparsed"] += 1
        elif j.grade == grades[0] and verdict == grades[-1]:
            counts["tooStrict"] += 1
        elif j.grade == grades[-1] and verdict == grades[0]:
            counts["tooLenient"] += 1
        else:
            counts["other"] += 1
        rows.append({"prompt": prompt, "completion": completion, "label": False})
        rows.append({"prompt": prompt, "completion": fix, "label": True})
    return rows, counts


def balanced(with_verdict: list, n: int, rng: random.Random) -> list:
    """n behaviour pairs, the verdicts taken in turn (shoppers ignore far fewer pairs than they buy,
    and KTO should hear both), each verdict's pairs in an order drawn with rng."""
    by_verdict: dict[str, list] = {}
    for b, v in with_verdict:
        by_verdict.setdefault(v, []).append((b, v))
    queues = [by_verdict[v] for v in sorted(by_verdict)]
    for q in queues:
        rng.shuffle(q)
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)][:n]


def kto_examples(teacher, chosen: list, items, grades: list[str], direct: bool) -> tuple[list[dict], dict]:
    """The teacher judges the behaviour pairs (chain of thought or directly) and its verdicts become KTO rows."""
    pairs = [(b.query, items[b.item_id]) for b, _ in chosen]
    judged = teacher.judge(pairs, direct=direct, progress=f"align: judging behaviour pairs ({'direct' if direct else 'rationale'})")
    prompts = [teacher.prompt(q, it, teacher.prefix(q, it, direct)) for q, it in pairs]
    completions = [teacher.completion(q, it, j.rationale, direct) for (q, it), j in zip(pairs, judged)]
    fixes = [teacher.completion(q, it, teacher.answer(q, it, v, direct), direct) for (q, it), (_, v) in zip(pairs, chosen)]
    return build_kto_examples(judged, [v for _, v in chosen], prompts, completions, fixes, grades)


def behaviour(ctx: StageContext) -> tuple[list, str, bool]:
    """The behaviour rows KTO aligns with, a note saying where they came from, and whether they are real."""
    ds = ctx.spec.dataset
    rows, notes = [], []
    if ds.behaviour_log:
        rows += read_behaviour(ctx.resolve(ds.behaviour_log))
        notes.append("the given behaviour log")
    if ds.behaviour_events:
        events = behaviour_from_events(ctx.resolve(ds.behaviour_events))
        rows += events
        notes.append(f"{len(events)} pairs aggregated from shopper events")
    if rows:
        return rows, "REAL behaviour from " + " and ".join(notes), True
    # Only training labels: the dev split never feeds the simulator.
    return simulate(common.pairs(ctx, "train_labels"), ctx.spec.grades, ctx.spec.stages.align.click_model,
                    ds.split_seed), CLICK_MODEL_NOTE, False


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.align
    grades = ctx.spec.grades
    items = common.catalogue(ctx)
    log_rows, note, real = behaviour(ctx)
    write_jsonl(ctx.out / "behaviour.jsonl", log_rows)
    metrics = {"behaviour": note, "behaviourSimulated": not real, "logRows": len(log_rows)}
    if not cfg.enabled:
        (ctx.out / common.ADAPTERS_FILE).write_text("[]")
        _write_chain(ctx, [])
        return {**metrics, "skipped": "stages.align.enabled is false"}
    with_verdict = [(b, v) for b in log_rows if b.item_id in items
                    and (v := behaviour_grade(b, grades, cfg.strong_purchase_rate, cfg.weak_click_rate))]
    chosen = balanced(with_verdict, cfg.pairs, random.Random(ctx.spec.dataset.split_seed))
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft",)), items, training=True)
    rows, counts = [], Counter()
    for direct in common.judging_modes(ctx):
        mode_rows, mode_counts = kto_examples(teacher, chosen, items, grades, direct)
        rows += mode_rows
        counts.update(mode_counts)
    write_jsonl(ctx.out / "kto_examples.jsonl", rows)
    strong_pos = sum(v == grades[-1] for _, v in chosen) * len(common.judging_modes(ctx))
    metrics.update({"judgedPairs": len(chosen), **counts,
                    "verdicts": dict(Counter(v for _, v in chosen)),
                    "tooStrictRate": round(counts["tooStrict"] / strong_pos, 4) if strong_pos else None,
                    "desirable": sum(r["label"] for r in rows), "undesirable": sum(not r["label"] for r in rows)})
    if metrics["undesirable"] == 0 or metrics["desirable"] == 0:
        (ctx.out / common.ADAPTERS_FILE).write_text("[]")
        _write_chain(ctx, [])
        return {**metrics, "skipped": "KTO needs both desirable and undesirable examples; teacher unchanged"}
    metrics.update(training.kto(teacher, rows, ctx.out / "adapter", cfg))
    (ctx.out / common.ADAPTERS_FILE).write_text(json.dumps(["adapter"]))
    _write_chain(ctx, ["adapter"])
    return metrics


def _write_chain(ctx: StageContext, own: list[str]) -> None:
    """The whole teacher of this round, as absolute adapter paths, for the next round to start from."""
    final = ctx.input("align")  # where ctx.out is renamed to
    chain = [str(p.resolve()) for p in common.adapter_chain(ctx, after=("sft",))] + [str(final.resolve() / a) for a in own]
    (ctx.out / common.TEACHER_CHAIN).write_text(json.dumps(chain))
