"""Automatic rollback: after a promotion, a PromQL signal that holds for a window serves the previous version.

Evaluated on a timer for every Succeeded round that promoted a version and
has spec.rollback. The state lives in the round's status.rollback (Watching,
RollingBack, RolledBack, Failed), so a restarted operator continues where it
was. The rollback itself is a Job (ROUND-rollback) running
`adore rollback --from VERSION` in the worker image with the workdir claim:
the repository lies there, and `--from` makes a retried Job harmless (it
rolls back only while this round's version is still served). Triton then
serves the previous version without a failed request (adore.serving.rollout).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import kopf

from adore.schema import SUCCEEDED, AdoreRoundSpec, RollbackSpec
from adore.timestamps import now_iso, parse_iso

from . import jobs as render
from . import metrics
from .reconcile import Cluster, set_condition
from .trigger import PrometheusError, holds, query

log = logging.getLogger("adore.operator.rollback")
DONE = ("RolledBack", "Failed")


def job_name(round_name: str) -> str:
    return f"{round_name}-rollback"


def evaluate(cluster: Cluster, body: dict, now: datetime | None = None) -> dict | None:
    """One rollback evaluation for a promoted round; returns the rollback status written, if any.
    Raises PrometheusError (after writing why) when Prometheus gives no usable answer."""
    now = now or datetime.now(timezone.utc)
    status = body.get("status") or {}
    if status.get("phase") != SUCCEEDED or not status.get("promotedVersion") or not body["spec"].get("rollback"):
        return None
    prev = status.get("rollback") or {}
    if prev.get("state") in DONE:
        return None
    if prev.get("state") == "RollingBack":
        return _follow_job(cluster, body, prev)
    spec = RollbackSpec.model_validate(body["spec"]["rollback"])
    out = {**prev, "state": "Watching", "lastEvaluated": now_iso(), "fromVersion": status["promotedVersion"]}
    try:
        value = query(spec.prometheus_url, spec.query)
    except PrometheusError as e:
        out["message"] = str(e)
        _write(cluster, body, out)
        raise
    out["lastValue"] = value
    if not holds(spec.comparison, value, spec.threshold):
        out.update({"holdingSince": None, "message": f"{value:g} {spec.comparison} {spec.threshold:g} does not hold"})
        return _write(cluster, body, out)
    since = prev.get("holdingSince") or now_iso()
    held = (now - parse_iso(since)).total_seconds()
    out["holdingSince"] = since
    if held < spec.for_seconds:
        out["message"] = f"holding for {held:.0f}s of {spec.for_seconds}s"
        return _write(cluster, body, out)
    full = AdoreRoundSpec.model_validate(body["spec"])
    job = rollback_job(body, full, status["promotedVersion"])
    cluster.create(job)  # a 409 (created before a crash) is fine: the name is deterministic
    msg = (f"{spec.query} = {value:g} {spec.comparison} {spec.threshold:g} for {held:.0f}s: "
           f"rolling back from version {status['promotedVersion']} (Job {job['metadata']['name']})")
    kopf.warn(body, reason="RollingBack", message=msg)
    out.update({"state": "RollingBack", "job": job["metadata"]["name"], "message": msg})
    return _write(cluster, body, out)


def _follow_job(cluster: Cluster, body: dict, prev: dict) -> dict | None:
    """RollingBack: wait for the Job; its end decides RolledBack or Failed."""
    md = body["metadata"]
    job = cluster.jobs(md["namespace"], md["name"]).get("rollback")
    conds = {c.get("type"): c for c in ((job or {}).get("status") or {}).get("conditions") or []
             if c.get("status") == "True"}
    if "Complete" in conds:
        msg = f"served the version before {prev.get('fromVersion')} again (Job {prev.get('job')})"
        metrics.ROLLBACKS.labels(outcome="rolled_back").inc()
        kopf.info(body, reason="RolledBack", message=msg)
        return _write(cluster, body, {**prev, "state": "RolledBack", "message": msg},
                      ("True", "RolledBack", msg))
    if "Failed" in conds or job is None:
        msg = (f"rollback Job {prev.get('job')} failed: {conds['Failed'].get('message') or conds['Failed'].get('reason')}"
               if job is not None else f"rollback Job {prev.get('job')} is gone")
        metrics.ROLLBACKS.labels(outcome="failed").inc()
        kopf.warn(body, reason="RollbackFailed", message=msg)
        return _write(cluster, body, {**prev, "state": "Failed", "message": msg}, ("False", "RollbackFailed", msg))
    return None


def rollback_job(body: dict, spec: AdoreRoundSpec, version: int) -> dict:
    """The Job that serves the version before `version` again: the promote stage's Pod, another command."""
    job = render.stage_job(body, spec, "promote")
    name = body["metadata"]["name"]
    job["metadata"]["name"] = job_name(name)
    job["metadata"]["labels"][render.STAGE_LABEL] = "rollback"
    pod = job["spec"]["template"]
    pod["metadata"]["labels"][render.STAGE_LABEL] = "rollback"
    repo = spec.promotion.repository
    if not repo.startswith("/"):
        repo = f"{spec.runtime.workdir_path.rstrip('/')}/{name}/{repo}"
    command = ["adore", "rollback", "--repository", repo, "--model", spec.promotion.model_name,
               "--from", str(version), "--tolerance", str(spec.promotion.serving_tolerance)]
    if spec.promotion.triton_url:
        command += ["--triton-url", spec.promotion.triton_url]
    container = pod["spec"]["containers"][0]
    container["command"] = command
    # Only the workdir claim is needed (the repository); not the round file.
    container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] != "round"]
    pod["spec"]["volumes"] = [v for v in pod["spec"].get("volumes", []) if v["name"] != "round"]
    return job


def _write(cluster: Cluster, body: dict, rollback: dict, cond: tuple[str, str, str] | None = None) -> dict:
    patch: dict = {"rollback": rollback}
    if cond is not None:
        patch["conditions"] = set_condition((body.get("status") or {}).get("conditions") or [], "RolledBack", *cond)
    cluster.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], patch)
    return rollback
