"""Reconciling one AdoreRound: observe its Jobs, plan the next step, apply it.

`plan()` is a pure function from (round, jobs, pod messages, now) to the Job
to create, the status to write and the events to post; `reconcile()` does
the I/O around it. Any handler (create, resume, timer, Job event) may call
`reconcile()`; deterministic Job names make a repeated call harmless.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from adore.schema import (API_GROUP, API_VERSION, PLURAL, SHARDED_STAGES, STAGE_NAMES, AdoreRoundSpec,
                          format_validation_error, shard_name, shard_of)

from . import jobs as render
from . import metrics
from .features import LEGACY, JobFeatures

log = logging.getLogger("adore.operator")
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime(TS_FORMAT)


def _ts(value) -> str | None:
    """Any API timestamp (datetime, '...Z' or '...+00:00') as '%Y-%m-%dT%H:%M:%SZ'."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime(TS_FORMAT)


TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def parse_ts(ts: str) -> datetime:
    """The inverse of _ts()/now_iso(): an aware UTC datetime."""
    return datetime.strptime(ts, TS_FORMAT).replace(tzinfo=timezone.utc)


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (parse_ts(b) - parse_ts(a)).total_seconds()


def job_state(job: dict) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Complete":
            return "Succeeded"
        if c.get("status") == "True" and c.get("type") == "Failed":
            return "Failed"
    return "Running"


def _finished_at(job: dict) -> str | None:
    st = job.get("status") or {}
    if st.get("completionTime"):
        return _ts(st["completionTime"])
    for c in st.get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return _ts(c.get("lastTransitionTime"))
    return None


def parse_message(message: str | None) -> tuple[dict, str | None]:
    """The worker's termination message: {"stage", "ok", "metrics"|"error"}; else a log tail."""
    if not message:
        return {}, None
    try:
        doc = json.loads(message)
    except ValueError:
        return {}, message.strip()[-1000:]
    if not isinstance(doc, dict):
        return {}, message.strip()[-1000:]
    return doc.get("metrics") or {}, doc.get("error")


@dataclass
class Plan:
    create: list[str] = field(default_factory=list)  # stage (or shard) names whose Jobs to create
    status: dict = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def condition(prev: list[dict], type_: str, status: str, reason: str, message: str, now: str) -> dict:
    old = next((c for c in prev if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now if changed else old.get("lastTransitionTime", now)}


def plan(body: dict, jobs: dict[str, dict], messages: dict[str, str | None], now: str,
         features: JobFeatures = LEGACY) -> Plan:
    """features: what the server's Jobs can do; shards run as one Indexed Job where it has them (kept as N
    Jobs for a stage whose shard Jobs already exist, e.g. started before an upgrade)."""
    prev = body.get("status") or {}
    prev_stages = prev.get("stages") or {}
    p = Plan()
    stages: dict[str, dict] = {}
    failed: tuple[str, str] | None = None
    current = None
    stage_specs = (body.get("spec") or {}).get("stages") or {}
    for name in STAGE_NAMES:
        job = jobs.get(name)
        shards = int((stage_specs.get(name) or {}).get("shards", 1)) if name in SHARDED_STAGES else 1
        if job is None and shards > 1 and current is None and failed is None:
            # Sharded: N shard Jobs first; the stage's own Job then only merges.
            legacy = [shard_name(name, i, shards) for i in range(shards)]
            names = legacy if any(n in jobs for n in legacy) else render.shard_job_names(name, shards, features)
            states = {n: job_state(jobs[n]) for n in names if n in jobs}
            done = render.shards_succeeded(jobs, names)
            bad = [n for n, v in states.items() if v == "Failed"]
            if bad:
                _, error = parse_message(messages.get(bad[0]))
                reason = f"{bad[0]}: {error or _job_failure_reason(jobs[bad[0]])}"
                stages[name] = {"state": "Failed", "message": reason, "shards": {"succeeded": done, "total": shards}}
                failed = (name, reason)
                current = name
                continue
            if done < shards:
                p.create = [n for n in names if n not in jobs]
                stages[name] = {"state": "Running", "shards": {"succeeded": done, "total": shards}}
                current = name
                continue
        if job is None:
            stages[name] = {"state": "Pending"}
            if current is None and failed is None:
                current = name
                p.create = [name]
            continue
        state = job_state(job)
        metrics_, error = parse_message(messages.get(name))
        before = prev_stages.get(name) or {}
        if name not in messages and before.get("state") == state:
            # Already recorded: the Pod's message was read when the stage finished.
            metrics_, error = before.get("metrics") or {}, before.get("message")
        started = _ts((job.get("status") or {}).get("startTime")) or _ts(job["metadata"].get("creationTimestamp"))
        st = {"state": state, "startedAt": started}
        if state in ("Succeeded", "Failed"):
            st["finishedAt"] = _finished_at(job)
            st["durationSeconds"] = _seconds(started, st["finishedAt"])
        if metrics_:
            st["metrics"] = metrics_
        if state == "Failed":
            reason = error or _job_failure_reason(job)
            st["message"] = reason
            failed = failed or (name, reason)
        stages[name] = st
        if state != "Succeeded" and current is None:
            current = name
    if failed:
        p.create = []
    done = all(s["state"] == "Succeeded" for s in stages.values())
    phase = "Failed" if failed else "Succeeded" if done else "Running" if jobs or p.create else "Pending"
    status: dict = {"phase": phase, "stage": None if done else (failed[0] if failed else current),
                    "stages": stages, "observedGeneration": body["metadata"].get("generation")}
    evaluate = stages["evaluate"].get("metrics") or {}
    if "macroF1" in evaluate:
        status["quality"] = evaluate["macroF1"]
    promote = stages["promote"].get("metrics") or {}
    if done:
        if promote.get("promoted"):
            status["promotedVersion"] = promote.get("version")
            status["message"] = f"promoted version {promote.get('version')}"
        else:
            status["message"] = "not promoted: " + "; ".join(promote.get("reasons") or ["gates not passed"])
    elif failed:
        status["message"] = f"stage {failed[0]} failed: {failed[1]}"
    else:
        status["message"] = f"running stage {current}"
    conds = prev.get("conditions") or []
    new_conds = []
    for name in STAGE_NAMES:
        s = stages[name]["state"]
        new_conds.append(condition(conds, f"Stage{name.capitalize()}", "True" if s == "Succeeded" else
                                    "False" if s == "Failed" else "Unknown", s, stages[name].get("message") or s, now))
    new_conds.append(condition(conds, "Ready", "True" if done else "False", phase, status["message"], now))
    new_conds.append(condition(conds, "Failed", "True" if failed else "False", phase, status["message"], now))
    if done:
        new_conds.append(condition(conds, "Promoted", "True" if promote.get("promoted") else "False",
                                    "Promoted" if promote.get("promoted") else
                                    "RegressesPrevious" if promote.get("regressesPrevious") else "GatesNotPassed",
                                    status["message"], now))
    keep = {c["type"] for c in new_conds}
    new_conds += [c for c in conds if c.get("type") not in keep]  # e.g. SpecLocked, PrometheusReachable
    status["conditions"] = new_conds
    p.status = status
    for name in STAGE_NAMES:
        before = (prev_stages.get(name) or {}).get("state", "Pending")
        after = stages[name]["state"]
        if before != after:
            if after == "Succeeded":
                p.events.append(("Normal", "StageSucceeded", f"stage {name} succeeded"))
            elif after == "Failed":
                p.events.append(("Warning", "StageFailed", f"stage {name} failed: {stages[name].get('message')}"))
    for stage in p.create:
        p.events.append(("Normal", "StageStarted", f"created Job {render.job_name(body['metadata']['name'], stage)}"))
    if prev.get("phase") != phase and phase in ("Succeeded", "Failed"):
        p.events.append(("Normal" if phase == "Succeeded" else "Warning", f"Round{phase}", status["message"]))
    return p


def _job_failure_reason(job: dict) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed":
            return f"{c.get('reason')}: {c.get('message')}"
    return "job failed"


class Cluster:
    """The API calls reconcile needs (one instance per operator)."""

    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or client.ApiClient()
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def get_round(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def frozen_spec(self, namespace: str, round_name: str) -> dict | None:
        """The spec frozen in the round's ConfigMap when its first Job was made (None before that)."""
        import yaml

        try:
            cm = self.core.read_namespaced_config_map(render.config_map_name(round_name), namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return (yaml.safe_load((cm.data or {}).get("round.yaml") or "{}") or {}).get("spec")

    def jobs(self, namespace: str, round_name: str) -> dict[str, dict]:
        items = self.batch.list_namespaced_job(namespace, label_selector=f"{render.ROUND_LABEL}={round_name}").items
        out = {}
        for j in items:
            d = self.api.sanitize_for_serialization(j)
            out[d["metadata"]["labels"][render.STAGE_LABEL]] = d
        return out

    def last_message(self, namespace: str, job: dict) -> str | None:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job['metadata']['name']}").items
        pods.sort(key=lambda p: p.metadata.creation_timestamp)
        for pod in reversed(pods):
            for cs in (pod.status.container_statuses or []):
                term = cs.state.terminated if cs.state else None
                if term is not None and term.message:
                    return term.message
        return None

    def create(self, manifest: dict) -> bool:
        """Create; False when it already exists (a restarted operator, a repeated event)."""
        ns = manifest["metadata"]["namespace"]
        try:
            if manifest["kind"] == "Job":
                self.batch.create_namespaced_job(ns, manifest)
            elif manifest["kind"] == "ConfigMap":
                self.core.create_namespaced_config_map(ns, manifest)
            else:
                raise ValueError(manifest["kind"])
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: dict) -> None:
        self.custom.patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, PLURAL, name,
                                                          {"status": status})

    def event(self, body: dict, type_: str, reason: str, message: str) -> None:
        md = body["metadata"]
        ts = datetime.now(timezone.utc)
        ev = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{md['name']}.", namespace=md["namespace"]),
            involved_object=client.V1ObjectReference(api_version=f"{API_GROUP}/{API_VERSION}", kind="AdoreRound",
                                                     name=md["name"], namespace=md["namespace"], uid=md["uid"]),
            type=type_, reason=reason, message=message[:1024], first_timestamp=ts, last_timestamp=ts, count=1,
            source=client.V1EventSource(component="adore-operator"))
        try:
            self.core.create_namespaced_event(md["namespace"], ev)
        except ApiException as e:  # events are best effort
            log.warning("cannot post event %s on %s: %s", reason, md["name"], e.reason)


def validate_spec(body: dict) -> AdoreRoundSpec | list[str]:
    try:
        return AdoreRoundSpec.model_validate(body.get("spec") or {})
    except ValidationError as e:
        return [p if p.startswith("spec.") else f"spec.{p}" for p in format_validation_error(e)]


def _observe_handoff(status: dict, created: str) -> None:
    i = STAGE_NAMES.index(_base(created)) - 1
    if i < 0:
        return
    finished = status["stages"][STAGE_NAMES[i]].get("finishedAt")
    if finished:
        metrics.HANDOFF_SECONDS.observe(max(0.0, time.time() - parse_ts(finished).timestamp()))


def _base(stage: str) -> str:
    return render.stage_of(stage)


def reconcile(cluster: Cluster, namespace: str, name: str) -> dict | None:
    """Bring one round one step forward. Returns the status written (None if the round is gone)."""
    with _lock(namespace, name), metrics.RECONCILE_SECONDS.time():
        body = cluster.get_round(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return body["status"]  # final: its Jobs may be gone (TTL), nothing is rerun
        spec = validate_spec(body)
        if isinstance(spec, list):
            message = "invalid spec: " + "; ".join(spec)
            status = {"phase": "Failed", "message": message, "observedGeneration": body["metadata"].get("generation"),
                      "conditions": [condition((body.get("status") or {}).get("conditions") or [], t, "True", "InvalidSpec",
                                               message, now_iso()) for t in ("InvalidSpec", "Failed")]}
            if (body.get("status") or {}).get("phase") != "Failed":
                cluster.event(body, "Warning", "InvalidSpec", status["message"])
                cluster.patch_status(namespace, name, status)
            return status
        jobs = cluster.jobs(namespace, name)
        recorded = (body.get("status") or {}).get("stages") or {}
        states = {stage: job_state(job) for stage, job in jobs.items()}
        messages = {stage: cluster.last_message(namespace, job) for stage, job in jobs.items()
                    if states[stage] != "Running" and (recorded.get(stage) or {}).get("state") != states[stage]}
        features = render.detect_features(cluster.api)
        p = plan(body, jobs, messages, now_iso(), features)
        if p.create:
            cluster.create(render.round_config_map(body))
            # Every Job is rendered from the spec frozen at the round's start (image, resources, retries),
            # as its Pods read round.yaml from the same ConfigMap: a later edit of the live spec reaches neither.
            frozen = validate_spec({"spec": cluster.frozen_spec(namespace, name) or body["spec"]})
            spec = frozen if not isinstance(frozen, list) else spec
        for stage in p.create:
            if cluster.create(render.stage_job(body, spec, stage, features)):
                _observe_handoff(p.status, stage)
            else:
                p.events = [e for e in p.events if not (e[1] == "StageStarted" and e[2].endswith(render.job_name(name, stage)))]
            p.status["stages"][_base(stage)].setdefault("startedAt", now_iso())
            p.status["stages"][_base(stage)]["state"] = "Running"
        for stage, st in p.status["stages"].items():
            before = (recorded.get(stage) or {}).get("state")
            if st["state"] in ("Succeeded", "Failed") and before != st["state"] and st.get("durationSeconds") is not None:
                metrics.STAGE_SECONDS.labels(stage=stage, result=st["state"]).observe(st["durationSeconds"])
        if p.status != {k: (body.get("status") or {}).get(k) for k in p.status}:
            cluster.patch_status(namespace, name, p.status)
        for type_, reason, message in p.events:
            cluster.event(body, type_, reason, message)
        metrics.set_phase(namespace, name, p.status["phase"])
        return p.status
