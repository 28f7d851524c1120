"""The stage graph of a round, in execution order."""
from __future__ import annotations

from pathlib import Path

from . import align, annotate, distill, evaluate, prepare, promote, sft, synthesize
from .base import Stage, Work
from ..schema import SHARDED_STAGES, STAGE_NAMES
from .common import teacher_files


def _dataset_files(r) -> list[Path]:
    ds = r.spec.dataset
    files = []
    if ds.source == "bundled":
        from ..data.importers import BUNDLED_DIR

        files.append(BUNDLED_DIR)
    elif ds.path:
        files.append(r.resolve(ds.path))
    return files


def _behaviour_files(r) -> list[Path]:
    ds = r.spec.dataset
    return [r.resolve(p) for p in (ds.behaviour_log, ds.behaviour_events) if p]


def _sum(*keys: str):
    return lambda m, spec: sum(m[k] for k in keys if isinstance(m.get(k), (int, float))) or None


def _sft_trained(m, spec):
    return (m.get("sftExamples") or 0) * spec.stages.sft.epochs or None


def _kto_trained(m, spec):
    """KTO runs a fixed number of steps (align.steps), so its examples are steps x batch size."""
    return (m.get("ktoSteps") or 0) * spec.stages.align.batch_size or None


def _distilled(m, spec):
    n = sum(m.get(k) or 0 for k in ("teacherExamples", "evidenceExamples", "syntheticExamples"))
    return n * spec.stages.distill.epochs or None


def _embedded(m, spec):
    split = m.get("servingSplit") or {}
    return (split.get("itemTable") or {}).get("items")


STAGES: list[Stage] = [
    # The served pairs are read once, when prepare runs (previousRound is in the fingerprint, the log's
    # contents are not): the log keeps growing while the round runs, and a pool that changed under a
    # finished annotate would make the round's stages disagree.
    Stage("prepare", [], prepare.run, ["grades", "dataset", "previous_round"], _dataset_files,
          ["trainPairs", "devPairs", "seedPairs", "poolPairs", "servedPairs"],
          work=Work("pairs read", _sum("trainPairs", "devPairs")),
          unread=("dataset.pool_selection",)),  # annotate's choice: switching it keeps prepare, sft and align
    Stage("sft", ["prepare"], sft.run, ["teacher", "stages.sft", "previous_round"], teacher_files,
          ["pairsWithAgreeingRationale", "pairsWithRuleRationale", "sftLastLoss"],
          work=Work("examples trained", _sft_trained)),
    Stage("align", ["sft"], align.run, ["teacher", "stages.align"],
          lambda r: teacher_files(r) + _behaviour_files(r),
          ["behaviourSimulated", "tooStrict", "desirable", "undesirable", "ktoLastLoss"],
          work=Work("examples trained", _kto_trained)),
    Stage("annotate", ["align"], annotate.run, ["teacher", "stages.annotate", "dataset.pool_selection"], teacher_files,
          ["pairs", "parsed", "pairsPerSecond", "meanConfidence", "gradeOffsets"], run_shard=annotate.label_shard,
          work=Work("pairs labelled by the LLM", _sum("pairs"))),
    Stage("synthesize", ["annotate"], synthesize.run, ["stages.synthesize", "teacher", "previous_round"],
          lambda r: teacher_files(r) + ([r.resolve(r.spec.stages.synthesize.previous_profile)]
                                        if r.spec.stages.synthesize.previous_profile else []),
          ["syntheticPairs", "adversarialTestPairs", "errorProfile", "teacherCheck"], run_shard=synthesize.check_shard,
          work=Work("pairs made", _sum("syntheticPairs", "adversarialTestPairs"))),
    Stage("distill", ["synthesize"], distill.run, ["stages.distill", "previous_round"],
          summary_keys=["initFrom", "teacherExamples", "syntheticExamples", "lastLoss", "temperature"],
          work=Work("examples trained", _distilled)),
    Stage("evaluate", ["distill"], evaluate.run, ["stages.evaluate"],
          summary_keys=["macroF1", "accuracy", "ndcg@10", "bm25MacroF1", "bm25Ndcg@10", "adversarialAccuracy", "ece", "reportHtml"],
          work=Work("pairs scored", _sum("devPairs", "adversarialPairs"))),
    Stage("promote", ["evaluate"], promote.run, ["promotion"], summary_keys=["promoted", "version", "reasons", "regressesPrevious"],
          work=Work("items embedded", _embedded)),
]
BY_NAME = {s.name: s for s in STAGES}
assert [s.name for s in STAGES] == STAGE_NAMES, "schema.STAGE_NAMES must list the stage graph in order"
NAMES = [s.name for s in STAGES]
assert tuple(s.name for s in STAGES if s.run_shard) == SHARDED_STAGES, "a stage with `shards` needs a shard hook"


def costs(stages: dict[str, tuple[float | None, dict]], spec) -> list[dict]:
    """Each stage's share of the round's wall time and its work per second of its own wall time, from
    {name: (seconds, metrics)}: the slowest stage and the slowest per unit of work, at a glance."""
    total = sum(sec or 0 for sec, _ in stages.values())
    rows = []
    for s in STAGES:
        if s.name not in stages:
            continue
        sec, m = stages[s.name]
        done = s.work.count(m, spec) if s.work and m else None
        rows.append({"stage": s.name, "seconds": sec, "share": round((sec or 0) / total, 4) if total else None,
                     "unit": s.work.unit if s.work else None, "count": done,
                     "perSecond": _significant(done / sec) if done and sec else None})
    return rows


def _significant(x: float, digits: int = 3) -> float:
    """x to `digits` significant figures: a fixed number of decimals reads 0.057 pairs/s (a slow teacher on
    a busy machine) as 0.06, 6% off."""
    return float(f"{x:.{digits}g}")
