"""The operator's own Prometheus metrics (prometheus-client)."""
from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from adore.schema import FINAL_PHASES, PENDING, RUNNING

RECONCILE_SECONDS = Histogram("adore_operator_reconcile_seconds", "Time to reconcile one AdoreRound once",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
STAGE_SECONDS = Histogram("adore_operator_stage_duration_seconds", "Wall time of a stage's Job",
                          ["stage", "result"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200))
HANDOFF_SECONDS = Histogram("adore_operator_stage_handoff_seconds",
                            "From a stage Job's completion to the next stage Job's creation",
                            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30))
ROUNDS = Gauge("adore_operator_rounds", "AdoreRounds by phase", ["phase"])
TRIGGER_EVALUATIONS = Counter("adore_operator_trigger_evaluations_total",
                              "Next-round trigger evaluations by outcome", ["outcome"])
ROLLBACKS = Counter("adore_rollbacks_total", "Automatic rollbacks after a promotion, by outcome", ["outcome"])
ROUNDS_CREATED = Counter("adore_operator_rounds_created_total", "Next rounds created by the trigger")
PROMOTIONS = Counter("adore_operator_promotions_total",
                     "Rounds that finished, by what promote did (Promoted, GatesNotPassed, RegressesPrevious)", ["outcome"])

_phases: dict[tuple[str, str], str] = {}
_guard = threading.Lock()


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    with _guard:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase
        counts: dict[str, int] = {}
        for p in _phases.values():
            counts[p] = counts.get(p, 0) + 1
        for p in (PENDING, RUNNING, *FINAL_PHASES):
            ROUNDS.labels(phase=p).set(counts.get(p, 0))
