"""The stage graph of a round, in execution order."""
from __future__ import annotations

from pathlib import Path

from . import align, annotate, distill, evaluate, prepare, promote, sft, synthesize
from .base import Stage
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


STAGES: list[Stage] = [
    # The served pairs are read once, when prepare runs (previousRound is in the fingerprint, the log's
    # contents are not): the log keeps growing while the round runs, and a pool that changed under a
    # finished annotate would make the round's stages disagree.
    Stage("prepare", [], prepare.run, ["grades", "dataset", "previous_round"], _dataset_files,
          ["trainPairs", "devPairs", "seedPairs", "poolPairs", "servedPairs"]),
    Stage("sft", ["prepare"], sft.run, ["teacher", "stages.sft", "previous_round"], teacher_files,
          ["pairsWithAgreeingRationale", "pairsWithRuleRationale", "sftLastLoss"]),
    Stage("align", ["sft"], align.run, ["teacher", "stages.align"],
          lambda r: teacher_files(r) + _behaviour_files(r),
          ["behaviourSimulated", "tooStrict", "desirable", "undesirable", "ktoLastLoss"]),
    Stage("annotate", ["align"], annotate.run, ["teacher", "stages.annotate"], teacher_files,
          ["pairs", "parsed", "pairsPerSecond", "meanConfidence", "gradeOffsets"], run_shard=annotate.label_shard),
    Stage("synthesize", ["annotate"], synthesize.run, ["stages.synthesize", "teacher", "previous_round"],
          lambda r: teacher_files(r) + ([r.resolve(r.spec.stages.synthesize.previous_profile)]
                                        if r.spec.stages.synthesize.previous_profile else []),
          ["syntheticPairs", "adversarialTestPairs", "errorProfile", "teacherCheck"], run_shard=synthesize.check_shard),
    Stage("distill", ["synthesize"], distill.run, ["stages.distill", "previous_round"],
          summary_keys=["initFrom", "teacherExamples", "syntheticExamples", "lastLoss", "temperature"]),
    Stage("evaluate", ["distill"], evaluate.run, ["stages.evaluate"],
          summary_keys=["macroF1", "accuracy", "ndcg@10", "bm25MacroF1", "bm25Ndcg@10", "adversarialAccuracy", "ece", "reportHtml"]),
    Stage("promote", ["evaluate"], promote.run, ["promotion"], summary_keys=["promoted", "version", "reasons", "regressesPrevious"]),
]
BY_NAME = {s.name: s for s in STAGES}
assert [s.name for s in STAGES] == STAGE_NAMES, "schema.STAGE_NAMES must list the stage graph in order"
NAMES = [s.name for s in STAGES]
assert tuple(s.name for s in STAGES if s.run_shard) == SHARDED_STAGES, "a stage with `shards` needs a shard hook"
