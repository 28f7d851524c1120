"""kopf handlers: one per concern.

- create/resume of an AdoreRound: reconcile (creates the first stage Job).
- a Job of a round changes: reconcile that round at once (stage hand-off).
- a timer on every unfinished round: reconcile (a safety net for missed events).
- a spec change after the round started: ignored, said so (condition SpecLocked + event);
  the round runs on the spec frozen in its ConfigMap. Start a new round to change it.
- a timer on finished rounds with a trigger: evaluate it against Prometheus.
- a timer on promoted rounds with spec.rollback: watch the signal, roll back (rollback.py).
- deletion: nothing to do; the Jobs, Pods and ConfigMap are owned by the round and
  the garbage collector removes them.
"""
from __future__ import annotations

import logging
import os

import kopf
from kubernetes import client, config

from adore.schema import API_GROUP, API_VERSION, PLURAL

from . import metrics
from .jobs import ROUND_LABEL
from .reconcile import Cluster, condition, now_iso, reconcile
from . import rollback
from .trigger import evaluate

log = logging.getLogger("adore.operator")
RECONCILE_INTERVAL = float(os.environ.get("ADORE_RECONCILE_INTERVAL", "10"))
TRIGGER_INTERVAL = float(os.environ.get("ADORE_TRIGGER_INTERVAL", "30"))
METRICS_PORT = int(os.environ.get("ADORE_METRICS_PORT", "8080"))
_cluster: Cluster | None = None


def cluster() -> Cluster:
    global _cluster
    if _cluster is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _cluster = Cluster(client.ApiClient())
    return _cluster


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    # Progress in annotations: the CRD's status schema is strict and owned by us.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"{API_GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=f"{API_GROUP}", key="last-handled")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    if METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(METRICS_PORT)
    cluster()


@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
def start_round(name, namespace, **_):
    reconcile(cluster(), namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={ROUND_LABEL: kopf.PRESENT})
def job_changed(body, namespace, type, **_):
    if type == "DELETED":
        return
    reconcile(cluster(), namespace, body["metadata"]["labels"][ROUND_LABEL])


def _unfinished(status, **_) -> bool:
    return (status or {}).get("phase") not in ("Succeeded", "Failed")


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=RECONCILE_INTERVAL, when=_unfinished)
def resync(name, namespace, **_):
    reconcile(cluster(), namespace, name)


@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def spec_changed(body, name, namespace, status, **_):
    if not (status or {}).get("phase") or status.get("phase") == "Pending":
        reconcile(cluster(), namespace, name)
        return
    msg = ("spec changes after a round started are ignored: it runs on the spec frozen in ConfigMap "
           f"{name}-round; create a new AdoreRound to change it")
    c = cluster()
    c.event(body, "Warning", "SpecChangeIgnored", msg)
    conds = [x for x in (status.get("conditions") or []) if x.get("type") != "SpecLocked"]
    c.patch_status(namespace, name, {"conditions": conds + [
        condition(status.get("conditions") or [], "SpecLocked", "True", "SpecChangeIgnored", msg, now_iso())]})


def _finished_with_trigger(spec, status, **_) -> bool:
    return bool((spec or {}).get("trigger")) and (status or {}).get("phase") == "Succeeded"


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=TRIGGER_INTERVAL, when=_finished_with_trigger)
def next_round_trigger(body, **_):
    evaluate(cluster(), dict(body))


def _promoted_with_rollback(spec, status, **_) -> bool:
    status = status or {}
    return (bool((spec or {}).get("rollback")) and status.get("phase") == "Succeeded" and bool(status.get("promotedVersion"))
            and (status.get("rollback") or {}).get("state") not in rollback.DONE)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=TRIGGER_INTERVAL, when=_promoted_with_rollback)
def rollback_watch(body, **_):
    rollback.evaluate(cluster(), dict(body))


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def forget(name, namespace, **_):
    metrics.set_phase(namespace, name, None)
