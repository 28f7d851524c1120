"""The whole loop on a cluster: round 1 promoted, traffic through a real Triton, the low-confidence share in a
real Prometheus fires the operator's trigger, and round 2 builds on round 1.

What is real: etcd, kube-apiserver, kube-controller-manager, the CRD and RBAC, kopf, every stage's code,
tritonserver (nvidia-pytriton, python backend) and Prometheus scraping its metrics port. What stands in:
the kubelet (tests/cluster/kubelet.py, a TEST STAND-IN that runs each Pod's command as a local process with
the workdir claim mapped to a local folder). The lineage shares one Triton repository and one request log on
the claim (promotion.repository ../triton-repo and requestLog.path ../request-log, relative to each round's
workdir), and promote loads each version into the running Triton (promotion.tritonUrl).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

try:
    from tests.cluster import ControlPlane, StandInKubelet, install_adore, missing_reason
except ImportError:
    from cluster import ControlPlane, StandInKubelet, install_adore, missing_reason

from conftest import EXAMPLES, TINY_ROUND
from test_operator_e2e import GROUP, PLURAL, VERSION, Operator, _free_port
from test_operator_trigger import PROMETHEUS
from test_triton_serving import needs_triton

NS = "adore-loop"
pytestmark = [pytest.mark.slow, needs_triton,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
              pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")]
SHARE = "sum(rate(adore_low_confidence_total[10s])) / sum(rate(adore_predictions_total[10s]))"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from adore.serving.server import TritonServer

    work = tmp_path_factory.mktemp("claim")
    (work / "triton-repo").mkdir()
    triton = TritonServer(work / "triton-repo", http_port=0, grpc_port=0, metrics_port=0, startup_timeout=90).start()
    d = tmp_path_factory.mktemp("prometheus")
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "triton", "static_configs": [{"targets": [f"127.0.0.1:{triton.metrics_port}"]}]}]}))
    port = _free_port()
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=(d / "log").open("w"), stderr=subprocess.STDOUT)
    cp = ControlPlane().start()
    try:
        api = cp.api_client()
        kubeconfig = install_adore(cp, [NS])
        kubelet = StandInKubelet(api, NS, volumes={"adore-work": work},
                                 argv0_map={"adore": str(Path(sys.executable).parent / "adore")},
                                 extra_env={"HF_HUB_OFFLINE": "1"}).start()
        yield cp, api, kubeconfig, work, triton, f"http://127.0.0.1:{port}"
        kubelet.stop()
    finally:
        cp.stop()
        prom.terminate()
        prom.wait(10)
        triton.stop()


def _get(api, name: str) -> dict:
    from kubernetes import client

    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def _wait(api, name: str, pred, timeout: float, op: Operator, what: str) -> dict:
    end, body = time.time() + timeout, None
    while time.time() < end:
        try:
            body = _get(api, name)
        except Exception:  # noqa: BLE001 - not created yet
            body = None
        if body is not None and pred(body.get("status") or {}):
            return body
        if op.proc.poll() is not None:
            pytest.fail(f"operator exited: {op.log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}: status {json.dumps((body or {}).get('status'), indent=1)[:3000]}")


def _loop_round(triton, prometheus: str) -> dict:
    doc = yaml.safe_load(TINY_ROUND.format(rules=EXAMPLES / "rules" / "default.txt"))
    doc["metadata"] = {"name": "shop", "namespace": NS}
    spec = doc["spec"]
    spec["runtime"] = {"image": "adore-worker:test", "workdirClaim": "adore-work", "workdirPath": "/workdir",
                       "default": {"retries": 0}}
    spec["promotion"].update({"repository": "../triton-repo", "tritonUrl": triton.http_url.removeprefix("http://"),
                              "lowConfidenceThreshold": 0.9, "requestLog": {"path": "../request-log", "sampleRate": 0.0}})
    spec["trigger"] = {"prometheusUrl": prometheus, "query": SHARE, "comparison": ">", "threshold": 0.1,
                       "forSeconds": 2, "cooldownSeconds": 0, "maxRounds": 2}
    return doc


def test_served_traffic_fires_the_next_round_which_builds_on_the_first(stack, tmp_path):
    from kubernetes import client

    from adore.serving.client import score
    from adore.serving.request_log import read_request_log

    cp, api, kubeconfig, work, triton, prometheus = stack
    op = Operator(cp, kubeconfig, tmp_path / "operator.log", namespace=NS)
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _loop_round(triton, prometheus))
        body = _wait(api, "shop", lambda s: s.get("phase") in ("Succeeded", "Failed"), 900, op, "round 1 to finish")
        assert body["status"]["phase"] == "Succeeded" and body["status"]["promotedVersion"] == 1, body["status"].get("message")
        assert triton.model_ready("adore-student", 1)  # promote loaded it
        # Traffic: the training pairs of round 1, through Triton, until the trigger fires.
        prep = work / "shop" / "stages" / "prepare"
        rows = lambda n: [json.loads(x) for x in (prep / n).read_text().splitlines() if x.strip()]  # noqa: E731
        items = {r["item_id"]: r for r in rows("catalogue.jsonl")}
        pairs = rows("train_labels.jsonl")
        deadline = time.time() + 120
        while "shop-r2" not in {i["metadata"]["name"] for i in client.CustomObjectsApi(api).list_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL)["items"]}:
            assert time.time() < deadline, f"no next round: {json.dumps(_get(api, 'shop')['status'].get('trigger'))}"
            score(triton.http_url, "adore-student", [p["query"] for p in pairs], [items[p["item_id"]]["title"] for p in pairs],
                  [items[p["item_id"]].get("attributes") or {} for p in pairs])
            time.sleep(0.5)
        logged = read_request_log(work / "request-log")
        assert logged.rows and all(r["version"] == "1" for r in logged.rows)
        body = _wait(api, "shop-r2", lambda s: s.get("phase") in ("Succeeded", "Failed"), 900, op, "round 2 to finish")
        st = body["status"]
        assert st["phase"] == "Succeeded", st.get("message")
        assert body["spec"]["previousRound"] == "shop"
        # Round 2's pool starts with the logged low-confidence pairs; its student starts from round 1's.
        assert st["stages"]["prepare"]["metrics"]["servedPairs"] > 0
        assert st["stages"]["distill"]["metrics"]["initFrom"] == "previous"
        pool = [json.loads(x) for x in (work / "shop-r2" / "stages" / "prepare" / "pool.jsonl").read_text().splitlines()]
        assert pool[0]["query"] in {r["query"] for r in logged.rows if r["lowConfidence"]}
        report = json.loads((work / "shop-r2" / "stages" / "evaluate" / "report.json").read_text())
        prev, mine = report["previousStudent"], report["student"]
        assert prev["round"] == "shop" and prev["promotedVersion"] == 1
        regressed = mine["macroF1"] < prev["macroF1"] or mine["ndcg@10"] < prev["ndcg@10"]
        conds = {c["type"]: c for c in st["conditions"]}
        if regressed:  # promoted only past mustBeatPrevious
            assert st.get("promotedVersion") is None and conds["Promoted"]["reason"] == "RegressesPrevious"
            assert triton.model_ready("adore-student", 1) and not (work / "triton-repo" / "adore-student" / "2").exists()
        else:
            assert st["promotedVersion"] == 2 and conds["Promoted"]["status"] == "True"
            assert triton.model_ready("adore-student", 2)
    finally:
        op.kill()
