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
