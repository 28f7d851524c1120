"""Helpers shared by stages: reading prepared data, loading the teacher."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..attributes import BrandLexicon
from ..data.contract import Item, Pair, read_catalogue, read_pairs
from ..teacher.demos import DemoBank
from ..teacher.llm import JudgeSettings, Teacher
from .base import StageContext, StageError, stage_dir
from .inherit import previous_workdir

ADAPTERS_FILE = "adapters.json"
EVIDENCE_LABELS = "evidence_labels.jsonl"  # annotate writes, distill reads: the evidence pool's labels


def catalogue(ctx: StageContext) -> dict[str, Item]:
    return read_catalogue(ctx.input("prepare", "catalogue.jsonl"))


def pairs(ctx: StageContext, name: str) -> list[Pair]:
    return read_pairs(ctx.input("prepare", f"{name}.jsonl"), ctx.spec.grades)


def columns(pairs: list[Pair], items: dict[str, Item]) -> tuple[list[str], list[str], list[dict]]:
    """(queries, titles, attributes) of the pairs: what a Student scores."""
    return [p.query for p in pairs], [items[p.item_id].title for p in pairs], [items[p.item_id].attributes for p in pairs]


def gold(pairs: list[Pair], grades: list[str]) -> np.ndarray:
    """Human grade indices (0 = lowest) of labelled pairs."""
    return np.array([grades.index(p.grade) for p in pairs])


def brands(items: dict[str, Item]) -> BrandLexicon:
    return BrandLexicon.from_catalogue(items.values())


TEACHER_CHAIN = "teacher_chain.json"


def inherited_chain(ctx: StageContext) -> list[Path]:
    """The previous round's whole adapter chain (its align stage records it), when there is one.

    Rounds of one lineage share a parent folder (runs/ locally, the workdir claim on a cluster).
    """
    if not ctx.spec.previous_round:
        return []
    f = stage_dir(previous_workdir(ctx), "align") / TEACHER_CHAIN
    if not f.is_file():
        raise StageError(f"spec.previousRound: {ctx.spec.previous_round!r} has no completed align stage at {f.parent}")
    return [Path(p) for p in json.loads(f.read_text())]


def adapter_chain(ctx: StageContext, after: tuple[str, ...]) -> list[Path]:
    """Adapters to apply, in order: the previous round's chain, the spec's starting adapter,
    then those of the given stages of this round (e.g. ("sft", "align"))."""
    chain: list[Path] = inherited_chain(ctx)
    if ctx.spec.teacher.adapter:
        chain.append(ctx.resolve(ctx.spec.teacher.adapter))
    for stage in after:
        manifest = ctx.input(stage, ADAPTERS_FILE)
        chain += [ctx.input(stage, a) for a in json.loads(manifest.read_text())]
    return chain


def load_teacher(ctx: StageContext, adapters: list[Path], items: dict[str, Item], training: bool = False) -> Teacher:
    """The round's teacher with these adapters merged, on the stage's hardware (training: the stage fine-tunes it)."""
    t, hw = ctx.spec.teacher, ctx.hardware
    rules = ctx.resolve(t.rules_file).read_text(encoding="utf-8")
    teacher = Teacher.load(t.model, rules, ctx.spec.grades, adapters, ctx.round.resolve("."), brands=brands(items),
                           prefill_attributes=t.prefill_attributes, hardware=hw, training=training,
                           settings=JudgeSettings.of(t, hw), direct_prefill=t.direct_prefill == "rules")
    if t.demonstrations:
        teacher.demos = demo_bank(ctx, items, teacher.brands, t.demonstrations)
    return teacher


def demo_bank(ctx: StageContext, items: dict[str, Item], lexicon, k: int) -> DemoBank:
    """The seed's pairs as in-context demonstrations (the seed is drawn from the training split only)."""
    from ..models import MINILM, resolve
    from ..similarity import embedder

    seed = pairs(ctx, "seed")
    model = ctx.spec.stages.annotate.embedding_evidence or MINILM
    return DemoBank([(p.query, items[p.item_id], p.grade) for p in seed], k,
                    embedder(resolve(model, ctx.resolve(".")), ctx.hardware), lexicon)


def judging_modes(ctx: StageContext) -> list[bool]:
    """How annotate judges (False: chain of thought, True: direct), so SFT and KTO tune the teacher
    in the same format(s) it will label the pool with."""
    a = ctx.spec.stages.annotate
    if not a.rationale or a.rationale_share == 0:
        return [True]
    return [False] if a.rationale_share >= 1 else [False, True]


def teacher_files(round_) -> list[Path]:
    files = [round_.resolve(round_.spec.teacher.rules_file)]
    if round_.spec.teacher.adapter:
        files.append(round_.resolve(round_.spec.teacher.adapter))
    return files

