"""kopf handlers: one per concern.

- create/resume of an AdoreRound: reconcile (creates the first stage Job).
- a Job of a round changes: reconcile that round at once (stage hand-off).
- a timer on every unfinished round: reconcile (a safety net for missed events).
- a spec change after the round started: ignored, said so (condition SpecLocked + event);
  the round runs on the spec frozen in its ConfigMap. Start a new round to change it.
  spec.trigger and spec.rollback are the exception: the timers read them live, so a change
  there applies (event SpecChangeApplied, no SpecLocked).
- a timer on finished rounds with a trigger: evaluate it against Prometheus.
- a timer on promoted rounds with spec.rollback: watch the signal, roll back (rollback.py).
- deletion: nothing to do; the Jobs, Pods and ConfigMap are owned by the round and
  the garbage collector removes them.

The handlers share one Cluster (API client), made at startup and kept in kopf's memo.
An invalid spec fails the round with kopf.PermanentError (reconcile); what a later try
mends (Prometheus unreachable, a 409 conflict) is a kopf.TemporaryError with its own delay.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from adore.schema import API_GROUP, API_VERSION, FINAL_PHASES, PENDING, PLURAL, SUCCEEDED

from . import metrics
from . import rollback
from .jobs import ROUND_LABEL
from .reconcile import LIVE_SPEC_FIELDS, Cluster, frozen_changes, reconcile, set_condition
from .trigger import PrometheusError, evaluate

log = logging.getLogger("adore.operator")
RECONCILE_INTERVAL = float(os.environ.get("ADORE_RECONCILE_INTERVAL", "10"))
TRIGGER_INTERVAL = float(os.environ.get("ADORE_TRIGGER_INTERVAL", "30"))
METRICS_PORT = int(os.environ.get("ADORE_METRICS_PORT", "8080"))
CANCELLATION_POLLING = 2.0  # seconds between kopf's checks that a deleted round's timers have exited
CONFLICT_DELAY = 1.0  # seconds: a 409 means another write came first; the next try reads it


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # Progress in annotations: the CRD's status schema is strict and owned by us.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"{API_GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=f"{API_GROUP}", key="last-handled")
    # The round's Events are the ones posted on purpose (kopf.info/warn/event); log lines stay in the log.
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "adore-operator"
    settings.watching.server_timeout = 60
    # A round deleted while its trigger or rollback timer is mid-call (a Prometheus query, up to its 5 s
    # timeout) keeps kopf's finalizer until kopf sees the timer has exited, and kopf looks again only
    # every cancellation_polling seconds (60 by default): the round, and so its Jobs, outlived the delete
    # by a minute. The timers exit as soon as their call returns, so look often.
    settings.background.cancellation_polling = CANCELLATION_POLLING
    if METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(METRICS_PORT)
    memo.cluster = Cluster(_api_client())


@contextlib.contextmanager
def _retried_later() -> Iterator[None]:
    """Errors a later try mends, as kopf.TemporaryError with their delay instead of kopf's default backoff."""
    try:
        yield
    except PrometheusError as e:  # the status already says so; try again at the usual pace
        raise kopf.TemporaryError(str(e), delay=TRIGGER_INTERVAL) from e
    except ApiException as e:
        if e.status != 409:
            raise
        raise kopf.TemporaryError(f"conflict: {e.reason}", delay=CONFLICT_DELAY) from e


@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
def start_round(name: str, namespace: str, memo: kopf.Memo, **_) -> None:
    with _retried_later():
        reconcile(memo.cluster, namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={ROUND_LABEL: kopf.PRESENT})
def job_changed(labels: kopf.Labels, namespace: str, type: str | None, memo: kopf.Memo, **_) -> None:
    if type == "DELETED":
        return
    with _retried_later():
        reconcile(memo.cluster, namespace, labels[ROUND_LABEL])


def _unfinished(status: kopf.Status, **_) -> bool:
    return status.get("phase") not in FINAL_PHASES


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=RECONCILE_INTERVAL, when=_unfinished)
def resync(name: str, namespace: str, memo: kopf.Memo, **_) -> None:
    with _retried_later():
        reconcile(memo.cluster, namespace, name)


@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def spec_changed(body: kopf.Body, name: str, namespace: str, status: kopf.Status, patch: kopf.Patch,
                 memo: kopf.Memo, diff: kopf.Diff, **_) -> None:
    if not status.get("phase") or status.get("phase") == PENDING:
        with _retried_later():
            reconcile(memo.cluster, namespace, name)
        return
    live = ", ".join(f"spec.{f}" for f in LIVE_SPEC_FIELDS)
    frozen = frozen_changes(diff)
    if not frozen:
        kopf.info(body, reason="SpecChangeApplied",
                  message=f"{live} are read live after the round finishes: the next evaluation uses the change")
        return
    msg = (f"spec changes after a round started are ignored ({', '.join('spec.' + f for f in frozen)}): it runs "
           f"on the spec frozen in ConfigMap {name}-round; create a new AdoreRound to change it ({live} are "
           "read live and do apply)")
    kopf.warn(body, reason="SpecChangeIgnored", message=msg)
    patch.status["conditions"] = set_condition(list(status.get("conditions") or []), "SpecLocked", "True",
                                               "SpecChangeIgnored", msg)


def _finished_with_trigger(spec: kopf.Spec, status: kopf.Status, **_) -> bool:
    return bool(spec.get("trigger")) and status.get("phase") == SUCCEEDED


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=TRIGGER_INTERVAL, when=_finished_with_trigger)
def next_round_trigger(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    with _retried_later():
        evaluate(memo.cluster, dict(body))


def _promoted_with_rollback(spec: kopf.Spec, status: kopf.Status, **_) -> bool:
    return (bool(spec.get("rollback")) and status.get("phase") == SUCCEEDED and bool(status.get("promotedVersion"))
            and (status.get("rollback") or {}).get("state") not in rollback.DONE)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=TRIGGER_INTERVAL, when=_promoted_with_rollback)
def rollback_watch(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    with _retried_later():
        rollback.evaluate(memo.cluster, dict(body))


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def forget(name: str, namespace: str, **_) -> None:
    metrics.set_phase(namespace, name, None)
