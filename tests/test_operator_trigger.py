"""The next-round trigger against a real Prometheus (Debian's package, started here).

Prometheus scrapes an exporter this test controls (prometheus-client), the
operator (kopf, with its own ServiceAccount token) evaluates the round's PromQL
trigger on a timer against Prometheus's HTTP API on a real kube-apiserver.
No kubelet is involved: the rounds here are marked finished by the test.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import yaml

from adore.timestamps import parse_iso

try:
    from tests.cluster import ControlPlane, install_adore, missing_reason
except ImportError:
    from cluster import ControlPlane, install_adore, missing_reason

from conftest import EXAMPLES
from test_operator_e2e import GROUP, PLURAL, VERSION, Operator, _free_port
from test_serving_promotion import Traffic
from test_triton_serving import GRADES, needs_triton, promoted  # noqa: F401 - the fixture

NS = "adore-trigger"
PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
              pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")]


@pytest.fixture(scope="module")
def exporter():
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    gauge = Gauge("adore_test_low_confidence_share", "share of low-confidence predictions", registry=registry)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield gauge, port
    server.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real tritonserver (explicit model control) on CLAIM/triton-repo, the repository a rollback Job rewrites."""
    from adore.serving import server as triton_server

    repo = tmp_path_factory.mktemp("claim") / "triton-repo"
    repo.mkdir()
    with triton_server.TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=90) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(exporter, tmp_path_factory):
    _, exporter_port = exporter
    d = tmp_path_factory.mktemp("prometheus")
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "serving", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}))
    port = _free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=(d / "log").open("w"), stderr=subprocess.STDOUT)
    import requests

    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"prometheus did not start: {(d / 'log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def cluster():
    cp = ControlPlane().start()
    try:
        kubeconfig = install_adore(cp, [NS])
        yield cp, cp.api_client(), kubeconfig
    finally:
        cp.stop()


def _finished_round(api, name, trigger: dict):
    """A round as it stands after a successful promotion (set by the test; no stages run here)."""
    from kubernetes import client

    doc = yaml.safe_load((EXAMPLES / "default-round.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NS}
    doc["spec"]["trigger"] = trigger
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, doc)
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name, {
        "status": {"phase": "Succeeded", "promotedVersion": 1, "quality": 0.5}})


def _rounds(api) -> dict:
    from kubernetes import client

    items = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
    return {i["metadata"]["name"]: i for i in items}


def _wait(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.3)
    pytest.fail(f"timed out: {what}")


def test_trigger_fires_after_window_once_and_respects_cooldown(cluster, prometheus, exporter, tmp_path):
    cp, api, kubeconfig = cluster
    gauge, _ = exporter
    gauge.set(0.05)
    # The cooldown counts from the round's creation, and the operator's start (slow on a loaded CI machine)
    # comes out of it: 40 s leaves the "cooling down" phase below more than 30 s of margin.
    cooldown = 40
    trigger = {"prometheusUrl": prometheus, "query": "adore_test_low_confidence_share", "comparison": ">",
               "threshold": 0.2, "forSeconds": 3, "cooldownSeconds": cooldown, "maxRounds": 5}
    # Both rounds exist, finished, before the operator starts: a running operator would take a new round
    # for one to run and could write its status between the test's create and its status patch.
    _finished_round(api, "serve", trigger)
    _finished_round(api, "blind", {**trigger, "prometheusUrl": f"http://127.0.0.1:{_free_port()}"})
    op = Operator(cp, kubeconfig, tmp_path / "operator.log", namespace=NS)
    try:
        # Below the threshold: evaluated, not holding, no new round.
        st = _wait(lambda: (_rounds(api)["serve"].get("status") or {}).get("trigger", {}).get("lastValue") is not None
                   and _rounds(api)["serve"]["status"], 60, "a first evaluation (the operator starting)")
        assert st["trigger"]["lastValue"] == pytest.approx(0.05) and not st["trigger"].get("holdingSince")
        # Prometheus unreachable: no trigger, and a condition says why.
        st = _wait(lambda: next((c for c in (_rounds(api)["blind"].get("status") or {}).get("conditions", [])
                                 if c["type"] == "PrometheusReachable"), None), 30, "PrometheusReachable on blind")
        assert st["status"] == "False" and "unreachable" in st["message"]
        gauge.set(0.5)
        t_hold = time.time()
        # Holds, but the round is younger than the cooldown: it waits, saying so.
        _wait(lambda: "cooling down" in ((_rounds(api)["serve"].get("status") or {}).get("trigger") or {}).get("message", ""),
              cooldown, "the cooldown message")
        assert "serve-r2" not in _rounds(api)
        _wait(lambda: "serve-r2" in _rounds(api), cooldown + 30, "the next round")
        rounds = _rounds(api)
        created = rounds["serve-r2"]
        assert time.time() - t_hold >= 3  # not before the window
        waited = parse_iso(created["metadata"]["creationTimestamp"]) - parse_iso(rounds["serve"]["metadata"]["creationTimestamp"])
        assert waited.total_seconds() >= cooldown - 1  # not before the cooldown (1 s: the timestamps' grain)
        assert created["spec"]["previousRound"] == "serve"
        assert created["metadata"]["labels"]["adore.dev/round-number"] == "2"
        # The child is created first and the parent's status written after it: wait for that write.
        _wait(lambda: ((_rounds(api)["serve"].get("status") or {}).get("trigger") or {}).get("nextRound") == "serve-r2",
              30, "the parent's status naming its successor")
        time.sleep(4)  # more evaluations while the condition still holds
        names = sorted(_rounds(api))
        assert names == ["blind", "serve", "serve-r2"], names
        assert "adore_operator_rounds_created_total 1.0" in op.metrics()
    finally:
        op.kill()


def test_promql_answers_the_trigger_cannot_use_are_errors_that_say_why(prometheus):
    from adore_operator.trigger import PrometheusError, query

    assert query(prometheus, "vector(0.25)") == pytest.approx(0.25)
    assert query(prometheus, "scalar(vector(3))") == pytest.approx(3)
    with pytest.raises(PrometheusError, match="returned 2 series; the trigger needs exactly one"):
        query(prometheus, 'label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")')
    with pytest.raises(PrometheusError, match="returned 0 series"):
        query(prometheus, "adore_no_such_metric")
    with pytest.raises(PrometheusError, match="query failed: bad_data"):
        query(prometheus, "sum(")


def test_a_successor_created_before_a_crash_is_named_and_never_duplicated(cluster, prometheus, exporter, tmp_path):
    """The operator created the next round and died before writing the parent's status: on the next
    evaluation the parent names it, though the signal no longer holds, and no second round appears."""
    from kubernetes import client

    from adore_operator.trigger import next_round

    cp, api, kubeconfig = cluster
    gauge, _ = exporter
    gauge.set(0.0)  # no longer holding
    trigger = {"prometheusUrl": prometheus, "query": "adore_test_low_confidence_share", "comparison": ">",
               "threshold": 0.2, "forSeconds": 0, "cooldownSeconds": 0, "maxRounds": 5}
    _finished_round(api, "crash", trigger)
    parent = _rounds(api)["crash"]
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, next_round(parent))
    op = Operator(cp, kubeconfig, tmp_path / "operator.log", namespace=NS)
    try:
        st = _wait(lambda: ((_rounds(api)["crash"].get("status") or {}).get("trigger") or {}).get("nextRound"),
                   30, "the parent naming the successor made before the crash")
        assert st == "crash-r2"
        time.sleep(3)
        assert sorted(n for n in _rounds(api) if n.startswith("crash")) == ["crash", "crash-r2"]
    finally:
        op.kill()


@needs_triton
def test_a_promoted_version_whose_signal_goes_bad_is_rolled_back_by_a_job(cluster, prometheus, exporter, promoted,
                                                                          served, tmp_path):
    """spec.rollback: the operator watches the signal after the promotion; when it holds for forSeconds it runs
    ROUND-rollback (`adore rollback --from V` on the workdir claim, run by the test stand-in kubelet), and the
    real tritonserver then serves the version before V, with not one failed request from the clients that
    kept sending over HTTP and gRPC meanwhile: condition RolledBack, an Event, adore_rollbacks_total."""
    import sys
    from pathlib import Path

    from kubernetes import client

    from adore.serving.repository import served_version, write_version
    from adore.serving.rollout import serve_version
    try:
        from tests.cluster import StandInKubelet
    except ImportError:
        from cluster import StandInKubelet

    cp, api, kubeconfig = cluster
    gauge, _ = exporter
    gauge.set(0.0)
    triton, repo = served, served.repo_path
    work = repo.parent  # the workdir claim, as the Job's Pod sees it
    _, _, version = promoted  # a real student's version folder (model.onnx, tokenizer, golden rows)
    for v in (1, 2):
        assert write_version(repo, "adore-student", version, GRADES) == v
        serve_version(triton.http_url, repo, "adore-student", v, 1e-4)
    assert served_version(repo, "adore-student") == 2
    doc = yaml.safe_load((EXAMPLES / "default-round.yaml").read_text())
    doc["metadata"] = {"name": "bad", "namespace": NS}
    doc["spec"]["promotion"]["repository"] = "/workdir/triton-repo"
    doc["spec"]["promotion"]["tritonUrl"] = triton.http_url
    doc["spec"]["runtime"] = {"image": "adore-worker:test", "workdirClaim": "adore-work", "workdirPath": "/workdir",
                              "default": {"retries": 0}}
    doc["spec"]["rollback"] = {"prometheusUrl": prometheus, "query": "adore_test_low_confidence_share",
                               "comparison": ">", "threshold": 0.3, "forSeconds": 2}
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, doc)
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "bad", {
        "status": {"phase": "Succeeded", "promotedVersion": 2, "quality": 0.5}})
    kubelet = StandInKubelet(api, NS, volumes={"adore-work": work},
                             argv0_map={"adore": str(Path(sys.executable).parent / "adore")}).start()
    op = Operator(cp, kubeconfig, tmp_path / "operator.log", namespace=NS)
    batch = client.BatchV1Api(api)
    try:
        st = _wait(lambda: ((_rounds(api)["bad"].get("status") or {}).get("rollback") or {}).get("lastValue") is not None
                   and _rounds(api)["bad"]["status"]["rollback"], 30, "a first rollback evaluation")
        assert st["state"] == "Watching" and st["fromVersion"] == 2 and not st.get("holdingSince")
        assert not batch.list_namespaced_job(NS, label_selector="adore.dev/stage=rollback").items
        with Traffic(triton, "adore-student") as traffic:
            before = len(traffic.versions)
            gauge.set(0.6)
            t_bad = time.time()
            job = _wait(lambda: next(iter(batch.list_namespaced_job(NS, label_selector="adore.dev/stage=rollback").items),
                                     None), 40, "the rollback Job")
            assert time.time() - t_bad >= 2  # not before the window
            assert job.metadata.name == "bad-rollback" and job.metadata.owner_references[0].kind == "AdoreRound"
            cmd = job.spec.template.spec.containers[0].command
            assert cmd[:2] == ["adore", "rollback"] and cmd[cmd.index("--from") + 1] == "2"
            assert cmd[cmd.index("--repository") + 1] == "/workdir/triton-repo"
            assert cmd[cmd.index("--triton-url") + 1] == triton.http_url
            cond = _wait(lambda: next((c for c in (_rounds(api)["bad"].get("status") or {}).get("conditions", [])
                                       if c["type"] == "RolledBack"), None), 90, "the RolledBack condition")
        assert traffic.failures == [], traffic.failures[:3]
        assert set(traffic.versions[:before]) == {2} and traffic.versions[-1] == 1  # served v2, then v1
        assert cond["status"] == "True", cond
        assert served_version(repo, "adore-student") == 1  # the Job really rolled back
        assert not triton.model_ready("adore-student", 2)
        assert _rounds(api)["bad"]["status"]["rollback"]["state"] == "RolledBack"
        events = client.CoreV1Api(api).list_namespaced_event(NS, field_selector="involvedObject.name=bad").items
        assert {"RollingBack", "RolledBack"} <= {e.reason for e in events}
        assert 'adore_rollbacks_total{outcome="rolled_back"} 1.0' in op.metrics()
        time.sleep(3)  # the signal still holds: no second rollback
        assert len(batch.list_namespaced_job(NS, label_selector="adore.dev/stage=rollback").items) == 1
    finally:
        op.kill()
        kubelet.stop()
