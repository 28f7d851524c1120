"""Rendering the Kubernetes objects of a round: its spec ConfigMap and its stage Jobs.

Pure functions of the AdoreRound body, so they are unit-tested without a
cluster. Names are deterministic: a restarted operator finds the Jobs it
made instead of creating duplicates.
"""
from __future__ import annotations

import hashlib

import yaml

from adore.hardware import EXPECT_GPUS_ENV
from adore.schema import API_GROUP, API_VERSION, KIND, AdoreRoundSpec, shard_of

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


def owner_reference(body: dict) -> dict:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def labels(round_name: str, stage: str | None = None) -> dict:
    out = {ROUND_LABEL: round_name, "app.kubernetes.io/managed-by": "adore-operator"}
    if stage:
        out[STAGE_LABEL] = stage
    return out


def round_config_map(body: dict) -> dict:
    """The spec the round runs with, frozen at its start (later spec edits do not reach running stages)."""
    name = body["metadata"]["name"]
    doc = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": body["spec"]}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": config_map_name(name), "namespace": body["metadata"]["namespace"],
                         "labels": labels(name), "ownerReferences": [owner_reference(body)]},
            "data": {"round.yaml": yaml.safe_dump(doc, sort_keys=False)}}


def stage_job(body: dict, spec: AdoreRoundSpec, stage: str) -> dict:
    name = body["metadata"]["name"]
    rt = spec.runtime
    shard = shard_of(stage)
    srt = rt.for_stage(shard[0] if shard else stage)
    workdir = f"{rt.workdir_path.rstrip('/')}/{name}"
    resources: dict = {}
    if srt.cpu or srt.memory or srt.gpus:
        limits = {k: v for k, v in (("cpu", srt.cpu), ("memory", srt.memory)) if v}
        if srt.gpus:
            limits["nvidia.com/gpu"] = str(srt.gpus)
        resources = {"requests": {k: v for k, v in limits.items() if k != "nvidia.com/gpu"}, "limits": limits}
    mounts = [{"name": "round", "mountPath": ROUND_FILE_DIR, "readOnly": True},
              {"name": "workdir", "mountPath": rt.workdir_path}]
    volumes = [{"name": "round", "configMap": {"name": config_map_name(name)}},
               {"name": "workdir", **({"persistentVolumeClaim": {"claimName": rt.workdir_claim}}
                                      if rt.workdir_claim else {"emptyDir": {}})}]
    if rt.rules_config_map:
        mounts.append({"name": "rules", "mountPath": RULES_DIR, "readOnly": True})
        volumes.append({"name": "rules", "configMap": {"name": rt.rules_config_map}})
    container = {
        "name": "stage",
        "image": rt.image,
        "imagePullPolicy": rt.image_pull_policy,
        "command": ["adore", "stage", shard[0] if shard else stage, "--round", f"{ROUND_FILE_DIR}/round.yaml",
                    "--workdir", workdir] + (["--shard", f"{shard[1]}/{shard[2]}"] if shard else []),
        "env": [{"name": "ADORE_TERMINATION_LOG", "value": TERMINATION_LOG},
                {"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "ADORE_CACHE", "value": f"{rt.workdir_path.rstrip('/')}/.cache"}]
        # The stage fails at once when it asked for GPUs and finds none (adore.hardware).
        + ([{"name": EXPECT_GPUS_ENV, "value": str(srt.gpus)}] if srt.gpus else []),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if resources:
        container["resources"] = resources
    pod_spec = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if rt.fs_group is not None:
        pod_spec["securityContext"] = {"fsGroup": rt.fs_group}
    if rt.service_account:
        pod_spec["serviceAccountName"] = rt.service_account
    if rt.node_selector:
        pod_spec["nodeSelector"] = dict(rt.node_selector)
    if rt.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in rt.tolerations]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(name, stage), "namespace": body["metadata"]["namespace"],
                     "labels": labels(name, stage), "ownerReferences": [owner_reference(body)]},
        "spec": {"backoffLimit": srt.retries, "template": {"metadata": {"labels": labels(name, stage)}, "spec": pod_spec}},
    }
