"""synthesize: error-profile-driven near-miss pairs for training, and a separate test set.

1. Profile: where the reference model errs, by error type (error_profile.py). Round 1:
   the teacher on the human seed (a seed pair where none of the SFT stage's
   sampled rationales agreed with the human grade is a teacher error). Later
   rounds: the previous round's evaluate profile (the student on dev), or the
   file in `previousProfile`.
2. Mix: the training budget split over the catalogue's error types in
   proportion to max(error rate, floor).
3. Generate near misses from relevant *training* pairs (the teacher's
   top-grade annotations and the human seed), each an edit of a real item or
   of the query, marked synthetic with its type and source pair.
4. Teacher check (optional, capped; shardable like annotate): the teacher
   judges each pair, disagreements are dropped and counted.
5. Adversarial test set: from dev pairs only, with its own seed and an even
   budget per type, never checked or trained on; sources are asserted disjoint.
"""
from __future__ import annotations

from collections import Counter

from .. import error_profile
from ..atomic import atomic_write_json
from ..data.contract import Pair, read_records, write_jsonl
from ..synthesis import NearMiss, generate, mix, to_records
from . import common
from .base import StageContext, StageError, merge_shards, shards_of, stage_dir
from .inherit import previous_workdir

PROFILE_FILE = "error_profile.json"
CHECKS_FILE = "teacher_checks.jsonl"


def reference_profile(ctx: StageContext, items, brands) -> dict:
    cfg = ctx.spec.stages.synthesize
    types = list(cfg.error_types)
    if cfg.previous_profile:
        return error_profile.load(ctx.resolve(cfg.previous_profile))
    if ctx.spec.previous_round:
        f = stage_dir(previous_workdir(ctx), "evaluate") / PROFILE_FILE
        if not f.is_file():
            raise StageError(f"spec.previousRound: {ctx.spec.previous_round!r} has no error profile at {f} "
                             "(its evaluate stage has not completed); or set stages.synthesize.previousProfile")
        return error_profile.load(f)
    records = [{"query": r["query"], "title": items[r["item_id"]].title, "attributes": items[r["item_id"]].attributes,
                "gold": r["grade"], "pred": r["grade"] if r["origin"] == "teacher" else None}
               for r in read_records(ctx.input("sft", "seed_rationales.jsonl"))]
    return error_profile.profile(records, "teacher on the human seed (sft samples vs human grades)", types, brands)


def candidates(ctx: StageContext) -> dict:
    """Everything before the teacher check; deterministic, so shard Jobs and the merge agree."""
    cfg = ctx.spec.stages.synthesize
    grades = ctx.spec.grades
    items = common.catalogue(ctx)
    brands = common.brands(items)
    seed = common.pairs(ctx, "seed")
    annotations = read_records(ctx.input("annotate", "annotations.jsonl"))
    sources = [p for p in seed if p.grade == grades[-1]]
    sources += [Pair(a["query"], a["item_id"], a["grade"]) for a in annotations if a["grade"] == grades[-1]]
    dev = common.pairs(ctx, "dev")
    dev_sources = [p for p in dev if p.grade == grades[-1]]
    if not sources:
        raise StageError("synthesize: no relevant training pair to derive near misses from "
                         f"(no {grades[-1]!r} grade in the seed or the teacher's annotations)")
    dev_queries = {p.query for p in dev}
    leaked = sorted({p.query for p in sources} & dev_queries)
    if leaked:
        raise StageError(f"synthesize: {len(leaked)} training source queries are dev queries (e.g. {leaked[0]!r}); "
                         "the adversarial test set would share sources with training")
    prof = reference_profile(ctx, items, brands)
    types = list(cfg.error_types)
    plan = mix(error_profile.rates(prof), [t for t in types if t != "other"], cfg.pairs_per_type * len(types), cfg.floor)
    train, train_counts = generate(sources, items, grades, plan, cfg.seed)
    test, test_counts = generate(dev_sources, items, grades, {t: cfg.pairs_per_type for t in plan}, cfg.test_seed)
    test_keys = {(n.query, n.item.item_id) for n in test}
    train = [n for n in train if (n.query, n.item.item_id) not in test_keys]
    return {"items": items, "sources": sources, "profile": prof, "plan": plan, "train": train, "test": test,
            "train_counts": train_counts, "test_counts": test_counts}


def _to_check(ctx: StageContext, train: list[NearMiss]) -> list[NearMiss]:
    """The capped pairs to check, taken round-robin over types so a small cap still covers every type."""
    by_type: dict[str, list[NearMiss]] = {}
    for n in train:
        by_type.setdefault(n.type, []).append(n)
    queues = list(by_type.values())
    order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return order[:ctx.spec.stages.synthesize.teacher_check_max_pairs]


def judge(ctx: StageContext, near: list[NearMiss], items) -> list[dict]:
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), items)
    judged = teacher.judge([(n.query, n.item) for n in near], progress=f"{ctx.name}: teacher check")
    return [{"query": n.query, "item_id": n.item.item_id, "type": n.type, "rule_grade": n.grade,
             "teacher_grade": j.grade, "probs": j.probs} for n, j in zip(near, judged)]


def check_shard(ctx: StageContext, i: int, n: int) -> dict:
    """The synthesize stage's shard hook: shard i of n of the teacher check, every N-th pair to check from index i."""
    c = candidates(ctx)
    part = _to_check(ctx, c["train"])[i::n]
    records = judge(ctx, part, c["items"])
    write_jsonl(ctx.out / CHECKS_FILE, records)
    return {"checked": len(records)}


def _checks(ctx: StageContext, c: dict) -> list[dict]:
    cfg = ctx.spec.stages.synthesize
    to_check = _to_check(ctx, c["train"])
    if cfg.shards == 1:
        return judge(ctx, to_check, c["items"])
    return merge_shards(ctx, shards_of(ctx), CHECKS_FILE)


def agrees(record: dict, grades: list[str], how: str) -> bool:
    if record["teacher_grade"] is None:
        return False
    if how == "exact":
        return record["teacher_grade"] == record["rule_grade"]
    return grades.index(record["teacher_grade"]) < len(grades) - 1   # belowSource: not graded as the source


def teacher_filter(ctx: StageContext, c: dict) -> tuple[list[NearMiss], dict]:
    cfg = ctx.spec.stages.synthesize
    if not cfg.teacher_check:
        return c["train"], {"enabled": False}
    checks = _checks(ctx, c)
    write_jsonl(ctx.out / CHECKS_FILE, checks)
    verdict = {(r["query"], r["item_id"]): agrees(r, ctx.spec.grades, cfg.teacher_agreement) for r in checks}
    kept = [n for n in c["train"] if verdict.get((n.query, n.item.item_id), True)]
    dropped = Counter(r["type"] for r in checks if not verdict[(r["query"], r["item_id"])])
    return kept, {"enabled": True, "agreement": cfg.teacher_agreement, "checked": len(checks),
                  "agreed": sum(verdict.values()), "dropped": sum(dropped.values()),
                  "unparsed": sum(r["teacher_grade"] is None for r in checks),
                  "unchecked": len(c["train"]) - len(checks), "droppedPerType": dict(dropped),
                  **({"shards": cfg.shards} if cfg.shards > 1 else {})}


def run(ctx: StageContext) -> dict:
    c = candidates(ctx)
    train, check = teacher_filter(ctx, c)
    train_pairs, train_items = to_records(train)
    test_pairs, test_items = to_records(c["test"])
    train_src = {(p.synthetic["source_query"], p.synthetic["source_item"]) for p in train_pairs}
    test_src = {(p.synthetic["source_query"], p.synthetic["source_item"]) for p in test_pairs}
    if train_src & test_src:
        raise StageError("synthesize: adversarial test pairs share a source pair with synthetic training pairs")
    write_jsonl(ctx.out / "synthetic.jsonl", train_pairs)
    write_jsonl(ctx.out / "synthetic_catalogue.jsonl", train_items)
    write_jsonl(ctx.out / "adversarial_test.jsonl", test_pairs)
    write_jsonl(ctx.out / "adversarial_catalogue.jsonl", test_items)
    atomic_write_json(ctx.out / PROFILE_FILE, c["profile"])
    return {"trainSources": len(c["sources"]), "syntheticPairs": len(train_pairs), "adversarialTestPairs": len(test_pairs),
            "errorProfile": error_profile.summary(c["profile"]), "mix": c["plan"],
            "perType": dict(Counter(p.synthetic["type"] for p in train_pairs)),
            "notGenerated": {k: v["note"] for k, v in c["train_counts"].items() if "note" in v},
            "testPerType": {k: v["generated"] for k, v in c["test_counts"].items()},
            "teacherCheck": check}

