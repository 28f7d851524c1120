"""evaluate's additions: calibration (ECE, reliability curve), the previous round's student, the HTML report.

Kept apart from evaluate.py so that module stays short and other work on it
(error profiles) does not collide with this.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from ..atomic import atomic_write_text
from ..metrics import expected_grade, graded_report
from ..student.calibrate import ece, reliability
from ..student.model import Student
from .base import StageContext
from .common import columns
from .inherit import previous_promotion, previous_student


def calibration_section(probs: np.ndarray, gold: np.ndarray, pred: np.ndarray,
                        bins: int) -> tuple[float, list[dict], list[list[int]]]:
    n = probs.shape[1]
    return (round(ece(probs, gold, bins), 4), reliability(probs, gold, bins),
            confusion_matrix(gold, pred, labels=list(range(n))).tolist())


def previous_student_report(ctx: StageContext, dev, items, gold: np.ndarray, k: int, raw_gold) -> dict | None:
    """The previous round's student on this round's dev, when spec.previousRound names one that distilled."""
    folder = previous_student(ctx)
    if folder is None:
        return None
    prev = Student.load(folder).to(ctx.hardware)
    if prev.meta.grades != ctx.spec.grades:
        return None  # another grade scheme: not comparable
    probs, _, out = score_student(prev, dev, items, gold, ctx.spec.grades, k, raw_gold)
    out["ece"] = round(ece(probs, gold), 4)
    out["round"] = ctx.spec.previous_round
    promo = previous_promotion(ctx)
    out["promotedVersion"] = promo["version"] if promo else None  # what gates.mustBeatPrevious compares with
    return out


def write_html(path: Path, report: dict, data: dict, k: int) -> None:
    from ..report_html import render

    atomic_write_text(path, render(report, data, k))


def score_student(student: Student, dev, items, gold: np.ndarray, grades: list[str], k: int, raw_gold):
    """(probabilities, expected-grade scores, graded report) of a student on the dev pairs."""
    probs = student.predict(*columns(dev, items))
    scores = expected_grade(probs)
    report = graded_report([p.query for p in dev], gold, student.grade(probs), scores, grades, k, raw_gold,
                           1 + scores if raw_gold is not None else None)
    return probs, scores, report
