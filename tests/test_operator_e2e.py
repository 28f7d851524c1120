"""The operator end to end against a real kube-apiserver + controller-manager.

What is real: etcd, kube-apiserver, kube-controller-manager (the job controller
and the garbage collector), the CRD, RBAC (the operator runs with its own
ServiceAccount's token, not as admin), kopf, and every stage's code.
What stands in: there is no kubelet or container runtime on this machine, so
tests/cluster/kubelet.py (a TEST STAND-IN) runs each Pod's command as a local
process with the workdir claim mapped to a local folder.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

try:
    from tests.cluster import ControlPlane, StandInKubelet, install_adore, missing_reason
except ImportError:  # tests/ is not a package
    from cluster import ControlPlane, StandInKubelet, install_adore, missing_reason

from conftest import EXAMPLES, TINY_ROUND

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]
NS = "adore-e2e"
GROUP, VERSION, PLURAL = "adore.dev", "v1alpha1", "adorerounds"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cp = ControlPlane().start()
    try:
        api = cp.api_client()
        sa_kubeconfig = install_adore(cp, [NS])
        work = tmp_path_factory.mktemp("claim")
        kubelet = StandInKubelet(api, NS, volumes={"adore-work": work},
                                 argv0_map={"adore": str(Path(sys.executable).parent / "adore")},
                                 extra_env={"HF_HUB_OFFLINE": "1"}).start()
        yield cp, api, sa_kubeconfig, work, kubelet
        kubelet.stop()
    finally:
        cp.stop()


class Operator:
    def __init__(self, cp, kubeconfig, log: Path, namespace: str = NS):
        self.port = _free_port()
        env = {**cp.env(kubeconfig), "ADORE_RECONCILE_INTERVAL": "2", "ADORE_TRIGGER_INTERVAL": "1", "PYTHONUNBUFFERED": "1",
               "ADORE_METRICS_PORT": str(self.port)}
        self.log = log
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "adore-operator"), "--namespace", namespace],
                                     env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def metrics(self) -> str:
        import urllib.request

        return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()


def _round(name: str, **spec_changes) -> dict:
    doc = yaml.safe_load(TINY_ROUND.format(rules=EXAMPLES / "rules" / "default.txt"))
    doc["metadata"] = {"name": name, "namespace": NS}
    doc["spec"]["runtime"] = {"image": "adore-worker:test", "workdirClaim": "adore-work", "workdirPath": "/workdir",
                              "default": {"retries": 0}}
    for path, value in spec_changes.items():
        node = doc["spec"]
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return doc


def _get(api, name):
    from kubernetes import client

    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def _wait(api, name, pred, timeout, op: Operator | None = None, what=""):
    end = time.time() + timeout
    body = None
    while time.time() < end:
        body = _get(api, name)
        if pred(body.get("status") or {}):
            return body
        if op is not None and op.proc.poll() is not None:
            pytest.fail(f"operator exited: {op.log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}: status {json.dumps((body or {}).get('status'), indent=1)[:3000]}")


def _table(api, path: str) -> dict:
    """The server-side table kubectl prints (columns from the CRD's additionalPrinterColumns)."""
    import requests

    cfg = api.configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    if auth:
        headers["Authorization"] = auth if auth.startswith("Bearer ") else f"Bearer {auth}"
    r = requests.get(cfg.host + path, headers=headers, verify=cfg.ssl_ca_cert or False,
                     cert=(cfg.cert_file, cfg.key_file) if cfg.cert_file else None, timeout=10)
    r.raise_for_status()
    return r.json()


def _condition(body: dict, type_: str) -> dict | None:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def _reasons(api, round_name) -> set[str]:
    from kubernetes import client

    events = client.CoreV1Api(api).list_namespaced_event(NS, field_selector=f"involvedObject.name={round_name}").items
    return {e.reason for e in events}


def _gc_lines(log: Path) -> str:
    """The garbage collector's lines of the controller-manager's log (why a dependent was not deleted)."""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(l for l in lines if "garbage" in l.lower() or "adoreround" in l.lower())[-4000:]


def _still_there(api, name) -> dict | None:
    """The round's deletion timestamp and finalizers while it still exists (a finalizer holds the GC back)."""
    from kubernetes.client.rest import ApiException

    try:
        meta = _get(api, name)["metadata"]
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return {"deletionTimestamp": meta.get("deletionTimestamp"), "finalizers": meta.get("finalizers")}


def _jobs(api, round_name):
    from kubernetes import client

    return client.BatchV1Api(api).list_namespaced_job(NS, label_selector=f"adore.dev/round={round_name}").items


def test_round_runs_as_jobs_survives_operator_restart(cluster, tmp_path):
    from kubernetes import client

    cp, api, sa_kubeconfig, work, kubelet = cluster
    log = tmp_path / "operator.log"
    op = Operator(cp, sa_kubeconfig, log)
    silent = None
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _round("e2e"))
        # Kill the operator while a stage is running, then start a new one.
        _wait(api, "e2e", lambda s: (s.get("stages") or {}).get("sft", {}).get("state") == "Running", 120, op, "sft to start")
        # Edit the live spec mid-round: later Jobs still come from the frozen spec (image, retries).
        client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "e2e", {"spec": {
            "runtime": {"image": "adore-worker:edited", "default": {"retries": 3}}}})
        op.kill()
        time.sleep(3)
        op = Operator(cp, sa_kubeconfig, log)
        body = _wait(api, "e2e", lambda s: s.get("phase") in ("Succeeded", "Failed"), 900, op, "the round to finish")
        st = body["status"]
        assert st["phase"] == "Succeeded", st.get("message")
        assert st["promotedVersion"] == 1 and 0 <= st["quality"] <= 1
        assert st["observedGeneration"] == body["metadata"]["generation"]
        conds = {c["type"]: c["status"] for c in st["conditions"]}
        assert conds["Ready"] == "True" and conds["Failed"] == "False" and conds["StagePromote"] == "True"
        assert st["stages"]["annotate"]["metrics"]["parsed"] >= 1  # passed back through the termination message
        jobs = _jobs(api, "e2e")
        assert sorted(j.metadata.labels["adore.dev/stage"] for j in jobs) == sorted(
            ["prepare", "sft", "align", "annotate", "synthesize", "distill", "evaluate", "promote"])
        assert all(j.metadata.owner_references[0].kind == "AdoreRound" for j in jobs)
        assert {j.spec.template.spec.containers[0].image for j in jobs} == {"adore-worker:test"}
        assert {j.spec.backoff_limit for j in jobs} == {0}
        assert (work / "e2e" / "triton-repo" / "adore-student" / "1" / "model.onnx").is_file()
        # The printer columns, as `kubectl get adorerounds` shows them (server-side table).
        table = _table(api, f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}")
        cols = [c["name"] for c in table["columnDefinitions"]]
        row = dict(zip(cols, next(r["cells"] for r in table["rows"] if r["cells"][0] == "e2e")))
        assert row["Phase"] == "Succeeded" and row["Version"] == 1
        assert {"StageStarted", "StageSucceeded", "RoundSucceeded"} <= _reasons(api, "e2e")
        m = op.metrics()
        assert "adore_operator_reconcile_seconds_count" in m and 'adore_operator_rounds{phase="Succeeded"} 1.0' in m
        assert 'adore_operator_promotions_total{outcome="Promoted"} 1.0' in m  # the restarted operator saw it finish
        # spec.trigger is read live after the round: changing it applies, and the SpecLocked condition (set by the
        # mid-round runtime edit above, if at all) does not change. Its Prometheus listens and never answers: the
        # trigger's tries time out and retry, the round is untouched, and the timer spends most of its time inside
        # a query, so the delete below most likely finds it mid-call, the case where kopf kept the round (and so
        # its Jobs) for its 60 s cancellation polling.
        locked_before = _condition(_get(api, "e2e"), "SpecLocked")
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        trigger = {"prometheusUrl": f"http://127.0.0.1:{silent.getsockname()[1]}", "query": "vector(1)",
                   "threshold": 0.5}
        client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "e2e",
                                                                    {"spec": {"trigger": trigger}})
        end = time.time() + 30
        while "SpecChangeApplied" not in _reasons(api, "e2e") and time.time() < end:
            time.sleep(0.5)
        assert "SpecChangeApplied" in _reasons(api, "e2e"), op.log.read_text()[-3000:]
        assert _condition(_get(api, "e2e"), "SpecLocked") == locked_before
        # Any other spec change after the start is ignored, and said so, naming what was ignored.
        client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "e2e",
                                                                    {"spec": {"stages": {"distill": {"epochs": 2}}}})
        body = _wait(api, "e2e", lambda s: "(spec.stages)" in (_condition({"status": s}, "SpecLocked") or {}).get("message", ""),
                     30, op, "SpecLocked naming spec.stages")
        assert body["status"]["phase"] == "Succeeded"
        assert "spec.trigger" in _condition(body, "SpecLocked")["message"]  # says what would have applied
        # Deleting the round removes its Jobs (owner references + the real garbage collector), in well under
        # kopf's default 60 s cancellation polling even with a trigger query in flight.
        client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "e2e")
        end = time.time() + 40
        while _jobs(api, "e2e") and time.time() < end:
            time.sleep(0.5)
        left = _jobs(api, "e2e")
        assert not left, (f"round still there: {_still_there(api, 'e2e')}; "
                          f"{[(j.metadata.name, j.metadata.creation_timestamp, j.metadata.owner_references) for j in left]}\n"
                          + _gc_lines(cp.log_path("kube-controller-manager")) + "\n" + op.log.read_text()[-3000:])
    finally:
        op.kill()
        if silent is not None:
            silent.close()


def test_failing_stage_retries_then_fails_the_round(cluster, tmp_path):
    from kubernetes import client

    cp, api, sa_kubeconfig, work, kubelet = cluster
    op = Operator(cp, sa_kubeconfig, tmp_path / "operator.log")
    try:
        bad = _round("broken", **{"dataset.source": "homedepot", "dataset.path": "/nonexistent/pairs.csv",
                                  "runtime.stages": {"prepare": {"retries": 1}}})
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, bad)
        body = _wait(api, "broken", lambda s: s.get("phase") == "Failed", 120, op, "the round to fail")
        st = body["status"]
        assert st["stage"] == "prepare" and "spec.dataset.path: not found" in st["message"]
        assert st["stages"]["prepare"]["state"] == "Failed"
        pods = client.CoreV1Api(api).list_namespaced_pod(NS, label_selector="job-name=broken-prepare").items
        assert len(pods) == 2  # the first try and one retry (backoffLimit 1)
        assert len(_jobs(api, "broken")) == 1  # nothing after the failed stage
    finally:
        op.kill()


def test_an_invalid_round_is_rejected_by_the_crd_or_ends_failed_naming_the_field(cluster, tmp_path):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    cp, api, sa_kubeconfig, work, kubelet = cluster
    custom = client.CustomObjectsApi(api)
    # What the CRD's schema can say, the apiserver says at apply time, naming the field.
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _round("zero-epochs", **{"stages.distill.epochs": 0}))
    assert err.value.status == 422 and "spec.stages.distill.epochs" in err.value.body
    # What only the schema's validators catch ends the round Failed with InvalidSpec, naming the field path.
    op = Operator(cp, sa_kubeconfig, tmp_path / "operator.log")
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _round("same-seeds", **{"stages.synthesize.testSeed": 7}))
        body = _wait(api, "same-seeds", lambda s: s.get("phase") == "Failed", 60, op, "the invalid round to fail")
        conds = {c["type"]: c for c in body["status"]["conditions"]}
        assert conds["InvalidSpec"]["status"] == "True" and "spec.stages.synthesize.testSeed" in conds["InvalidSpec"]["message"]
        assert not _jobs(api, "same-seeds")  # nothing ran
    finally:
        op.kill()


def _pods(api, round_name):
    from kubernetes import client

    return client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=f"adore.dev/round={round_name}").items


def _running_run(kubelet, prefix: str, timeout: float = 120):
    end = time.time() + timeout
    while time.time() < end:
        runs = [r for r in list(kubelet.runs.values()) if r.name.startswith(prefix)
                and getattr(r, "proc", None) is not None and not r.done.is_set()]  # its process has started
        if runs:
            return runs[0]
        time.sleep(0.3)
    pytest.fail(f"no running Pod {prefix}*")


def test_a_round_deleted_mid_stage_takes_its_jobs_and_pods_and_nothing_keeps_running(cluster, tmp_path):
    from kubernetes import client

    cp, api, sa_kubeconfig, work, kubelet = cluster
    op = Operator(cp, sa_kubeconfig, tmp_path / "operator.log")
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _round("doomed"))
        run = _running_run(kubelet, "doomed-sft-")
        client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "doomed")
        end = time.time() + 90
        while (_jobs(api, "doomed") or _pods(api, "doomed")) and time.time() < end:
            time.sleep(0.5)
        assert not _jobs(api, "doomed") and not _pods(api, "doomed")
        assert run.done.wait(30), "the stage's process is still running"
        time.sleep(5)  # the operator creates nothing for a deleted round
        assert not _jobs(api, "doomed")
        assert not (work / "doomed" / "stages" / "sft").exists()  # the killed stage left no completed output
    finally:
        op.kill()


def test_a_stage_pod_killed_mid_write_is_retried_and_the_retry_removes_the_stale_temp_folder(cluster, tmp_path):
    from kubernetes import client

    cp, api, sa_kubeconfig, work, kubelet = cluster
    op = Operator(cp, sa_kubeconfig, tmp_path / "operator.log")
    stages = work / "retried" / "stages"
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, _round("retried", **{"runtime.stages": {"sft": {"retries": 2}}}))
        first = _running_run(kubelet, "retried-sft-")
        end = time.time() + 120
        while not list(stages.glob(".sft.tmp-*")) and time.time() < end:  # the stage is writing its output
            time.sleep(0.2)
        stale = list(stages.glob(".sft.tmp-*"))
        assert stale, "the sft stage never started writing"
        client.CoreV1Api(api).delete_namespaced_pod(first.name, NS)  # the Pod dies mid-write
        assert first.done.wait(30)
        body = _wait(api, "retried", lambda s: (s.get("stages") or {}).get("sft", {}).get("state") in ("Succeeded", "Failed"),
                     600, op, "sft to end after the retry")
        assert body["status"]["stages"]["sft"]["state"] == "Succeeded", body["status"].get("message")
        assert not any(p.exists() for p in stale)  # the retried Pod removed the killed writer's folder
        assert (stages / "sft" / "adapter" / "adapter_model.safetensors").is_file()
        pods = [r for r in kubelet.runs.values() if r.name.startswith("retried-sft-")]
        assert len(pods) >= 2  # the Job controller ran it again
    finally:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "retried")
        op.kill()
