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
import time

from ..behaviour import CLICK_MODEL_NOTE, simulate
from ..data.contract import read_behaviour, write_jsonl
from ..teacher.llm import lora_config
from ..teacher.prompt import rule_rationale
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


def run(ctx: StageContext) -> dict:
    cfg = ctx.spec.stages.align
    grades = ctx.spec.grades
    items = common.catalogue(ctx)
    if ctx.spec.dataset.behaviour_log:
        log_rows, note = read_behaviour(ctx.resolve(ctx.spec.dataset.behaviour_log)), "behaviour from the given log"
    else:
        # Only training labels: the dev split never feeds the simulator.
        log_rows, note = simulate(common.pairs(ctx, "train_labels"), grades, cfg.click_model,
                                  ctx.spec.dataset.split_seed), CLICK_MODEL_NOTE
    write_jsonl(ctx.out / "behaviour.jsonl", log_rows)
    metrics = {"behaviour": note, "behaviourSimulated": not ctx.spec.dataset.behaviour_log, "logRows": len(log_rows)}
    if not cfg.enabled:
        (ctx.out / common.ADAPTERS_FILE).write_text("[]")
        _write_chain(ctx, [])
        return {**metrics, "skipped": "stages.align.enabled is false"}
    with_verdict = [(b, v) for b in log_rows if b.item_id in items
                    and (v := behaviour_grade(b, grades, cfg.strong_purchase_rate, cfg.weak_click_rate))]
    rng = random.Random(ctx.spec.dataset.split_seed)
    rng.shuffle(with_verdict)
    chosen = with_verdict[:cfg.pairs]
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft",)), items)
    judged = teacher.judge([(b.query, items[b.item_id]) for b, _ in chosen], ctx.spec.teacher.max_new_tokens,
                           ctx.spec.teacher.batch_size, progress="align: judging behaviour pairs",
                           max_prompt_tokens=ctx.spec.teacher.max_prompt_tokens)
    prompts = [teacher.prompt(b.query, items[b.item_id]) for b, _ in chosen]
    completions = [teacher.completion(b.query, items[b.item_id], j.rationale) for (b, _), j in zip(chosen, judged)]
    fixes = [teacher.completion(b.query, items[b.item_id], rule_rationale(b.query, items[b.item_id], v, teacher.brands).text())
             for b, v in chosen]
    rows, counts = build_kto_examples(judged, [v for _, v in chosen], prompts, completions, fixes, grades)
    write_jsonl(ctx.out / "kto_examples.jsonl", rows)
    strong_pos = [j for j, (_, v) in zip(judged, chosen) if v == grades[-1]]
    metrics.update({"judgedPairs": len(chosen), **counts,
                    "tooStrictRate": round(counts["tooStrict"] / len(strong_pos), 4) if strong_pos else None,
                    "desirable": sum(r["label"] for r in rows), "undesirable": sum(not r["label"] for r in rows)})
    if metrics["undesirable"] == 0 or metrics["desirable"] == 0:
        (ctx.out / common.ADAPTERS_FILE).write_text("[]")
        _write_chain(ctx, [])
        return {**metrics, "skipped": "KTO needs both desirable and undesirable examples; teacher unchanged"}
    metrics.update(train_kto(teacher, rows, ctx.out, cfg))
    (ctx.out / common.ADAPTERS_FILE).write_text(json.dumps(["adapter"]))
    _write_chain(ctx, ["adapter"])
    return metrics


def _write_chain(ctx: StageContext, own: list[str]) -> None:
    """The whole teacher of this round, as absolute adapter paths, for the next round to start from."""
    final = ctx.input("align")  # where ctx.out is renamed to
    chain = [str(p.resolve()) for p in common.adapter_chain(ctx, after=("sft",))] + [str(final.resolve() / a) for a in own]
    (ctx.out / common.TEACHER_CHAIN).write_text(json.dumps(chain))


def train_kto(teacher, rows: list[dict], out, cfg) -> dict:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    n_des = sum(r["label"] for r in rows)
    n_und = len(rows) - n_des
    # Balance the classes: trl advises desirable_weight*n_des / (undesirable_weight*n_und) in [1, 4/3].
    und_w = cfg.undesirable_weight * max(1.0, n_des / max(n_und, 1))
    des_w = cfg.desirable_weight * max(1.0, n_und / max(n_des, 1))
    args = KTOConfig(
        output_dir=str(out / "kto-trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, beta=cfg.beta, desirable_weight=des_w, undesirable_weight=und_w,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, max_length=768,
        disable_tqdm=False, dataloader_num_workers=0, seed=0,
    )
    t0 = time.time()
    trainer = KTOTrainer(model=teacher.model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=teacher.tokenizer, peft_config=lora_config(8, 16))
    result = trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    import shutil

    shutil.rmtree(out / "kto-trainer", ignore_errors=True)
    return {"ktoSteps": result.global_step, "ktoFirstLoss": losses[0] if losses else None,
            "ktoLastLoss": losses[-1] if losses else None, "desirableWeight": round(des_w, 3),
            "undesirableWeight": round(und_w, 3), "ktoSeconds": round(time.time() - t0, 1)}
