"""Integration tests of the local control plane harness (tests/cluster/).

REAL: etcd, kube-apiserver and kube-controller-manager (Kubernetes 1.20.2,
built by .ci/controlplane.sh, or $KUBEBUILDER_ASSETS), with RBAC, service
account tokens and the real Job controller.

STAND-IN: there is no container runtime on this machine, so no kubelet. A
test stand-in for the kubelet (tests/cluster/kubelet.py) runs each Pod's
command as a local process (sys.executable of this venv instead of an image's
python) and writes the Pod status the way the kubelet would; everything the
Job controller does with that status is real.

Skipped (with the reason) where the binaries are not available; CI runs
.ci/controlplane.sh first, so there they run.
"""

from __future__ import annotations

import sys
import time
import uuid

import pytest

try:
    from tests.cluster import ControlPlane, StandInKubelet, missing_reason
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from cluster import ControlPlane, StandInKubelet, missing_reason

_reason = missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402


@pytest.fixture(scope="module")
def cp():
    with ControlPlane() as plane:
        yield plane


@pytest.fixture()
def namespace(cp):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cp.create_namespace(name)
    yield name
    with cp.api_client() as api:
        try:
            client.CoreV1Api(api).delete_namespace(name)
        except client.ApiException:
            pass


def _job(name: str, code: str, *, env=None, volumes=None, mounts=None, backoff_limit: int = 0) -> dict:
    container = {
        "name": "main",
        "image": "adore-worker:test",  # never pulled: the stand-in kubelet runs the command locally
        "command": ["python", "-c", code],  # python -> sys.executable of this venv
        "env": env or [],
        "volumeMounts": mounts or [],
        "terminationMessagePath": "/dev/termination-log",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes or []},
            },
        },
    }


def _wait_job(batch: client.BatchV1Api, name: str, ns: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job_status(name, ns)
        for cond in job.status.conditions or []:
            if cond.type in ("Complete", "Failed") and cond.status == "True":
                return job, cond
        time.sleep(0.2)
    raise AssertionError(f"job {ns}/{name} did not finish in {timeout}s: {job.status}")


def test_control_plane_starts_and_serves_rbac(cp):
    assert cp.startup_seconds is not None and cp.startup_seconds < 60
    assert cp.version.startswith("1.")
    with cp.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "smoke"}})
        assert core.read_namespace("smoke").status.phase == "Active"
        # A ServiceAccount token authenticates, and RBAC (not system:masters) decides.
        sa_kubeconfig = cp.token_for("reader", "smoke")
        with cp.api_client(sa_kubeconfig) as sa_api:
            sa_core = client.CoreV1Api(sa_api)
            with pytest.raises(client.ApiException) as denied:
                sa_core.list_namespaced_pod("smoke")
            assert denied.value.status == 403
            rbac = client.RbacAuthorizationV1Api(api)
            rbac.create_namespaced_role("smoke", {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            })
            rbac.create_namespaced_role_binding("smoke", {
                "metadata": {"name": "reader-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "smoke"}],
            })
            deadline = time.monotonic() + 10
            while True:  # RBAC caches update asynchronously
                try:
                    assert sa_core.list_namespaced_pod("smoke").items == []
                    break
                except client.ApiException as e:
                    if e.status != 403 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)


def _create_crd(api, plural: str, kind: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.test.adore.dev"},
        "spec": {
            "group": "test.adore.dev",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    deadline = time.monotonic() + 20
    while True:
        conds = ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            return
        assert time.monotonic() < deadline, conds
        time.sleep(0.1)


def _create_custom_object(api, plural: str, namespace: str, body: dict) -> None:
    co = client.CustomObjectsApi(api)
    for attempt in range(50):  # discovery of a fresh CRD can lag a moment behind Established
        try:
            co.create_namespaced_custom_object("test.adore.dev", "v1", namespace, plural, body)
            return
        except client.ApiException as e:
            if e.status != 404 or attempt == 49:
                raise
            time.sleep(0.1)


def test_custom_resources_write_and_patch_status(cp):
    """The vendored reflect2 1.0.1 crashed the apiserver on the first custom-object write under Go >= 1.18."""
    with cp.api_client() as api:
        _create_crd(api, "widgets", "Widget")
        co = client.CustomObjectsApi(api)
        args = ("test.adore.dev", "v1", "default", "widgets")
        body = {"apiVersion": "test.adore.dev/v1", "kind": "Widget", "metadata": {"name": "w1"},
                "spec": {"size": 3, "nested": {"list": [1, 2.5, "x"], "flag": True}}}
        _create_custom_object(api, "widgets", "default", body)
        co.patch_namespaced_custom_object_status(*args, "w1", {"status": {"phase": "Running"}})
        got = co.get_namespaced_custom_object(*args, "w1")
        assert got["spec"]["nested"] == {"list": [1, 2.5, "x"], "flag": True}
        assert got["status"] == {"phase": "Running"}
        assert _livez(cp) == "ok"  # the apiserver is still alive


def _livez(cp) -> str:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=cp.ca_file)
    req = urllib.request.Request(cp.server + "/livez", headers={"Authorization": f"Bearer {cp.admin_token}"})
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        return r.read().decode()


def test_job_runs_to_complete_and_failed(cp, namespace, tmp_path):
    data = tmp_path / "pvc-data"
    data.mkdir()
    ok_code = (
        "import os, pathlib\n"
        "pathlib.Path(os.environ['DATA_DIR'], 'result.txt').write_text("
        "os.environ['POD_NAME'] + ' ' + os.environ['POD_NAMESPACE'] + ' ' + os.environ['GREETING'])\n"
        "open(os.environ['TERMINATION_MESSAGE_PATH'], 'w').write('{\"ok\": true}')\n"
        "print('hello from the job')\n"
    )
    env = [
        {"name": "GREETING", "value": "hi"},
        {"name": "DATA_DIR", "value": "/data"},  # rewritten to the local directory of the PVC
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "adore-data"}}]
    mounts = [{"name": "data", "mountPath": "/data"}]
    fail_code = "import sys; print('about to fail'); sys.stderr.write('boom\\n'); sys.exit(3)"

    with cp.api_client() as api:
        batch = client.BatchV1Api(api)
        core = client.CoreV1Api(api)
        with StandInKubelet(api, namespace, volumes={"adore-data": data}) as kubelet:
            batch.create_namespaced_job(namespace, _job("ok", ok_code, env=env, volumes=volumes, mounts=mounts))
            batch.create_namespaced_job(namespace, _job("bad", fail_code, backoff_limit=0))

            job, cond = _wait_job(batch, "ok", namespace)
            assert cond.type == "Complete", (cond, kubelet.errors)
            assert job.status.succeeded == 1

            pods = core.list_namespaced_pod(namespace, label_selector="job-name=ok").items
            assert len(pods) == 1, [p.metadata.name for p in pods]
            pod = pods[0]
            assert pod.spec.node_name == kubelet.node_name
            assert pod.status.phase == "Succeeded"
            term = pod.status.container_statuses[0].state.terminated
            assert term.exit_code == 0
            assert term.message == '{"ok": true}'
            assert (data / "result.txt").read_text() == f"{pod.metadata.name} {namespace} hi"
            assert "hello from the job" in kubelet.logs(pod.metadata.name, namespace)
            assert kubelet.runs[f"{namespace}/{pod.metadata.name}"].argv[0] == sys.executable

            job, cond = _wait_job(batch, "bad", namespace)
            assert cond.type == "Failed", cond
            assert cond.reason == "BackoffLimitExceeded"
            bad_pods = core.list_namespaced_pod(namespace, label_selector="job-name=bad").items
            assert len(bad_pods) == 1  # backoffLimit=0: no retry
            term = bad_pods[0].status.container_statuses[0].state.terminated
            assert term.exit_code == 3
            assert "boom" in term.message and "about to fail" in term.message  # no file: tail of the output
            assert kubelet.errors == []


def test_deleting_a_running_job_kills_its_pod(cp, namespace, tmp_path):
    """The garbage collector deletes the Job's Pod; the stand-in kills the process and confirms."""
    marker = tmp_path / "started"
    code = f"import pathlib, time; pathlib.Path({str(marker)!r}).write_text('x'); time.sleep(120)"
    with cp.api_client() as api:
        batch = client.BatchV1Api(api)
        core = client.CoreV1Api(api)
        with StandInKubelet(api, namespace) as kubelet:
            batch.create_namespaced_job(namespace, _job("sleeper", code))
            deadline = time.monotonic() + 20
            while not marker.exists():
                assert time.monotonic() < deadline, kubelet.errors
                time.sleep(0.1)
            pod = core.list_namespaced_pod(namespace, label_selector="job-name=sleeper").items[0]
            assert pod.status.phase == "Running"
            # batch/v1 Jobs are orphaned by default on delete; Background lets the GC take the Pods.
            batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Background")
            deadline = time.monotonic() + 20
            while core.list_namespaced_pod(namespace, label_selector="job-name=sleeper").items:
                assert time.monotonic() < deadline, "pod not deleted"
                time.sleep(0.2)
            run = kubelet.runs[f"{namespace}/{pod.metadata.name}"]
            assert run.done.wait(5)
            assert run.proc.poll() is not None  # the process is gone too
            assert kubelet.errors == []


def test_kopf_operator_runs_against_the_control_plane(cp, namespace, tmp_path):
    """kopf 1.45 in-process (kopf.testing.KopfRunner) logs in through cp.set_default()."""
    from kopf.testing import KopfRunner

    operator = tmp_path / "operator.py"
    operator.write_text(
        "import kopf\n"
        "@kopf.on.create('test.adore.dev', 'v1', 'gadgets')\n"
        "def created(spec, patch, **_):\n"
        "    patch.status['seen'] = spec['size']\n"
    )
    cp.set_default()
    with cp.api_client() as api:
        _create_crd(api, "gadgets", "Gadget")
        co = client.CustomObjectsApi(api)
        args = ("test.adore.dev", "v1", namespace, "gadgets")
        with KopfRunner(["run", "--standalone", "--namespace", namespace, str(operator)]) as runner:
            _create_custom_object(api, "gadgets", namespace, {
                "apiVersion": "test.adore.dev/v1", "kind": "Gadget", "metadata": {"name": "g1"}, "spec": {"size": 5}})
            deadline = time.monotonic() + 20
            while co.get_namespaced_custom_object(*args, "g1").get("status", {}).get("seen") != 5:
                assert time.monotonic() < deadline, runner.stdout[-3000:] if runner.stdout else "no output"
                time.sleep(0.1)
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
