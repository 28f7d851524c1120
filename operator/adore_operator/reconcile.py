"""Reconciling one AdoreRound: observe its Jobs, plan the next step, apply it.

`plan()` is a pure function from (round, Jobs, Pod messages, now) to the Jobs to
create, the status to write and the events to post. It composes pure parts:
stage_states() (each stage from its Jobs, and what to create), round_phase(),
conditions() and events(); the status is the schema's AdoreRoundStatus.
`reconcile()` does the I/O around it. Any handler (create, resume, timer, Job
event) may call `reconcile()`; deterministic Job names make a repeated call harmless.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import kopf
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from pydantic import BaseModel, ValidationError

from adore.schema import (API_GROUP, API_VERSION, FAILED, FINAL_PHASES, PENDING, PLURAL, RUNNING, SHARDED_STAGES,
                          STAGE_NAMES, SUCCEEDED, AdoreRoundSpec, AdoreRoundStatus, Condition, StageStatus,
                          format_validation_error, shard_name)
from adore.termination import parse as parse_message
from adore.timestamps import now_iso, parse_iso, to_iso

from . import jobs as render
from . import metrics
from .features import LEGACY, JobFeatures

log = logging.getLogger("adore.operator")
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def wire(model: BaseModel) -> dict:
    """A status model as written to the API: camelCase, only the fields that were set (a None set clears one)."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def recorded_status(body: dict) -> AdoreRoundStatus:
    return AdoreRoundStatus.model_validate(body.get("status") or {})


# --- conditions

def condition(prev: list[Condition], type_: str, status: str, reason: str, message: str, now: str) -> Condition:
    """A condition; its lastTransitionTime moves only when its status changes."""
    old = next((c for c in prev if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else None
    return Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=since or now)


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str) -> list[dict]:
    """A status's conditions with this one in place of its type's: the list to patch."""
    new = condition([Condition.model_validate(c) for c in conditions], type_, status, reason, message, now_iso())
    return [c for c in conditions if c.get("type") != type_] + [wire(new)]


# spec fields the operator reads from the live object on every evaluation after the round finished (the
# next-round trigger and the rollback watch act on serving, not on the round's stages): not frozen.
LIVE_SPEC_FIELDS = ("trigger", "rollback")


def frozen_changes(diff) -> list[str]:
    """The top-level spec fields an update changed that the round's frozen spec governs (kopf's diff of a
    handler on field "spec": (operation, path relative to spec, old, new)); the live fields left out."""
    fields: set[str] = set()
    for _, path, old, new in diff:
        if path:
            fields.add(path[0])
        else:  # the whole spec added, removed or replaced: every top-level field that differs
            old, new = old or {}, new or {}
            fields |= {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    return sorted(fields - set(LIVE_SPEC_FIELDS))


_TRUTH = {SUCCEEDED: "True", FAILED: "False"}


def promotion_outcome(promote_metrics: dict) -> str:
    """What a succeeded round's promote stage did: the Promoted condition's reason and the metric's outcome."""
    if promote_metrics.get("promoted"):
        return "Promoted"
    return "RegressesPrevious" if promote_metrics.get("regressesPrevious") else "GatesNotPassed"


def conditions(prev: list[Condition], stages: dict[str, StageStatus], phase: str, message: str,
               now: str) -> list[Condition]:
    """Stage<Name> per stage, Ready, Failed and, once done, Promoted; others (SpecLocked, PrometheusReachable) kept."""
    new = [condition(prev, f"Stage{name.capitalize()}", _TRUTH.get(s.state, "Unknown"), s.state,
                     s.message or s.state, now) for name, s in stages.items()]
    new.append(condition(prev, "Ready", "True" if phase == SUCCEEDED else "False", phase, message, now))
    new.append(condition(prev, "Failed", "True" if phase == FAILED else "False", phase, message, now))
    if phase == SUCCEEDED:
        promote = stages["promote"].metrics
        new.append(condition(prev, "Promoted", "True" if promote.get("promoted") else "False",
                             promotion_outcome(promote), message, now))
    ours = {c.type for c in new}
    return new + [c for c in prev if c.type not in ours]


# --- stages from Jobs

def job_state(job: dict) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Complete":
            return SUCCEEDED
        if c.get("status") == "True" and c.get("type") == "Failed":
            return FAILED
    return RUNNING


def _finished_at(job: dict) -> str | None:
    st = job.get("status") or {}
    if st.get("completionTime"):
        return to_iso(st["completionTime"])
    for c in st.get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return to_iso(c.get("lastTransitionTime"))
    return None


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (parse_iso(b) - parse_iso(a)).total_seconds()


def _job_failure_reason(job: dict) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed":
            return f"{c.get('reason')}: {c.get('message')}"
    return "job failed"


def _job_stage(job: dict, metrics_: dict, error: str | None) -> StageStatus:
    """A stage with its own Job (not sharded, or merging its shards)."""
    state = job_state(job)
    started = to_iso((job.get("status") or {}).get("startTime")) or to_iso(job["metadata"].get("creationTimestamp"))
    st = StageStatus(state=state, started_at=started)
    if state in FINAL_PHASES:
        st.finished_at = _finished_at(job)
        st.duration_seconds = _seconds(started, st.finished_at)
    if metrics_:
        st.metrics = metrics_
    if state == FAILED:
        st.message = error or _job_failure_reason(job)
    return st


def _shard_stage(stage: str, n: int, jobs: dict[str, dict], messages: dict[str, str | None],
                 features: JobFeatures) -> tuple[StageStatus, list[str]] | None:
    """A sharded stage before its merging Job: its status and the shard Jobs still to create; None once
    every shard succeeded. Shard Jobs made before an upgrade to Indexed Jobs keep the stage in their shape."""
    legacy = [shard_name(stage, i, n) for i in range(n)]
    names = legacy if any(j in jobs for j in legacy) else render.shard_job_names(stage, n, features)
    shards = {"succeeded": render.shards_succeeded(jobs, names), "total": n}
    bad = [j for j in names if j in jobs and job_state(jobs[j]) == FAILED]
    if bad:
        _, error = parse_message(messages.get(bad[0]))
        reason = f"{bad[0]}: {error or _job_failure_reason(jobs[bad[0]])}"
        return StageStatus(state=FAILED, message=reason, shards=shards), []
    if shards["succeeded"] < n:
        return StageStatus(state=RUNNING, shards=shards), [j for j in names if j not in jobs]
    return None


def _shards(body: dict, stage: str) -> int:
    if stage not in SHARDED_STAGES:
        return 1
    return int(((((body.get("spec") or {}).get("stages") or {}).get(stage)) or {}).get("shards", 1))


def stage_states(body: dict, recorded: AdoreRoundStatus, jobs: dict[str, dict], messages: dict[str, str | None],
                 features: JobFeatures = LEGACY) -> tuple[dict[str, StageStatus], list[str]]:
    """Each stage's status, and the Jobs to create: those of the first stage not yet succeeded when it
    has none. `messages` are the termination messages read this time; a stage recorded in the same
    state keeps what was read when it finished."""
    stages: dict[str, StageStatus] = {}
    create: list[str] = []
    for name in STAGE_NAMES:
        first = all(s.state == SUCCEEDED for s in stages.values())  # every earlier stage succeeded
        n = _shards(body, name)
        sharded = _shard_stage(name, n, jobs, messages, features) if first and n > 1 and name not in jobs else None
        if sharded is not None:
            stages[name], create = sharded
        elif name not in jobs:
            stages[name] = StageStatus(state=PENDING)
            create = [name] if first else create
        else:
            before = recorded.stages.get(name)
            if name not in messages and before is not None and before.state == job_state(jobs[name]):
                stages[name] = _job_stage(jobs[name], before.metrics, before.message)
            else:
                stages[name] = _job_stage(jobs[name], *parse_message(messages.get(name)))
    return stages, create


# --- the round from its stages

def round_phase(stages: dict[str, StageStatus], started: bool) -> str:
    if any(s.state == FAILED for s in stages.values()):
        return FAILED
    if all(s.state == SUCCEEDED for s in stages.values()):
        return SUCCEEDED
    return RUNNING if started else PENDING


def current_stage(stages: dict[str, StageStatus], phase: str) -> str | None:
    """The failed stage, else the first not succeeded; None once the round succeeded."""
    if phase == SUCCEEDED:
        return None
    return next(n for n, s in stages.items() if s.state == FAILED or (phase != FAILED and s.state != SUCCEEDED))


def round_message(stages: dict[str, StageStatus], phase: str, stage: str | None) -> str:
    promote = stages["promote"].metrics
    if phase == SUCCEEDED:
        if promote.get("promoted"):
            return f"promoted version {promote.get('version')}"
        return "not promoted: " + "; ".join(promote.get("reasons") or ["gates not passed"])
    if phase == FAILED:
        return f"stage {stage} failed: {stages[stage].message}"
    return f"running stage {stage}"


def _results(stages: dict[str, StageStatus], phase: str) -> dict:
    """quality once evaluate reported it; promotedVersion once the round promoted one."""
    evaluate, promote = stages["evaluate"].metrics, stages["promote"].metrics
    out = {"quality": evaluate["macroF1"]} if "macroF1" in evaluate else {}
    if phase == SUCCEEDED and promote.get("promoted"):
        out["promoted_version"] = promote.get("version")
    return out


class Event(NamedTuple):
    type: str  # Normal or Warning
    reason: str
    message: str


def started_event(round_name: str, stage: str) -> Event:
    return Event("Normal", "StageStarted", f"created Job {render.job_name(round_name, stage)}")


def events(round_name: str, recorded: AdoreRoundStatus, stages: dict[str, StageStatus], phase: str,
           message: str, create: list[str]) -> list[Event]:
    """What changed since the recorded status: stages that ended, Jobs to create, the round's end."""
    out = []
    for name, s in stages.items():
        before = recorded.stages[name].state if name in recorded.stages else PENDING
        if before != s.state and s.state == SUCCEEDED:
            out.append(Event("Normal", "StageSucceeded", f"stage {name} succeeded"))
        elif before != s.state and s.state == FAILED:
            out.append(Event("Warning", "StageFailed", f"stage {name} failed: {s.message}"))
    out += [started_event(round_name, stage) for stage in create]
    if recorded.phase != phase and phase in FINAL_PHASES:
        out.append(Event("Normal" if phase == SUCCEEDED else "Warning", f"Round{phase}", message))
    return out


@dataclass
class Plan:
    create: list[str] = field(default_factory=list)  # stage (or shard) names whose Jobs to create
    round_status: AdoreRoundStatus = field(default_factory=AdoreRoundStatus)
    events: list[Event] = field(default_factory=list)

    @property
    def status(self) -> dict:
        return wire(self.round_status)


def plan(body: dict, jobs: dict[str, dict], messages: dict[str, str | None], now: str,
         features: JobFeatures = LEGACY) -> Plan:
    """features: what the server's Jobs can do; shards run as one Indexed Job where it has them."""
    recorded = recorded_status(body)
    stages, create = stage_states(body, recorded, jobs, messages, features)
    phase = round_phase(stages, started=bool(jobs or create))
    if phase == FAILED:
        create = []  # nothing runs after a failed stage
    stage = current_stage(stages, phase)
    message = round_message(stages, phase, stage)
    status = AdoreRoundStatus(phase=phase, stage=stage, stages=stages, message=message,
                              observed_generation=body["metadata"].get("generation"),
                              conditions=conditions(recorded.conditions or [], stages, phase, message, now),
                              **_results(stages, phase))
    return Plan(create, status, events(body["metadata"]["name"], recorded, stages, phase, message, create))


def invalid_spec_status(body: dict, problems: list[str], now: str) -> AdoreRoundStatus:
    message = "invalid spec: " + "; ".join(problems)
    prev = recorded_status(body).conditions or []
    return AdoreRoundStatus(phase=FAILED, message=message, observed_generation=body["metadata"].get("generation"),
                            conditions=[condition(prev, t, "True", "InvalidSpec", message, now)
                                        for t in ("InvalidSpec", "Failed")])


# --- I/O

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


def post(body: dict, event: Event) -> None:
    """Post a Kubernetes Event on the round (kopf posts it in the background; best effort)."""
    kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def validate_spec(body: dict) -> AdoreRoundSpec | list[str]:
    try:
        return AdoreRoundSpec.model_validate(body.get("spec") or {})
    except ValidationError as e:
        return [p if p.startswith("spec.") else f"spec.{p}" for p in format_validation_error(e)]


def _observe_handoff(status: AdoreRoundStatus, created: str) -> None:
    i = STAGE_NAMES.index(render.stage_of(created)) - 1
    if i < 0:
        return
    finished = status.stages[STAGE_NAMES[i]].finished_at
    if finished:
        metrics.HANDOFF_SECONDS.observe(max(0.0, time.time() - parse_iso(finished).timestamp()))


def _observe_durations(status: AdoreRoundStatus, recorded: AdoreRoundStatus) -> None:
    for stage, st in status.stages.items():
        before = recorded.stages[stage].state if stage in recorded.stages else None
        if st.state in FINAL_PHASES and before != st.state and st.duration_seconds is not None:
            metrics.STAGE_SECONDS.labels(stage=stage, result=st.state).observe(st.duration_seconds)


def _observe_promotion(status: AdoreRoundStatus, recorded: AdoreRoundStatus) -> None:
    """Count a round once, when this reconcile is the one that sees it succeed (the dashboard's promotions)."""
    if status.phase == SUCCEEDED and recorded.phase != SUCCEEDED and "promote" in status.stages:
        metrics.PROMOTIONS.labels(outcome=promotion_outcome(status.stages["promote"].metrics)).inc()


def _new_messages(cluster: Cluster, namespace: str, jobs: dict[str, dict],
                  recorded: AdoreRoundStatus) -> dict[str, str | None]:
    """The termination messages of the Jobs that ended since the status recorded them (read once)."""
    out = {}
    for stage, job in jobs.items():
        state, before = job_state(job), recorded.stages.get(stage)
        if state != RUNNING and (before is None or before.state != state):
            out[stage] = cluster.last_message(namespace, job)
    return out


def _create_jobs(cluster: Cluster, body: dict, spec: AdoreRoundSpec, p: Plan, features: JobFeatures) -> None:
    md = body["metadata"]
    cluster.create(render.round_config_map(body))
    # Every Job is rendered from the spec frozen at the round's start (image, resources, retries),
    # as its Pods read round.yaml from the same ConfigMap: a later edit of the live spec reaches neither.
    frozen = validate_spec({"spec": cluster.frozen_spec(md["namespace"], md["name"]) or body["spec"]})
    spec = frozen if not isinstance(frozen, list) else spec
    for stage in p.create:
        if cluster.create(render.stage_job(body, spec, stage, features)):
            _observe_handoff(p.round_status, stage)
        else:  # made by an earlier call: not started now
            p.events.remove(started_event(md["name"], stage))
        st = p.round_status.stages[render.stage_of(stage)]
        st.started_at = st.started_at or now_iso()
        st.state = RUNNING


def _fail_invalid(cluster: Cluster, body: dict, problems: list[str]) -> None:
    status = invalid_spec_status(body, problems, now_iso())
    cluster.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], wire(status))
    post(body, Event("Warning", "InvalidSpec", status.message))
    raise kopf.PermanentError(status.message)  # the round failed: retrying the same spec cannot help


def reconcile(cluster: Cluster, namespace: str, name: str) -> dict | None:
    """Bring one round one step forward. Returns the status written (None if the round is gone).
    A spec the schema rejects fails the round, then raises kopf.PermanentError."""
    with _lock(namespace, name), metrics.RECONCILE_SECONDS.time():
        body = cluster.get_round(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        if (body.get("status") or {}).get("phase") in FINAL_PHASES:
            return body["status"]  # final: its Jobs may be gone (TTL), nothing is rerun
        spec = validate_spec(body)
        if isinstance(spec, list):
            _fail_invalid(cluster, body, spec)
        jobs = cluster.jobs(namespace, name)
        recorded = recorded_status(body)
        features = render.detect_features(cluster.api)
        p = plan(body, jobs, _new_messages(cluster, namespace, jobs, recorded), now_iso(), features)
        if p.create:
            _create_jobs(cluster, body, spec, p, features)
        _observe_durations(p.round_status, recorded)
        _observe_promotion(p.round_status, recorded)
        status = p.status
        if status != {k: (body.get("status") or {}).get(k) for k in status}:
            cluster.patch_status(namespace, name, status)
        for event in p.events:
            post(body, event)
        metrics.set_phase(namespace, name, status["phase"])
        return status
