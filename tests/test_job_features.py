"""Stage Jobs for Kubernetes 1.20 and for servers with Indexed Jobs and podFailurePolicy.

REAL: the kubernetes client's VersionApi against a local HTTP server that
answers GET /version as an API server does (only that endpoint is served).
"""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from adore.cli import EXIT_INVALID
from adore.schema import AdoreRoundSpec, shard_name
from adore_operator import features
from adore_operator import jobs as render
from adore_operator.features import LEGACY, JobFeatures
from conftest import EXAMPLES

NEW = JobFeatures(indexed_jobs=True, pod_failure_policy=True)


def _body(shards: int = 3):
    doc = yaml.safe_load((EXAMPLES / "default-round.yaml").read_text())
    doc["metadata"].update({"namespace": "ns", "uid": "u-1", "generation": 1})
    doc["spec"]["stages"]["annotate"] = {"shards": shards}
    doc["spec"]["runtime"] = {"stages": {"annotate": {"gpus": 1, "retries": 2}}}
    return doc, AdoreRoundSpec.model_validate(doc["spec"])


@pytest.mark.parametrize("major, minor, want", [
    ("1", "20", LEGACY),
    ("1", "21", LEGACY),  # Indexed Jobs are alpha there, their gate off
    ("1", "22", JobFeatures(indexed_jobs=True)),
    ("1", "25", JobFeatures(indexed_jobs=True)),
    ("1", "26+", NEW),  # EKS/GKE style minor
    ("1", "31", NEW),
    ("2", "0", NEW),
    ("1", "", LEGACY),
])
def test_features_follow_the_server_version(major, minor, want):
    assert features.from_version(major, minor) == want


def test_legacy_is_what_stage_job_renders_by_default():
    body, spec = _body()
    assert render.stage_job(body, spec, "prepare") == render.stage_job(body, spec, "prepare", LEGACY)
    assert "podFailurePolicy" not in render.stage_job(body, spec, "prepare")["spec"]


def test_pod_failure_policy_fails_the_job_on_the_workers_invalid_round_exit_code():
    body, spec = _body()
    old = render.stage_job(body, spec, "prepare", LEGACY)
    new = render.stage_job(body, spec, "prepare", NEW)
    # The policy is the only difference for a plain stage.
    assert {k: v for k, v in new["spec"].items() if k != "podFailurePolicy"} == old["spec"]
    rules = new["spec"]["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail == [{"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In", "values": [2]}}]
    assert EXIT_INVALID == 2  # what `adore stage` exits with on an invalid round file
    assert fail[0]["onExitCodes"]["containerName"] == new["spec"]["template"]["spec"]["containers"][0]["name"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert new["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # the API requires it with a policy


def test_sharded_stage_is_n_jobs_on_1_20_and_one_indexed_job_after():
    assert render.shard_job_names("annotate", 3) == [shard_name("annotate", i, 3) for i in range(3)]
    assert render.shard_job_names("annotate", 3, JobFeatures(pod_failure_policy=True)) == \
        [shard_name("annotate", i, 3) for i in range(3)]
    assert render.shard_job_names("annotate", 3, NEW) == ["annotate.shards-of-3"]
    body, spec = _body()
    with pytest.raises(ValueError, match="Indexed"):
        render.stage_job(body, spec, "annotate.shards-of-3", LEGACY)
    shard = render.stage_job(body, spec, "annotate.shard-1-of-3", LEGACY)["spec"]
    assert not {"completionMode", "completions", "parallelism"} & set(shard)
    job = render.stage_job(body, spec, "annotate.shards-of-3", NEW)
    assert job["metadata"]["name"] == "default-annotate-shards-of-3"
    assert job["metadata"]["labels"][render.STAGE_LABEL] == "annotate.shards-of-3"
    s = job["spec"]
    assert (s["completionMode"], s["completions"], s["parallelism"]) == ("Indexed", 3, 3)
    assert s["backoffLimit"] == 2 * 3 and shard["backoffLimit"] == 2  # the retries 3 shard Jobs had
    assert "podFailurePolicy" in s
    c = s["template"]["spec"]["containers"][0]
    assert c["command"][-2:] == ["--shard", "$(JOB_COMPLETION_INDEX)/3"]
    index = next(e for e in c["env"] if e["name"] == "JOB_COMPLETION_INDEX")
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the annotate stage's runtime


def _expand(command: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of a container command (unknown names stay as written)."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in command]


@pytest.mark.parametrize("stage, n", [("annotate", 3), ("synthesize", 2)])
def test_each_index_runs_the_command_of_the_shard_job_it_replaces(stage, n):
    body, spec = _body()
    body["spec"]["stages"][stage] = {"shards": n}
    spec = AdoreRoundSpec.model_validate(body["spec"])
    pod = render.stage_job(body, spec, render.shard_set_name(stage, n), NEW)["spec"]["template"]["spec"]
    for i in range(n):
        # The annotation holds the Pod's index as a decimal string.
        expanded = _expand(pod["containers"][0]["command"], {"JOB_COMPLETION_INDEX": str(i)})
        legacy = render.stage_job(body, spec, shard_name(stage, i, n), LEGACY)["spec"]["template"]["spec"]
        assert expanded == legacy["containers"][0]["command"]
        assert expanded[2] == stage and expanded[-2:] == ["--shard", f"{i}/{n}"]


def test_stage_of_and_shards_succeeded_read_both_shapes():
    assert [render.stage_of(n) for n in ("annotate", "annotate.shard-2-of-3", "annotate.shards-of-3")] == ["annotate"] * 3
    assert render.shard_set_of("annotate.shard-2-of-3") is None and render.shard_set_of("annotate.shards-of-3") == ("annotate", 3)
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    jobs = {"annotate.shard-0-of-3": complete, "annotate.shard-1-of-3": {"status": {"active": 1}}}
    assert render.shards_succeeded(jobs, render.shard_job_names("annotate", 3)) == 1
    indexed = {"annotate.shards-of-3": {"status": {"succeeded": 2, "active": 1, "completedIndexes": "0,2"}}}
    assert render.shards_succeeded(indexed, render.shard_job_names("annotate", 3, NEW)) == 2
    assert render.shards_succeeded({}, render.shard_job_names("annotate", 3, NEW)) == 0


# ------------------------------------------------------- detection from the server

class _Version(BaseHTTPRequestHandler):
    answer = {"major": "1", "minor": "27", "gitVersion": "v1.27.3", "gitCommit": "x", "gitTreeState": "clean",
              "buildDate": "2023-06-14T09:47:40Z", "goVersion": "go1.20.5", "compiler": "gc", "platform": "linux/amd64"}
    calls = 0

    def do_GET(self):
        type(self).calls += 1
        found = self.path.rstrip("/") == "/version"
        body = json.dumps(self.answer if found else {}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def api_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Version.calls = 0
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _client(host: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = host
    return client.ApiClient(cfg)


def test_detect_reads_the_server_version_once_per_client(api_server, monkeypatch):
    monkeypatch.delenv(features.OVERRIDE_ENV, raising=False)
    api = _client(api_server)
    assert features.for_cluster(api) == NEW and features.for_cluster(api) == NEW
    assert _Version.calls == 1
    assert render.detect_features is features.for_cluster  # what reconcile calls through the render module
    monkeypatch.setitem(_Version.answer, "minor", "20")
    assert features.detect(api) == LEGACY


def test_an_unreachable_server_renders_for_1_20_and_is_asked_again(api_server, monkeypatch):
    monkeypatch.delenv(features.OVERRIDE_ENV, raising=False)
    dead = _client("http://127.0.0.1:9")  # the discard port: nothing listens
    assert features.for_cluster(dead) == LEGACY
    assert dead not in features._cache  # a failure is not remembered
    assert features.for_cluster(_client(api_server)) == NEW


@pytest.mark.parametrize("text, want", [("none", LEGACY), ("indexed", JobFeatures(indexed_jobs=True)),
                                        ("indexed, podFailurePolicy", NEW), ("indexd", LEGACY)])
def test_the_override_wins_over_the_server(api_server, monkeypatch, text, want):
    monkeypatch.setenv(features.OVERRIDE_ENV, text)
    assert features.detect(_client(api_server)) == want
    assert _Version.calls == 0
