"""Which Job features the API server has, from its version (GET /version).

The operator renders Jobs for Kubernetes 1.20 unless the server is new
enough for a feature that is on by default there:
- indexed Jobs (`completionMode: Indexed`, the JOB_COMPLETION_INDEX of each
  Pod): alpha in 1.21 behind a gate that is off, beta and on in 1.22, GA 1.24;
- `podFailurePolicy`: alpha in 1.25, beta and on in 1.26.
A server that drops a field it does not know would silently run a different
Job (an Indexed Job as N copies of shard "$(JOB_COMPLETION_INDEX)"), hence
on-by-default releases only. ADORE_JOB_FEATURES overrides the detection for a
cluster whose admin turned a gate off: "none", or a comma-separated list of
"indexed", "podFailurePolicy".
"""
from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from dataclasses import dataclass

log = logging.getLogger("adore.operator.features")
OVERRIDE_ENV = "ADORE_JOB_FEATURES"
INDEXED_SINCE = (1, 22)
POD_FAILURE_POLICY_SINCE = (1, 26)


@dataclass(frozen=True)
class JobFeatures:
    indexed_jobs: bool = False
    pod_failure_policy: bool = False


LEGACY = JobFeatures()  # Kubernetes 1.20: what stage Jobs were always rendered for


def from_version(major: str | int, minor: str | int) -> JobFeatures:
    """Features of a server reporting this version; minors like "26+" (EKS, GKE) count as 26."""
    try:
        v = (int(re.match(r"\d+", str(major)).group()), int(re.match(r"\d+", str(minor)).group()))
    except (AttributeError, ValueError):
        return LEGACY
    return JobFeatures(indexed_jobs=v >= INDEXED_SINCE, pod_failure_policy=v >= POD_FAILURE_POLICY_SINCE)


def from_override(text: str) -> JobFeatures:
    words = {w.strip() for w in text.split(",") if w.strip()} - {"none"}
    unknown = words - {"indexed", "podFailurePolicy"}
    if unknown:
        raise ValueError(f"{OVERRIDE_ENV}: unknown feature(s) {sorted(unknown)}; use indexed, podFailurePolicy or none")
    return JobFeatures(indexed_jobs="indexed" in words, pod_failure_policy="podFailurePolicy" in words)


def detect(api_client) -> JobFeatures | None:
    """What the server has; None when it cannot be asked (the caller renders for 1.20 then)."""
    override = os.environ.get(OVERRIDE_ENV)
    if override is not None:
        try:
            return from_override(override)
        except ValueError as e:  # a typo must not stop every round: the 1.20 Jobs run anywhere
            log.error("%s; rendering Jobs for Kubernetes 1.20", e)
            return LEGACY
    from kubernetes import client

    try:
        info = client.VersionApi(api_client).get_code(_request_timeout=10)
    except Exception as e:  # an unreachable or odd server must not stop rounds
        log.warning("cannot read the server version (%s): rendering Jobs for Kubernetes 1.20", e)
        return None
    found = from_version(info.major, info.minor)
    log.info("Kubernetes %s: Job features %s", info.git_version, found)
    return found


_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def for_cluster(api_client) -> JobFeatures:
    """detect() once per API client, as a cheap call before each Job. A failed detection is not
    kept (the next Job asks again); a control-plane upgrade is seen at the operator's next start."""
    with _guard:
        found = _cache.get(api_client)
        if found is None:
            found = detect(api_client)
            if found is not None:
                _cache[api_client] = found
        return found or LEGACY
