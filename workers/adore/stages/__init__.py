"""The stage graph of a round, in execution order."""
from __future__ import annotations

from pathlib import Path

from . import align, annotate, distill, evaluate, prepare, promote, sft, synthesize
from .base import Stage
from ..schema import STAGE_NAMES
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
    return [r.resolve(r.spec.dataset.behaviour_log)] if r.spec.dataset.behaviour_log else []


STAGES: list[Stage] = [
    Stage("prepare", [], prepare.run, ["grades", "dataset"], _dataset_files,
          ["trainPairs", "devPairs", "seedPairs", "poolPairs"]),
    Stage("sft", ["prepare"], sft.run, ["teacher", "stages.sft", "previous_round"], teacher_files,
          ["pairsWithAgreeingRationale", "pairsWithRuleRationale", "sftLastLoss"]),
    Stage("align", ["sft"], align.run, ["teacher", "stages.align"],
          lambda r: teacher_files(r) + _behaviour_files(r),
          ["behaviourSimulated", "tooStrict", "desirable", "undesirable", "ktoLastLoss"]),
    Stage("annotate", ["align"], annotate.run, ["teacher", "stages.annotate"], teacher_files,
          ["pairs", "parsed", "pairsPerSecond", "meanConfidence", "calibrationOffsets"]),
    Stage("synthesize", ["annotate"], synthesize.run, ["stages.synthesize", "teacher", "previous_round"],
          lambda r: teacher_files(r) + ([r.resolve(r.spec.stages.synthesize.previous_profile)]
                                        if r.spec.stages.synthesize.previous_profile else []),
          ["syntheticPairs", "adversarialTestPairs", "errorProfile", "teacherCheck"]),
    Stage("distill", ["synthesize"], distill.run, ["stages.distill"], summary_keys=["teacherExamples", "syntheticExamples", "lastLoss", "temperature"]),
    Stage("evaluate", ["distill"], evaluate.run, ["stages.evaluate"],
          summary_keys=["macroF1", "accuracy", "ndcg@10", "bm25MacroF1", "bm25Ndcg@10", "adversarialAccuracy", "ece", "reportHtml"]),
    Stage("promote", ["evaluate"], promote.run, ["promotion"], summary_keys=["promoted", "version", "reasons"]),
]
BY_NAME = {s.name: s for s in STAGES}
assert [s.name for s in STAGES] == STAGE_NAMES, "schema.STAGE_NAMES must list the stage graph in order"
NAMES = [s.name for s in STAGES]
