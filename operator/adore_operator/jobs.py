"""Rendering the Kubernetes objects of a round: its spec ConfigMap and its stage Jobs.

Pure functions of the AdoreRound body, so they are unit-tested without a
cluster. Names are deterministic: a restarted operator finds the Jobs it
made instead of creating duplicates. What a Job uses beyond Kubernetes 1.20
(Indexed Jobs, podFailurePolicy) depends on the JobFeatures passed in
(adore_operator.features detects them from the server).
"""
from __future__ import annotations

import hashlib

import kopf
import yaml

from adore import termination
from adore.cli import EXIT_INVALID
from adore.hardware import EXPECT_GPUS_ENV
from adore.schema import API_GROUP, API_VERSION, KIND, AdoreRoundSpec, shard_name, shard_of

from .features import LEGACY, JobFeatures
# Re-exported: reconcile passes render.detect_features(cluster.api) to stage_job().
from .features import for_cluster as detect_features  # noqa: F401

ROUND_LABEL = f"{API_GROUP}/round"
STAGE_LABEL = f"{API_GROUP}/stage"
ROUND_FILE_DIR = "/etc/adore/round"
RULES_DIR = "/etc/adore/rules"
TERMINATION_LOG = "/dev/termination-log"


def _dns_name(*parts: str, limit: int = 63) -> str:
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9].rstrip('-')}-{digest}"


def job_name(round_name: str, stage: str) -> str:
    return _dns_name(round_name, stage.replace(".", "-"))


def config_map_name(round_name: str) -> str:
    return _dns_name(round_name, "round")


def adopted(manifest: dict, body: dict) -> dict:
    """The manifest, owned by the round (the garbage collector deletes it with the round) and in its namespace,
    with the round's own adore.dev/ labels (the lineage) that it does not set itself. Not kopf.adopt: that copies
    every label of the round, and a tool's tracking label there (Argo CD's app.kubernetes.io/instance) would make
    the tool take the Jobs for its own and prune them."""
    kopf.append_owner_reference(manifest, owner=body)
    kopf.adjust_namespace(manifest, namespace=body["metadata"]["namespace"])
    ours = {k: v for k, v in (body["metadata"].get("labels") or {}).items() if k.startswith(f"{API_GROUP}/")}
    manifest["metadata"]["labels"] = {**ours, **(manifest["metadata"].get("labels") or {})}
    return manifest


def labels(round_name: str, stage: str | None = None) -> dict:
    out = {ROUND_LABEL: round_name, "app.kubernetes.io/managed-by": "adore-operator"}
    if stage:
        out[STAGE_LABEL] = stage
    return out


def round_config_map(body: dict) -> dict:
    """The spec the round runs with, frozen at its start (later spec edits do not reach running stages)."""
    name = body["metadata"]["name"]
    doc = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": body["spec"]}
    return adopted({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": config_map_name(name), "labels": labels(name)},
                    "data": {"round.yaml": yaml.safe_dump(doc, sort_keys=False)}}, body)


# Exit codes after which a retry cannot help: the worker found the round file invalid
# (adore.cli; argparse's usage errors exit with the same 2). A podFailurePolicy fails
# the Job at once on them instead of spending spec.runtime retries.
PERMANENT_EXIT_CODES = (EXIT_INVALID,)
CONTAINER = "stage"
INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
_SHARD_SET = ".shards-of-"


def shard_set_name(stage: str, n: int) -> str:
    """The one Indexed Job that runs all n shards of a sharded stage (features.indexed_jobs)."""
    return f"{stage}{_SHARD_SET}{n}"


def shard_set_of(name: str) -> tuple[str, int] | None:
    """(stage, n) for a shard_set_name(); None for a stage or shard name."""
    stage, sep, n = name.partition(_SHARD_SET)
    return (stage, int(n)) if sep and n.isdigit() else None


def stage_of(name: str) -> str:
    """The stage a Job name (stage, shard or shard set) belongs to."""
    shard, shard_set = shard_of(name), shard_set_of(name)
    return shard[0] if shard else shard_set[0] if shard_set else name


def shard_job_names(stage: str, n: int, features: JobFeatures = LEGACY) -> list[str]:
    """The Jobs that run a stage's n shards: one Indexed Job where the server has them, else n Jobs."""
    return [shard_set_name(stage, n)] if features.indexed_jobs else [shard_name(stage, i, n) for i in range(n)]


def shards_succeeded(jobs: dict[str, dict], names: list[str]) -> int:
    """Shards done among these Jobs: an Indexed Job counts its succeeded Pods (one per index)."""
    done = 0
    for name in names:
        status = (jobs.get(name) or {}).get("status") or {}
        if shard_set_of(name):
            done += int(status.get("succeeded") or 0)
        else:
            done += any(c.get("type") == "Complete" and c.get("status") == "True" for c in status.get("conditions") or [])
    return done


def pod_failure_policy() -> dict:
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": list(PERMANENT_EXIT_CODES)}},
        # An evicted or preempted Pod did nothing wrong: its rerun is not one of the stage's retries.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def _resources(srt) -> dict:
    if not (srt.cpu or srt.memory or srt.gpus):
        return {}
    limits = {k: v for k, v in (("cpu", srt.cpu), ("memory", srt.memory)) if v}
    if srt.gpus:
        limits["nvidia.com/gpu"] = str(srt.gpus)
    return {"requests": {k: v for k, v in limits.items() if k != "nvidia.com/gpu"}, "limits": limits}


def _volumes(round_name: str, rt) -> tuple[list[dict], list[dict]]:
    mounts = [{"name": "round", "mountPath": ROUND_FILE_DIR, "readOnly": True},
              {"name": "workdir", "mountPath": rt.workdir_path}]
    volumes = [{"name": "round", "configMap": {"name": config_map_name(round_name)}},
               {"name": "workdir", **({"persistentVolumeClaim": {"claimName": rt.workdir_claim}}
                                      if rt.workdir_claim else {"emptyDir": {}})}]
    if rt.rules_config_map:
        mounts.append({"name": "rules", "mountPath": RULES_DIR, "readOnly": True})
        volumes.append({"name": "rules", "configMap": {"name": rt.rules_config_map}})
    return mounts, volumes


def _shard_arg(stage: str) -> tuple[list[str], list[dict]]:
    """The worker's --shard i/N, and for an Indexed Job the env its $(JOB_COMPLETION_INDEX) expands from."""
    shard, shard_set = shard_of(stage), shard_set_of(stage)
    if shard:
        return ["--shard", f"{shard[1]}/{shard[2]}"], []
    if not shard_set:
        return [], []
    # Kubernetes expands $(VAR) in a command from the container's env. The controller injects this
    # variable itself only from 1.22 and skips it when it is declared, so declaring it always works.
    index = {"name": INDEX_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}}
    return ["--shard", f"$({INDEX_ENV})/{shard_set[1]}"], [index]


def _container(body: dict, spec: AdoreRoundSpec, stage: str, srt, mounts: list[dict]) -> dict:
    rt = spec.runtime
    shard_args, shard_env = _shard_arg(stage)
    container = {
        "name": CONTAINER,
        "image": rt.image,
        "imagePullPolicy": rt.image_pull_policy,
        "command": ["adore", "stage", stage_of(stage), "--round", f"{ROUND_FILE_DIR}/round.yaml",
                    "--workdir", f"{rt.workdir_path.rstrip('/')}/{body['metadata']['name']}"] + shard_args,
        "env": [{"name": termination.PATH_ENV, "value": TERMINATION_LOG},
                {"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "ADORE_CACHE", "value": f"{rt.workdir_path.rstrip('/')}/.cache"}]
        # The stage fails at once when it asked for GPUs and finds none (adore.hardware).
        + ([{"name": EXPECT_GPUS_ENV, "value": str(srt.gpus)}] if srt.gpus else []) + shard_env,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    resources = _resources(srt)
    if resources:
        container["resources"] = resources
    return container


def _pod_spec(body: dict, spec: AdoreRoundSpec, stage: str, srt) -> dict:
    rt = spec.runtime
    mounts, volumes = _volumes(body["metadata"]["name"], rt)
    # restartPolicy Never: a failed Pod is a retry the Job counts (and podFailurePolicy requires it).
    pod_spec = {"restartPolicy": "Never", "containers": [_container(body, spec, stage, srt, mounts)],
                "volumes": volumes}
    if rt.fs_group is not None:
        pod_spec["securityContext"] = {"fsGroup": rt.fs_group}
    if rt.service_account:
        pod_spec["serviceAccountName"] = rt.service_account
    if rt.node_selector:
        pod_spec["nodeSelector"] = dict(rt.node_selector)
    if rt.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in rt.tolerations]
    return pod_spec


def stage_job(body: dict, spec: AdoreRoundSpec, stage: str, features: JobFeatures = LEGACY) -> dict:
    """The Job of a stage, a shard (`annotate.shard-1-of-3`) or, where the server has Indexed Jobs, a
    shard set (`annotate.shards-of-3`). The default features render what Kubernetes 1.20 accepts."""
    name = body["metadata"]["name"]
    shard_set = shard_set_of(stage)
    if shard_set and not features.indexed_jobs:
        raise ValueError(f"{stage}: a shard set is one Indexed Job, which this server does not have; "
                         f"use the shard Jobs of shard_job_names()")
    srt = spec.runtime.for_stage(stage_of(stage))
    job_spec = {"backoffLimit": srt.retries,
                "template": {"metadata": {"labels": labels(name, stage)}, "spec": _pod_spec(body, spec, stage, srt)}}
    if shard_set:
        n = shard_set[1]
        # One Job for n shards: its backoffLimit counts every index's failures, so n times the
        # retries keeps the budget n shard Jobs had (per-index limits need Kubernetes 1.29).
        job_spec.update(completionMode="Indexed", completions=n, parallelism=n, backoffLimit=srt.retries * n)
    if features.pod_failure_policy:
        job_spec["podFailurePolicy"] = pod_failure_policy()
    return adopted({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": job_name(name, stage), "labels": labels(name, stage)}, "spec": job_spec}, body)
