"""benchmarks/triton_throughput.py: the paths take turns block by block, and shares pair block k with block k.

The paths here are stand-in calls (sleeps and a counter), not Triton: what is tested is the
benchmark's bookkeeping; the real tritonserver is measured by the benchmark itself and served in
tests/test_serving*.py."""
import importlib.util
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("triton_throughput", ROOT / "benchmarks" / "triton_throughput.py")
tt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tt)
PAIRS = (["q"] * 10, ["t"] * 10, [{}] * 10)


def test_paths_take_turns_block_by_block_with_the_order_rotated():
    calls = []
    paths = [tt.ScoringPath(name, (lambda n: lambda: calls.append(n))(name)) for name in ("a", "b", "c")]
    rows = tt.interleaved(paths, PAIRS, requests=7, concurrency=1, blocks=3)
    # Blocks of 3, 2, 2 requests; block 1 in the order a b c, block 2 b c a, block 3 c a b.
    assert calls == ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 2 + ["c"] * 2 + ["a"] * 2 + ["c"] * 2 + ["a"] * 2 + ["b"] * 2
    assert [r["requests"] for r in rows] == [7, 7, 7] and all(len(r["blockRates"]) == 3 for r in rows)


def test_a_connection_is_opened_per_client_thread_and_passed_to_the_call():
    opened = []

    class Conn:
        def __enter__(self):
            opened.append(self)
            return self

        def __exit__(self, *exc):
            return None

    seen = []
    path = tt.ScoringPath("conn", lambda conn: seen.append(conn), Conn)
    tt.interleaved([path], PAIRS, requests=8, concurrency=2, blocks=2)
    assert len(opened) == 4 and len(seen) == 8 and set(map(id, seen)) == set(map(id, opened))


def test_share_is_against_the_reference_at_the_same_concurrency_block_by_block():
    slow = tt.ScoringPath("slow", lambda: time.sleep(0.02))
    fast = tt.ScoringPath("fast", lambda: time.sleep(0.01))
    rows = tt.interleaved([fast, slow], PAIRS, requests=4, concurrency=1, blocks=2)
    rows += tt.interleaved([fast, slow], PAIRS, requests=4, concurrency=2, blocks=2)
    tt.shares(rows, "fast")
    for r in rows:
        if r["path"] == "fast":
            assert "share" not in r
            continue
        ref = next(x for x in rows if x["path"] == "fast" and x["concurrency"] == r["concurrency"])
        assert r["share"] == pytest.approx(r["pairsPerSecond"] / ref["pairsPerSecond"])
        lo, hi = r["shareRange"]
        assert 0.3 < lo <= r["share"] * 1.05 and r["share"] * 0.95 <= hi < 0.7  # about half, each block


def test_errors_are_counted_not_timed():
    def flaky(state={"n": 0}):
        state["n"] += 1
        if state["n"] % 2:
            raise RuntimeError("refused")

    (r,) = tt.interleaved([tt.ScoringPath("flaky", flaky)], PAIRS, requests=6, concurrency=1, blocks=2)
    assert r["errors"] == 3 and r["requests"] == 3


def test_one_query_requests_keep_the_items_under_one_query():
    q0, t0, a0 = tt.bundled_pairs(30)
    q1, t1, a1 = tt.bundled_pairs(30, queries=1)
    q3, _, _ = tt.bundled_pairs(30, queries=3)
    assert len(set(q0)) > 1 and (t1, a1) == (t0, a0)
    assert set(q1) == {q0[0]} and q3[:4] == [q3[0], q3[1], q3[2], q3[0]] and len(set(q3)) == 3


def test_the_echo_floor_has_no_share_and_bounds_concurrency_one():
    rows = [{"path": "in", "concurrency": 1, "pairsPerSecond": 100.0, "blockRates": [100.0], "p50": 18.0},
            {"path": "triton http", "concurrency": 1, "pairsPerSecond": 90.0, "blockRates": [90.0], "p50": 20.0},
            {"path": "triton http" + tt.FLOOR, "concurrency": 1, "pairsPerSecond": 900.0, "blockRates": [900.0],
             "p50": 2.0}]
    tt.shares(rows, "in")
    assert rows[1]["share"] == pytest.approx(0.9) and "share" not in rows[2]
    (line,) = tt.floor_bounds(rows, "in")
    assert "at most 90.0% of in-process" in line
