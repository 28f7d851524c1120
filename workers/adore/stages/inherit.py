"""What a round takes from the round it builds on (spec.previousRound), beyond the teacher's chain.

Rounds of one lineage share a parent folder (runs/ locally, the workdir
claim on a cluster), so the previous round's artefacts lie at
WORKDIR/../PREVIOUS. Here: the pairs its promoted student served with low
confidence (the request log), as the next pool's annotation candidates.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data.contract import Item, Pair
from ..serving.request_log import read_request_log
from ..serving.backend import STUDENT_META  # student.model.META; that module pulls in torch
from .base import StageContext, stage_dir


def previous_workdir(ctx: StageContext) -> Path | None:
    return ctx.workdir.parent / ctx.spec.previous_round if ctx.spec.previous_round else None


def previous_promotion(ctx: StageContext) -> dict | None:
    """The previous round's promotion.json when it promoted a student, else None."""
    prev = previous_workdir(ctx)
    f = stage_dir(prev, "promote") / "promotion.json" if prev else None
    if f is None or not f.is_file():
        return None
    doc = json.loads(f.read_text())
    return doc if doc.get("promoted") and doc.get("version") else None


def previous_student(ctx: StageContext) -> Path | None:
    """The previous round's distilled student folder, when spec.previousRound names a round that distilled."""
    prev = previous_workdir(ctx)
    folder = stage_dir(prev, "distill") / "student" if prev else None
    return folder if folder is not None and (folder / STUDENT_META).is_file() else None


def request_log_dir(spec, workdir: Path) -> Path:
    """promotion.requestLog.path as a round with this workdir resolves it (relative: against the workdir)."""
    p = Path(spec.promotion.request_log.path)
    return p if p.is_absolute() else Path(workdir) / p


def log_folder(ctx: StageContext) -> Path | None:
    """The request log folder as the previous round resolved it."""
    if ctx.spec.promotion.request_log is None or not ctx.spec.previous_round:
        return None
    return request_log_dir(ctx.spec, previous_workdir(ctx))


def _item_id(title: str, attrs: dict) -> str:
    return "served:" + hashlib.sha256(json.dumps([title, attrs], sort_keys=True).encode()).hexdigest()[:16]


def served_pairs(ctx: StageContext, catalogue: dict[str, Item], is_dev_query, taken: set[tuple[str, str]],
                 limit: int) -> tuple[list[Pair], dict[str, Item], dict]:
    """Up to `limit` low-confidence pairs the previous round's student served, deduplicated, never of a dev
    query nor already in this round's seed; items unknown to the catalogue come back as new items.
    Returns (pairs, new items, what happened for the metrics)."""
    folder, promo = log_folder(ctx), previous_promotion(ctx)
    if folder is None:
        return [], {}, {}
    info = {"requestLog": str(folder), "previousVersion": promo and promo["version"]}
    if promo is None:
        return [], {}, {**info, "servedPairs": 0, "note": f"{ctx.spec.previous_round} promoted no student"}
    log = read_request_log(folder)
    by_title = {}
    for item in catalogue.values():
        by_title.setdefault(item.title, item.item_id)
    rows = [r for r in log.rows if r.get("lowConfidence") and r.get("model") == promo.get("model")
            and str(r["version"]) == str(promo["version"])]
    out, new_items, dropped = [], {}, {"devQuery": 0, "duplicate": 0}
    for r in rows:
        attrs = r.get("attributes") or {}
        item_id = by_title.get(r["title"]) or _item_id(r["title"], attrs)
        if is_dev_query(r["query"]):
            dropped["devQuery"] += 1
            continue
        if (r["query"], item_id) in taken:
            dropped["duplicate"] += 1
            continue
        taken.add((r["query"], item_id))
        if item_id not in catalogue:
            new_items[item_id] = Item(item_id, r["title"], "", attrs)
        out.append(Pair(r["query"], item_id))
    info.update({"logFiles": log.files, "logRows": len(log.rows), "tornLines": log.torn,
                 "lowConfidenceRows": len(rows), "dropped": dropped, "servedPairs": min(len(out), limit)})
    return out[:limit], new_items, info
