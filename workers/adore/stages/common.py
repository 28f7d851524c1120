"""Helpers shared by stages: reading prepared data, loading the teacher."""
from __future__ import annotations

import json
from pathlib import Path

from ..attributes import BrandLexicon
from ..data.contract import Item, Pair, read_catalogue, read_pairs
from ..teacher.llm import Teacher
from .base import StageContext

ADAPTERS_FILE = "adapters.json"


def catalogue(ctx: StageContext) -> dict[str, Item]:
    return read_catalogue(ctx.input("prepare", "catalogue.jsonl"))


def pairs(ctx: StageContext, name: str) -> list[Pair]:
    return read_pairs(ctx.input("prepare", f"{name}.jsonl"), ctx.spec.grades)


def brands(items: dict[str, Item]) -> BrandLexicon:
    return BrandLexicon.from_catalogue(items.values())


def adapter_chain(ctx: StageContext, upto: str) -> list[Path]:
    """Adapters to apply, in order: the round's starting adapter, then sft's, then align's."""
    chain: list[Path] = []
    if ctx.spec.teacher.adapter:
        chain.append(ctx.resolve(ctx.spec.teacher.adapter))
    for stage in ("sft", "align"):
        manifest = ctx.input(stage, ADAPTERS_FILE)
        if manifest.is_file():
            chain += [ctx.input(stage, a) for a in json.loads(manifest.read_text())]
        if stage == upto:
            break
    return chain


def load_teacher(ctx: StageContext, adapters: list[Path]) -> Teacher:
    t = ctx.spec.teacher
    rules = ctx.resolve(t.rules_file).read_text(encoding="utf-8")
    return Teacher.load(t.model, rules, ctx.spec.grades, adapters, ctx.round.resolve("."))


def teacher_files(round_) -> list[Path]:
    files = [round_.resolve(round_.spec.teacher.rules_file)]
    if round_.spec.teacher.adapter:
        files.append(round_.resolve(round_.spec.teacher.adapter))
    return files

