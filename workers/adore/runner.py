"""The local runner: a whole round on one machine, no cluster.

It runs the stage graph in order through the same `execute()` a Kubernetes
Job uses, and keeps workdir/status.json in the shape of the AdoreRound's
`.status` (phase, current stage, per-stage state and timings, key metrics,
quality, promoted version, report).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

from .atomic import atomic_write_json, atomic_write_text
from .schema import AdoreRound, AdoreRoundStatus, StageStatus
from .stages import BY_NAME, STAGES
from .stages.base import execute, is_current, read_complete, stage_dir
from .timestamps import now_iso

log = logging.getLogger("adore.runner")
STATUS = "status.json"


class StatusFile:
    def __init__(self, workdir: Path):
        self.path = Path(workdir) / STATUS
        try:
            self.status = AdoreRoundStatus.model_validate(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            self.status = AdoreRoundStatus()
        for s in STAGES:
            self.status.stages.setdefault(s.name, StageStatus())

    def save(self) -> None:
        atomic_write_json(self.path, self.status.model_dump(mode="json", by_alias=True, exclude_none=True))

    def stage(self, name: str) -> StageStatus:
        return self.status.stages[name]


def stage_summary(stage_name: str, metrics: dict) -> dict:
    keys = [*BY_NAME[stage_name].summary_keys, "device"]  # every torch stage records its device and precision
    return {k: metrics[k] for k in keys if k in metrics} | {"durationSeconds": metrics.get("durationSeconds")}


def record_result(status: StatusFile, workdir: Path, name: str, ran: bool, metrics: dict) -> None:
    st = status.stage(name)
    done = read_complete(workdir, name) or {}
    st.state = "Succeeded" if ran else "Skipped"
    st.started_at, st.finished_at = done.get("startedAt"), done.get("finishedAt")
    st.duration_seconds = metrics.get("durationSeconds")
    st.metrics = stage_summary(name, metrics)
    st.message = None if ran else "outputs complete and inputs unchanged"
    if name == "evaluate":
        status.status.quality = metrics.get("macroF1")
        status.status.report = metrics.get("reportHtml") or str(stage_dir(workdir, "evaluate") / "report.md")
    if name == "promote":
        status.status.promoted_version = metrics.get("version") if metrics.get("promoted") else None


def run_stage(round_: AdoreRound, workdir: Path, name: str, force: bool = False) -> dict:
    """One stage, as `adore stage` and a Kubernetes Job run it; updates status.json."""
    workdir = Path(workdir)
    status = StatusFile(workdir)
    st = status.stage(name)
    st.state, st.started_at, st.message = "Running", now_iso(), None
    status.status.stage = name
    status.save()
    try:
        ran, metrics = execute(BY_NAME[name], round_, workdir, force)
    except BaseException as e:
        st = status.stage(name)
        if isinstance(e, KeyboardInterrupt):
            # Nothing of it was kept (atomic output), so it is pending again, not failed.
            st.state, st.started_at, st.message = "Pending", None, "interrupted; rerun to resume"
        else:
            st.state, st.finished_at, st.message = "Failed", now_iso(), f"{type(e).__name__}: {e}"
        status.save()
        raise
    record_result(status, workdir, name, ran, metrics)
    status.save()
    return metrics


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def run_round(round_: AdoreRound, workdir: Path, round_file: Path | None = None) -> AdoreRoundStatus:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if round_file is not None:
        atomic_write_text(workdir / "round.yaml", Path(round_file).read_text())
    signal.signal(signal.SIGTERM, _on_sigterm)
    status = StatusFile(workdir)
    status.status.phase, status.status.message = "Running", None
    status.save()
    t0 = time.time()
    for i, stage in enumerate(STAGES, 1):
        current = is_current(stage, round_, workdir)
        print(f"[{i}/{len(STAGES)}] {stage.name}: {'complete, skipping' if current else 'running'}", file=sys.stderr, flush=True)
        try:
            metrics = run_stage(round_, workdir, stage.name)
        except KeyboardInterrupt:
            status = StatusFile(workdir)
            status.status.phase, status.status.message = "Interrupted", f"interrupted in stage {stage.name}; rerun to resume"
            status.save()
            raise
        except Exception as e:
            status = StatusFile(workdir)
            status.status.phase = "Failed"
            status.status.message = f"stage {stage.name} failed: {e}"
            status.save()
            raise
        shown = {k: v for k, v in stage_summary(stage.name, metrics).items() if v is not None}
        print(f"      {stage.name}: {json.dumps(shown)}", file=sys.stderr, flush=True)
    status = StatusFile(workdir)
    status.status.phase, status.status.stage = "Succeeded", None
    promo = status.stage("promote").metrics
    status.status.message = (f"promoted version {promo.get('version')}" if promo.get("promoted")
                             else f"not promoted: {'; '.join(promo.get('reasons') or [])}")
    status.save()
    print(f"round {round_.metadata.name} finished in {time.time() - t0:.0f}s: {status.status.message}; "
          f"report {status.status.report}", file=sys.stderr)
    return status.status
