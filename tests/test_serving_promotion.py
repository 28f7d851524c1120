"""Safe promotion against a REAL tritonserver (nvidia-pytriton's, python backend, CPU).

One server, started here in explicit model-control mode, serves a repository
that the tests write into exactly as promote does (write_version, then
adore.serving.rollout.serve_version). Client threads keep sending requests
over HTTP and gRPC while versions are swapped, withdrawn and rolled back;
not one of their requests may fail. Needs `.ci/install-triton.sh .venv`.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
import time

import numpy as np
import pytest

from adore.serving import backend, server as triton_server
from adore.serving.client import score
from adore.serving.rollout import PromotionFailed, rollback, serve_version
from adore.serving.repository import served_version, versions, write_version
from test_triton_serving import GRADES, ROWS, needs_triton, promoted  # noqa: F401 - the fixture

MODEL = "adore-student"
TOLERANCE = 1e-4  # served (ONNX Runtime in Triton) vs in-process PyTorch probabilities


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    repo = tmp_path_factory.mktemp("served-repo")
    with triton_server.TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=90) as server:
        yield server


class Traffic:
    """Client threads (one HTTP, one gRPC) sending ROWS[:4] with no version until stopped."""

    def __init__(self, server, model: str):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.model, self.ok, self.failures, self.versions = model, 0, [], []
        self.by_protocol = {"http": 0, "grpc": 0}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(mod, mod.InferenceServerClient(url)), daemon=True)
                        for mod, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url))]

    def _loop(self, mod, client):
        cols = {"QUERY": [r[0] for r in ROWS[:4]], "TITLE": [r[1] for r in ROWS[:4]],
                "ATTRIBUTES": [json.dumps(r[2]) for r in ROWS[:4]]}
        while not self._stop.is_set():
            inputs = []
            for name, values in cols.items():
                arr = np.array([v.encode() for v in values], dtype=np.object_).reshape(-1, 1)
                inputs.append(mod.InferInput(name, list(arr.shape), "BYTES"))
                inputs[-1].set_data_from_numpy(arr)
            try:
                res = client.infer(self.model, inputs)
                version = res.get_response(as_json=True)["model_version"] if mod.__name__.endswith("grpc") \
                    else res.get_response()["model_version"]
                assert res.as_numpy("PROBS").shape == (4, len(GRADES))
                with self._lock:
                    self.ok += 1
                    self.by_protocol[mod.__name__.rsplit(".", 1)[-1]] += 1
                    self.versions.append(int(version))
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                with self._lock:
                    self.failures.append(f"{type(e).__name__}: {e}")
        client.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 30
        while min(self.by_protocol.values()) < 2 and not self.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        before = dict(self.by_protocol)
        deadline = time.monotonic() + 30
        # Requests after the change too, over both protocols.
        while any(self.by_protocol[p] < before[p] + 2 for p in before) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        for t in self.threads:
            t.join(30)
        assert all(self.by_protocol[p] >= before[p] + 2 for p in before), f"traffic stalled: {self.by_protocol}"


def _default_version(server, model: str) -> int:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    arr = np.array([b"q"], dtype=np.object_).reshape(-1, 1)
    inputs = [httpclient.InferInput(n, [1, 1], "BYTES") for n in ("QUERY", "TITLE")]
    for i in inputs:
        i.set_data_from_numpy(arr)
    try:
        return int(client.infer(model, inputs).get_response()["model_version"])
    finally:
        client.close()


def test_score_buckets_count_the_scores_at_or_below_each_bound():
    """adore_score_bucket{le} is cumulative and le is inclusive, as in a Prometheus histogram."""
    bounds = backend.score_bounds(3)
    assert bounds == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    inc = backend.bucket_increments(np.array([[2.0], [0.25], [0.0], [1.99], [0.3]]), bounds)
    assert list(inc) == [2, 3, 3, 3, 3, 3, 3, 5, 5]  # the last is +Inf: every score
    assert list(backend.bucket_increments(np.zeros((0, 1)), bounds)) == [0] * 9


class _StubMetrics:
    """A stand-in for triton_python_backend_utils' metric API, which only exists inside Triton's python-backend
    stub (the real one is exercised by test_custom_metrics_on_the_metrics_port): it records each increment."""

    def __init__(self):
        self.calls: list[tuple[dict, float]] = []
        stub = self

        class Metric:
            def __init__(self, labels):
                self.labels = labels

            def increment(self, v):
                stub.calls.append((self.labels, v))

        class MetricFamily:
            COUNTER = "counter"

            def __init__(self, name, description, kind):
                self.name = name

            def Metric(self, labels):  # noqa: N802 - the stub's name
                return Metric({**labels, "family": self.name})

        self.MetricFamily = MetricFamily


def test_serving_metrics_add_up_in_numpy_and_a_flush_sends_one_increment_per_moved_counter():
    stub = _StubMetrics()
    m = backend.ServingMetrics(stub, "m", "1", 3, threshold=0.5, flush_seconds=3600)  # no flush in this test's time
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.1, 0.1, 0.8]], np.float32)
    score = probs @ np.arange(3, dtype=np.float32)
    m.record(probs, score)
    m.record(probs[:1], score[:1])
    assert stub.calls == []  # nothing is sent from a request
    m.flush()
    sent = {(lab["family"], lab.get("le")): v for lab, v in stub.calls}
    assert len(sent) == len(stub.calls)  # one increment per counter, the two records summed
    assert sent[("adore_predictions_total", None)] == sent[("adore_score_count", None)] == 4
    assert sent[("adore_low_confidence_total", None)] == 1
    assert abs(sent[("adore_score_sum", None)] - float(score.sum() + score[0])) < 1e-5
    assert sent[("adore_score_bucket", "+Inf")] == 4 and ("adore_score_bucket", "0.25") not in sent  # no score <= 0.25
    stub.calls.clear()
    m.flush()
    assert stub.calls == []  # nothing new, nothing sent
    m.record(probs[2:], score[2:])
    m.close()  # the rest goes out, and the thread has stopped
    assert ("adore_predictions_total", None) in {(lab["family"], lab.get("le")) for lab, _ in stub.calls}
    assert not m.thread.is_alive()
    # The thread sends on its own, every flush_seconds; 0 sends at once from record().
    stub.calls.clear()
    quick = backend.ServingMetrics(stub, "m", "2", 3, threshold=0.5, flush_seconds=0.05)
    quick.record(probs, score)
    deadline = time.monotonic() + 5
    while not stub.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stub.calls, "the flush thread sent nothing"
    quick.close()
    stub.calls.clear()
    at_once = backend.ServingMetrics(stub, "m", "3", 3, threshold=0.5, flush_seconds=0)
    at_once.record(probs, score)
    assert at_once.thread is None and len(stub.calls) > 0


@needs_triton
def test_custom_metrics_on_the_metrics_port(triton, promoted):
    """adore_score, adore_predictions_total and adore_low_confidence_total count exactly what was served."""
    student, _, folder = promoted
    name, threshold = "metrics-check", 0.36
    write_version(triton.repo_path, name, folder, GRADES, low_confidence_threshold=threshold)
    serve_version(triton.http_url, triton.repo_path, name, 1, TOLERANCE)
    queries, titles, attrs = (list(c) for c in zip(*ROWS))
    probs, scores = score(triton.http_url, name, queries, titles, attrs, batch_size=4)
    golden = len(json.loads((folder / "golden.json").read_text()))  # serve_version sent these first
    all_probs = np.concatenate([student.predict(*(list(c)[:golden] for c in zip(*ROWS))), probs])

    labels = f'model="{name}",version="1"'
    n = golden + len(ROWS)
    # The served model's flush thread sends the counts every second (ServingMetrics): wait for them.
    deadline = time.monotonic() + 15
    while True:
        text = triton.metrics()
        sent = re.findall(r"^adore_predictions_total\{([^}]*)\} (\S+)$", text, re.M)
        if any(labels in lab and float(v) == n for lab, v in sent) or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def value(metric: str) -> float:
        hits = [float(v) for lab, v in re.findall(rf"^{metric}{{([^}}]*)}} (\S+)$", text, re.M) if labels in lab]
        assert len(hits) == 1, f"{metric} for {labels} not on {triton.metrics_url}; got:\n" + text[:3000]
        return hits[0]

    assert value("adore_predictions_total") == n
    assert value("adore_low_confidence_total") == int((all_probs.max(-1) < threshold).sum())
    assert value("adore_score_count") == n
    assert abs(value("adore_score_sum") - (all_probs @ np.arange(len(GRADES))).sum()) < 1e-3
    buckets = re.findall(rf'^adore_score_bucket{{[^}}]*{labels}[^}}]*le="([^"]+)"}} (\S+)$', text, re.M) or \
        re.findall(rf'^adore_score_bucket{{le="([^"]+)",{labels}}} (\S+)$', text, re.M)
    assert buckets, "no adore_score buckets:\n" + "\n".join(l for l in text.splitlines() if "adore_score" in l)
    assert float(dict(buckets)["+Inf"]) == n
    # Cumulative, as a histogram's: each le counts the served scores at or below it (a score within
    # 1e-4 of a bound may fall either side between Triton's float32 and the student's own scores).
    expected = all_probs @ np.arange(len(GRADES))
    finite = {float(le): float(v) for le, v in buckets if le != "+Inf"}
    assert sorted(finite) == backend.score_bounds(len(GRADES))
    for le, v in finite.items():
        assert (expected <= le - 1e-4).sum() <= v <= (expected <= le + 1e-4).sum(), (le, v)
    assert "nv_inference_request_success" in text and scores.shape == (len(ROWS),)


@needs_triton
def test_promote_swap_withdraw_and_rollback_without_a_failed_request(triton, promoted, capsys):
    student, _, folder = promoted
    repo = triton.repo_path
    queries, titles, attrs = (list(c) for c in zip(*ROWS))
    want = student.predict(queries, titles, attrs)

    # v1: written, loaded through the repository API, golden rows checked.
    assert write_version(repo, MODEL, folder, GRADES) == 1
    out = serve_version(triton.http_url, repo, MODEL, 1, TOLERANCE)
    assert out["loadedVersion"] == 1 and out["servedMaxAbsDiff"] <= TOLERANCE
    for url, protocol in ((triton.http_url, "http"), (triton.grpc_url, "grpc")):
        probs, _ = score(url, MODEL, queries, titles, attrs, protocol=protocol)
        np.testing.assert_allclose(probs, want, atol=TOLERANCE, rtol=0)

    # v2 while clients keep sending: nothing fails, and v2 answers afterwards.
    with Traffic(triton, MODEL) as traffic:
        assert write_version(repo, MODEL, folder, GRADES) == 2
        serve_version(triton.http_url, repo, MODEL, 2, TOLERANCE)
        swapped_at = len(traffic.versions)
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.ok > swapped_at > 0 and set(traffic.versions[:swapped_at // 2]) == {1}
    assert traffic.versions[-1] == 2 and _default_version(triton, MODEL) == 2
    assert triton.model_ready(MODEL, 1) and triton.model_ready(MODEL, 2)  # latest two

    # v3 with a corrupted model file: promotion fails, v3 leaves nothing behind, v2 keeps serving.
    bad = folder.parent / "corrupt-version"
    shutil.copytree(folder, bad)
    (bad / "model.onnx").write_bytes(b"\x08\x07 this is not an ONNX graph" * 100)
    with Traffic(triton, MODEL) as traffic:
        assert write_version(repo, MODEL, bad, GRADES) == 3
        with pytest.raises(PromotionFailed, match=r"version 3 .*not promoted.*(?i:protobuf).*removed; Triton kept serving version\(s\) \[1, 2\]"):
            serve_version(triton.http_url, repo, MODEL, 3, TOLERANCE)
    assert traffic.failures == [], traffic.failures[:3]
    assert set(traffic.versions) == {2} and traffic.ok > 0
    assert versions(repo, MODEL) == [1, 2]
    assert sorted(p.name for p in (repo / MODEL).iterdir()) == ["1", "2", "config.pbtxt"]  # no temp folders
    assert not triton.model_ready(MODEL, 3) and triton.model_ready(MODEL, 2)
    probs, _ = score(triton.grpc_url, MODEL, queries, titles, attrs, protocol="grpc")
    np.testing.assert_allclose(probs, want, atol=TOLERANCE, rtol=0)

    # Rollback (what `adore rollback` and promotion.rollbackTo do): v1 pinned, v2 kept on disk.
    with Traffic(triton, MODEL) as traffic:
        done = rollback(repo, MODEL, url=triton.http_url, tolerance=TOLERANCE)
    assert done["version"] == 1 and done["previousVersion"] == 2
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.versions[-1] == 1 and _default_version(triton, MODEL) == 1
    assert served_version(repo, MODEL) == 1 and versions(repo, MODEL) == [1, 2]
    assert not triton.model_ready(MODEL, 2)

    # The next promotion serves the latest two again.
    assert write_version(repo, MODEL, folder, GRADES) == 3
    serve_version(triton.http_url, repo, MODEL, 3, TOLERANCE)
    assert _default_version(triton, MODEL) == 3 and triton.model_ready(MODEL, 2)

    # `adore score`, the command-line client, over gRPC.
    from adore.cli import main

    capsys.readouterr()
    assert main(["score", "--url", triton.grpc_url, "--protocol", "grpc", "--query", queries[0], "--title", titles[0],
                 "--attributes", json.dumps(attrs[0])]) == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["probs"], want[0], atol=TOLERANCE, rtol=0)


@needs_triton
def test_promote_stage_with_triton_url_records_the_loaded_version(triton, tiny_run, tiny_round_file, tmp_path):
    """`adore run` with promotion.tritonUrl: the promote stage loads its version and checks it as served."""
    import yaml

    from conftest import adore, copy_workdir

    work = copy_workdir(tiny_run, tmp_path / "served")
    shutil.rmtree(work / "stages" / "promote")
    doc = yaml.safe_load(tiny_round_file.read_text())
    doc["spec"]["promotion"].update(repository=str(triton.repo_path), modelName="round-student",
                                    tritonUrl=f"http://{triton.http_url}", servingTolerance=TOLERANCE)
    f = tmp_path / "round.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = adore("run", f, "--workdir", work, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    promo = json.loads((work / "stages" / "promote" / "promotion.json").read_text())
    assert promo["loadedVersion"] == promo["version"] == 1 and promo["servedMaxAbsDiff"] <= TOLERANCE
    assert json.loads((work / "status.json").read_text())["promotedVersion"] == 1
    assert triton.model_ready("round-student", 1)


@needs_triton
def test_a_version_triton_cannot_load_is_removed_and_the_old_one_keeps_serving(triton, promoted):
    """Passes the in-process preflight, but its model.py fails in Triton's initialize.

    Last in this module on purpose: after this failed load, the next load on
    the same tritonserver 2.51 hung (timed out after 300 s) in one run here,
    a known problem of that server (docs/serving.md).
    """
    _, _, folder = promoted
    repo, name = triton.repo_path, "load-failure"
    write_version(repo, name, folder, GRADES)
    serve_version(triton.http_url, repo, name, 1, TOLERANCE)
    assert write_version(repo, name, folder, GRADES) == 2
    model_py = repo / name / "2" / "model.py"
    text = model_py.read_text()
    assert "from adore.serving import backend" in text  # the line the sabotage below breaks
    model_py.write_text(text.replace("from adore.serving import backend", "import no_such_module_adore as backend"))
    with pytest.raises(PromotionFailed, match=r"version 2 .*no_such_module_adore.*Triton kept serving version\(s\) \[1\]"):
        serve_version(triton.http_url, repo, name, 2, TOLERANCE)
    assert versions(repo, name) == [1] and _default_version(triton, name) == 1
    assert sorted(p.name for p in (repo / name).iterdir()) == ["1", "config.pbtxt"]
