"""The next-round trigger: a PromQL condition that must hold for a while.

Evaluated on a timer for the latest promoted round of a lineage. The state
(since when the condition holds, the last value) lives in the round's
status, so a restarted operator continues where it was. Prometheus
unreachable means no trigger: the PrometheusReachable condition says so, and
evaluate() raises the PrometheusError for the handler to retry later.
"""
from __future__ import annotations

import copy
import logging
import operator as op
from datetime import datetime, timezone

import kopf
import requests
from kubernetes.client.rest import ApiException

from adore.errors import AdoreError
from adore.schema import API_GROUP, API_VERSION, KIND, PLURAL, SUCCEEDED, TriggerSpec
from adore.timestamps import now_iso, parse_iso

from . import metrics
from .reconcile import Cluster, set_condition

log = logging.getLogger("adore.operator.trigger")
LINEAGE_LABEL = f"{API_GROUP}/lineage"
NUMBER_LABEL = f"{API_GROUP}/round-number"
PREVIOUS_LABEL = f"{API_GROUP}/previous-round"
_OPS = {">": op.gt, ">=": op.ge, "<": op.lt, "<=": op.le}


class PrometheusError(AdoreError, RuntimeError):
    """Prometheus unreachable, or its answer unusable for a PromQL condition."""


def query(url: str, promql: str, timeout: float = 5.0) -> float:
    """One instant query that must return exactly one sample."""
    try:
        r = requests.get(f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=timeout)
        doc = r.json()
    except (requests.RequestException, ValueError) as e:
        raise PrometheusError(f"Prometheus at {url} unreachable: {e}") from None
    if doc.get("status") != "success":
        raise PrometheusError(f"query failed: {doc.get('errorType')}: {doc.get('error')}")
    data = doc["data"]
    if data["resultType"] == "scalar":
        return float(data["result"][1])
    result = data["result"]
    if len(result) != 1:
        raise PrometheusError(f"query returned {len(result)} series; the trigger needs exactly one")
    return float(result[0]["value"][1])


def holds(comparison: str, value: float, threshold: float) -> bool:
    return _OPS[comparison](value, threshold)


def _age_seconds(ts: str, now: datetime) -> float:
    return (now - parse_iso(ts)).total_seconds()


def next_round_name(body: dict) -> tuple[str, int]:
    labels = body["metadata"].get("labels") or {}
    lineage = labels.get(LINEAGE_LABEL, body["metadata"]["name"])
    number = int(labels.get(NUMBER_LABEL, "1"))
    return f"{lineage}-r{number + 1}", number + 1


def next_round(body: dict) -> dict:
    name, number = next_round_name(body)
    labels = body["metadata"].get("labels") or {}
    spec = copy.deepcopy(body["spec"])
    spec["previousRound"] = body["metadata"]["name"]
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": body["metadata"]["namespace"],
                         "labels": {LINEAGE_LABEL: labels.get(LINEAGE_LABEL, body["metadata"]["name"]),
                                    NUMBER_LABEL: str(number), PREVIOUS_LABEL: body["metadata"]["name"]}},
            "spec": spec}


def evaluate(cluster: Cluster, body: dict, now: datetime | None = None) -> dict | None:
    """One trigger evaluation for a finished round; returns the trigger status written, if any.
    Raises PrometheusError (after writing why) when Prometheus gives no usable answer."""
    now = now or datetime.now(timezone.utc)
    status = body.get("status") or {}
    if status.get("phase") != SUCCEEDED or not status.get("promotedVersion") or not body["spec"].get("trigger"):
        return None
    spec = TriggerSpec.model_validate(body["spec"]["trigger"])
    md = body["metadata"]
    prev = status.get("trigger") or {}
    if prev.get("nextRound"):
        return None  # this round already has its successor: only the latest round triggers
    name, number = next_round_name(body)
    out = {"lastEvaluated": now_iso()}
    if _successor_exists(cluster, md["namespace"], name, md["name"]):
        # Created by an earlier evaluation that stopped before it wrote this status (an operator killed
        # between the two writes): name it now, whatever the signal says today; never create another.
        out.update({"nextRound": name, "message": f"found {name}, created by an earlier evaluation"})
        _write(cluster, body, out, ("True", "QueryOK", "successor found"))
        return out
    try:
        value = query(spec.prometheus_url, spec.query)
    except PrometheusError as e:
        metrics.TRIGGER_EVALUATIONS.labels(outcome="error").inc()
        out.update({"message": str(e)})
        _write(cluster, body, out, ("False", "QueryFailed", str(e)))
        raise
    holding = holds(spec.comparison, value, spec.threshold)
    out["lastValue"] = value
    cond = ("True", "QueryOK", f"last value {value:g}")
    if not holding:
        metrics.TRIGGER_EVALUATIONS.labels(outcome="not_holding").inc()
        out.update({"holdingSince": None, "message": f"{value:g} {spec.comparison} {spec.threshold:g} does not hold"})
        _write(cluster, body, out, cond)
        return out
    metrics.TRIGGER_EVALUATIONS.labels(outcome="holding").inc()
    since = prev.get("holdingSince") or now_iso()
    out["holdingSince"] = since
    held = _age_seconds(since, now)
    age = _age_seconds(md["creationTimestamp"], now) if md.get("creationTimestamp") else 0
    if held < spec.for_seconds:
        out["message"] = f"holding for {held:.0f}s of {spec.for_seconds}s"
    elif number > spec.max_rounds:
        out["message"] = f"holds, but maxRounds {spec.max_rounds} reached"
    elif age < spec.cooldown_seconds:
        out["message"] = f"holds, cooling down ({age:.0f}s of {spec.cooldown_seconds}s since this round started)"
    else:
        child = next_round(body)
        try:
            cluster.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, md["namespace"], PLURAL, child)
            metrics.ROUNDS_CREATED.inc()
            kopf.info(body, reason="NextRoundCreated", message=f"created {child['metadata']['name']}: "
                      f"{spec.query} = {value:g} {spec.comparison} {spec.threshold:g} for {held:.0f}s")
        except ApiException as e:
            if e.status != 409:
                raise
        out.update({"nextRound": child["metadata"]["name"], "message": f"started {child['metadata']['name']}"})
    _write(cluster, body, out, cond)
    return out


def _successor_exists(cluster: Cluster, namespace: str, name: str, parent: str) -> bool:
    try:
        child = cluster.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return (child["metadata"].get("labels") or {}).get(PREVIOUS_LABEL) == parent


def _write(cluster: Cluster, body: dict, trigger: dict, reachable: tuple[str, str, str]) -> None:
    """The trigger status, and PrometheusReachable as (status, reason, message)."""
    conds = set_condition((body.get("status") or {}).get("conditions") or [], "PrometheusReachable", *reachable)
    cluster.patch_status(body["metadata"]["namespace"], body["metadata"]["name"],
                         {"trigger": trigger, "conditions": conds})
