"""The loop from serving back into the next round: the request log, behaviour events, what round 2
inherits from round 1 (served pairs, the student), and a promotion that never regresses.

The request log is written by a REAL tritonserver (python-onnx flavour) and killed with SIGKILL; the
stages run on copies of the shared tiny round with the real models.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from adore.data.contract import DataError
from adore.feedback import aggregate, behaviour_from_events, read_events
from adore.serving.request_log import LogSettings, RequestLog, RequestLogError, read_request_log
from conftest import adore, copy_workdir
from test_triton_serving import GRADES, ROWS, needs_triton, promoted  # noqa: F401 - the fixture


def _rows(n: int):
    return ([f"query {i}" for i in range(n)], [f"title {i}" for i in range(n)], [{"brand": "B"}] * n)


def test_request_log_keeps_low_confidence_rows_and_a_sample_then_rotates(tmp_path):
    log = RequestLog(LogSettings(str(tmp_path), sample_rate=0.0, max_file_bytes=4096, max_files=2, threshold=0.6),
                     "m", 3, seed=0)
    probs = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]], dtype=np.float32)
    assert log.record(*_rows(4), probs) == 2  # top probability 0.5 and 0.4: below 0.6
    read = read_request_log(tmp_path)
    assert [r["query"] for r in read.rows] == ["query 0", "query 2"] and read.torn == 0
    assert all(r["lowConfidence"] and r["model"] == "m" and r["version"] == "3" for r in read.rows)
    sampled = RequestLog(LogSettings(str(tmp_path / "s"), sample_rate=1.0, threshold=0.6), "m", 3)
    assert sampled.record(*_rows(4), probs) == 4  # every confident row too
    assert sum(not r["lowConfidence"] for r in read_request_log(tmp_path / "s").rows) == 2
    for _ in range(60):  # ~100 bytes a row: several rotations past 4 KiB
        log.record(*_rows(4), probs)
    log.close()
    files = sorted(p.name for p in tmp_path.glob("requests-*.jsonl"))
    rotated = [f for f in files if f.count(".") == 2]
    assert len(rotated) == 2, files  # maxFiles rotated files kept, older ones deleted
    assert all(p.stat().st_size < 4096 + 1024 for p in tmp_path.glob("requests-*.jsonl"))


def test_request_log_reader_counts_a_torn_last_line_and_rejects_a_broken_one(tmp_path):
    f = tmp_path / "requests-m-v1-1.jsonl"
    good = json.dumps({"query": "q", "title": "t", "probs": [0.5, 0.5], "version": "1"})
    f.write_text(good + "\n" + good[:20])
    read = read_request_log(tmp_path)
    assert len(read.rows) == 1 and read.torn == 1 and read.files == 1
    f.write_text(good[:20] + "\n" + good + "\n")
    with pytest.raises(RequestLogError, match=r"requests-m-v1-1.jsonl, line 1"):
        read_request_log(tmp_path)
    assert read_request_log(tmp_path / "missing").rows == []


def test_behaviour_events_aggregate_into_real_behaviour(tmp_path):
    f = tmp_path / "events.jsonl"
    events = [("q", "a", "impression")] * 3 + [("q", "a", "click"), ("q", "a", "purchase"), ("q", "b", "purchase"),
                                                ("q", "b", "add_to_cart")]
    f.write_text("".join(json.dumps({"query": q, "item_id": i, "event": e, "time": "2026-11-30T12:00:00Z"}) + "\n"
                         for q, i, e in events))
    rows = {b.item_id: b for b in behaviour_from_events(f)}
    assert (rows["a"].impressions, rows["a"].clicks, rows["a"].purchases) == (3, 1, 1)
    # A purchase implies a click, a click an impression.
    assert (rows["b"].impressions, rows["b"].clicks, rows["b"].carts, rows["b"].purchases) == (1, 1, 1, 1)
    assert not any(b.simulated for b in rows.values())
    later = read_events(f, since=1e12)
    assert aggregate(later) == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "item_id": "a", "event": "hover", "time": 0}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, row 1, column 'event'"):
        behaviour_from_events(bad)
    bad.write_text(json.dumps({"query": "q", "item_id": "a", "event": "click", "time": "yesterday"}) + "\n")
    with pytest.raises(DataError, match=r"column 'time'"):
        behaviour_from_events(bad)


@needs_triton
def test_triton_writes_the_request_log_and_a_kill_leaves_every_complete_row(promoted, tmp_path):
    from adore.serving import server as triton_server
    from adore.serving.client import score
    from adore.serving.repository import write_version

    student, _, folder = promoted
    version = tmp_path / "version"
    shutil.copytree(folder, version)
    logdir = tmp_path / "log"
    # Threshold above 1: every row is low-confidence, so every scored row must be logged.
    (version / "request_log.json").write_text(json.dumps({"path": str(logdir), "threshold": 1.01}))
    repo = tmp_path / "repo"
    write_version(repo, "adore-student", version, GRADES)
    server = triton_server.TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=90)
    server.start()
    stop, sent = threading.Event(), []
    queries, titles, attrs = (list(c) for c in zip(*ROWS))

    def traffic():
        while not stop.is_set():
            try:
                score(server.http_url, "adore-student", queries, titles, attrs)
                sent.append(len(queries))
            except Exception:  # noqa: BLE001 - the server is killed under this loop
                return

    try:
        server.load("adore-student")
        for _ in range(3):
            score(server.http_url, "adore-student", queries, titles, attrs)
        served = read_request_log(logdir)
        assert len(served.rows) == 3 * len(ROWS) and served.torn == 0
        assert served.rows[0]["query"] == queries[0] and served.rows[0]["attributes"] == attrs[0]
        assert served.rows[0]["version"] == "1" and len(served.rows[0]["probs"]) == len(GRADES)
        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        while len(sent) < 3:
            time.sleep(0.05)
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server and its stub, while requests flow
        stop.set()
        t.join(30)
    finally:
        server.stop()
    after = read_request_log(logdir)  # must not raise: only a last line can be torn
    assert after.torn <= after.files and len(after.rows) >= (3 + len(sent)) * len(ROWS) - len(ROWS)
    # A cut last line, as a kill inside write() leaves it (emulated: the kill above may fall between writes).
    f = next(logdir.glob("requests-*.jsonl"))
    with f.open("ab") as out:
        out.write(b'{"query": "cut sh')
    cut = read_request_log(logdir)
    assert len(cut.rows) == len(after.rows) and cut.torn == after.torn + (0 if after.torn else 1)


def _lineage(tiny_run: Path, tmp_path: Path, round_file: Path, spec: dict) -> tuple[Path, Path, Path]:
    """(r1 workdir, r2 workdir, r2 round file): round 1 is the shared tiny round, round 2 builds on it."""
    r1 = copy_workdir(tiny_run, tmp_path / "lineage" / "r1")
    r2 = tmp_path / "lineage" / "r2"
    doc = yaml.safe_load(round_file.read_text())
    doc["metadata"]["name"] = "r2"
    doc["spec"]["previousRound"] = "r1"
    for dotted, value in spec.items():
        node = doc["spec"]
        *path, last = dotted.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    f = tmp_path / "r2.yaml"
    f.write_text(yaml.safe_dump(doc))
    return r1, r2, f


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_next_pool_starts_with_the_served_low_confidence_pairs_never_a_dev_query(tiny_run, tiny_round_file, tmp_path):
    r1, r2, f = _lineage(tiny_run, tmp_path, tiny_round_file, {"promotion.requestLog": {"path": "request-log"}})
    prep = r1 / "stages" / "prepare"
    train = _jsonl(prep / "train_labels.jsonl")
    catalogue = {r["item_id"]: r for r in _jsonl(prep / "catalogue.jsonl")}
    dev_query = _jsonl(prep / "dev.jsonl")[0]["query"]
    version = json.loads((r1 / "stages" / "promote" / "promotion.json").read_text())["version"]
    log = RequestLog(LogSettings(str(r1 / "request-log"), threshold=0.6), "adore-student", version)
    seed = {(r["query"], r["item_id"]) for r in _jsonl(prep / "seed.jsonl")}
    known = next(r for r in reversed(train) if (r["query"], r["item_id"]) not in seed)  # a seed pair is a duplicate
    from adore.stages.prepare import _query_bucket

    # A query nobody labelled, in the training split by the split's own hash (13: the bundled split seed).
    fresh = next(q for q in (f"served query {i}" for i in range(100)) if _query_bucket(q, 13) >= 0.3)
    queries = [known["query"], fresh, dev_query, known["query"], "confident query"]
    titles = [catalogue[known["item_id"]]["title"], "Served Widget 3000", "Anything", catalogue[known["item_id"]]["title"], "x"]
    probs = np.array([[0.4, 0.3, 0.3]] * 4 + [[0.9, 0.05, 0.05]], dtype=np.float32)
    log.record(queries, titles, [{}, {"brand": "Acme"}, {}, {}, {}], probs)
    RequestLog(LogSettings(str(r1 / "request-log"), threshold=0.6), "adore-student", version + 1).record(
        ["another version's query"], ["t"], [{}], probs[:1])
    log.close()
    with (next((r1 / "request-log").glob(f"requests-adore-student-v{version}-*.jsonl"))).open("ab") as out:
        out.write(b'{"query": "to')  # a torn last line
    adore("stage", "prepare", "--round", f, "--workdir", r2)
    m = json.loads((r2 / "stages" / "prepare" / "metrics.json").read_text())
    pool = _jsonl(r2 / "stages" / "prepare" / "pool.jsonl")
    first = [(p["query"], p["item_id"]) for p in pool[:2]]
    assert first[0] == (known["query"], known["item_id"])  # matched to the catalogue by title
    assert first[1][0] == fresh and first[1][1].startswith("served:")
    assert m["servedPairs"] == 2 and m["served"]["dropped"] == {"devQuery": 1, "duplicate": 1}
    assert m["served"]["tornLines"] == 1 and m["served"]["lowConfidenceRows"] == 4
    assert dev_query not in {p["query"] for p in pool}
    new_item = {r["item_id"]: r for r in _jsonl(r2 / "stages" / "prepare" / "catalogue.jsonl")}[first[1][1]]
    assert new_item["title"] == "Served Widget 3000" and new_item["attributes"] == {"brand": "Acme"}


@pytest.mark.slow
def test_distill_starts_from_the_previous_student_or_names_what_differs(tiny_run, tiny_round_file, tmp_path):
    r1, r2, f = _lineage(tiny_run, tmp_path, tiny_round_file, {})
    shutil.copytree(r1 / "stages", r2 / "stages")
    shutil.rmtree(r2 / "stages" / "distill")
    adore("stage", "distill", "--round", f, "--workdir", r2)
    m = json.loads((r2 / "stages" / "distill" / "metrics.json").read_text())
    assert m["initFrom"] == "previous" and m["previousStudent"].endswith("r1/stages/distill/student")
    assert "headFromSeed" not in m  # the previous head is kept, not refitted from the seed
    _, r3, g = _lineage(tiny_run, tmp_path / "b", tiny_round_file, {"stages.distill.maxLength": 64})
    shutil.copytree(r1 / "stages", r3 / "stages")
    shutil.rmtree(r3 / "stages" / "distill")
    res = adore("stage", "distill", "--round", g, "--workdir", r3, check=False)
    assert res.returncode != 0 and "spec.stages.distill.initFrom" in res.stderr and "maxLength" in res.stderr
    assert not (r3 / "stages" / "distill").exists()  # nothing half-written


def test_must_beat_previous_blocks_a_regression_within_its_tolerance():
    from adore.schema import GatesSpec
    from adore.stages.promote import check_gates

    report = {"student": {"macroF1": 0.50, "auc": 0.8, "ndcg@10": 0.90}, "bm25": {"macroF1": 0.3, "auc": 0.6, "ndcg@10": 0.8},
              "previousStudent": {"macroF1": 0.52, "ndcg@10": 0.89, "round": "r1", "promotedVersion": 1}}
    failed = check_gates(report, GatesSpec(), 10)
    assert len(failed) == 1 and "macro-F1 0.5000 is below the previous student's 0.5200" in failed[0]
    assert check_gates(report, GatesSpec(previous_tolerance=0.03), 10) == []
    assert check_gates(report, GatesSpec(must_beat_previous=False), 10) == []
    unpromoted = {**report, "previousStudent": {**report["previousStudent"], "promotedVersion": None}}
    assert check_gates(unpromoted, GatesSpec(), 10) == []  # nothing served to regress from


@pytest.mark.slow
@needs_triton
def test_adore_loop_serves_round_one_replays_traffic_and_round_two_builds_on_it(tiny_run, tiny_round_file, tmp_path):
    loop_dir = tmp_path / "loop"
    copy_workdir(tiny_run, loop_dir / "tiny")  # round 1 is the shared tiny round: only promote reruns
    doc = yaml.safe_load(tiny_round_file.read_text())
    # Most of a tiny student's verdicts are below 0.9: the log gets rows whatever this student learnt.
    doc["spec"]["promotion"]["lowConfidenceThreshold"] = 0.9
    f = tiny_round_file.parent / "loop.yaml"
    f.write_text(yaml.safe_dump(doc))
    prep = tiny_run / "stages" / "prepare"
    items = {r["item_id"]: r for r in _jsonl(prep / "catalogue.jsonl")}
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("".join(json.dumps({"query": p["query"], "title": items[p["item_id"]]["title"],
                                           "attributes": items[p["item_id"]].get("attributes") or {}}) + "\n"
                               for p in _jsonl(prep / "train_labels.jsonl")))
    res = adore("loop", f, "--rounds", "2", "--traffic", traffic, "--workdir", loop_dir, check=False, timeout=2400)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    rounds = json.loads((loop_dir / "loop.json").read_text())
    assert [r["round"] for r in rounds] == ["tiny", "tiny-r2"] and rounds[0]["promotedVersion"] == 1
    assert rounds[0]["replay"]["pairs"] == len(_jsonl(prep / "train_labels.jsonl")) and rounds[0]["requestLogRows"] > 0
    r2 = rounds[1]
    assert r2["phase"] == "Succeeded", r2
    assert r2["servedPairs"] > 0 and r2["initFrom"] == "previous"
    pool = _jsonl(loop_dir / "tiny-r2" / "stages" / "prepare" / "pool.jsonl")
    logged = {r["query"] for r in read_request_log(loop_dir / "request-log").rows if r["lowConfidence"]}
    assert pool[0]["query"] in logged
    report = json.loads((loop_dir / "tiny-r2" / "stages" / "evaluate" / "report.json").read_text())
    assert report["previousStudent"]["round"] == "tiny" and report["previousStudent"]["promotedVersion"] == 1
    promo = json.loads((loop_dir / "tiny-r2" / "stages" / "promote" / "promotion.json").read_text())
    prev, mine = report["previousStudent"], report["student"]
    regressed = mine["macroF1"] < prev["macroF1"] or mine["ndcg@10"] < prev["ndcg@10"]
    assert promo["promoted"] is (not regressed) and promo.get("regressesPrevious", False) is regressed
    versions = sorted(int(p.name) for p in (loop_dir / "triton-repo" / "adore-student").iterdir() if p.name.isdigit())
    assert versions == ([1] if regressed else [1, 2])
