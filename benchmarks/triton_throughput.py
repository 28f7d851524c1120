"""Throughput and latency of 100-pair requests through Triton vs the same model in-process.

    .venv/bin/python benchmarks/triton_throughput.py [--student DIR] [--requests 40] [--concurrency 2] [--request-log]

Triton: the python-onnx flavour exactly as promote writes it, served by the
real tritonserver from nvidia-pytriton (CPU), queried by CONCURRENCY client
threads, each sending REQUESTS/CONCURRENCY requests of PAIRS bundled (ESCI)
query-item pairs and waiting for each answer. In-process: the same tokeniser
code (adore.serving.backend) and the same ONNX graph in ONNX Runtime, one
batch of PAIRS after another in this process (and, with --pytorch,
PyTorch's Student.predict).
With --request-log, Triton is measured a second time serving the same
version with promotion.requestLog on at its worst case (sampleRate 1: every
row is written), so the two rows show what logging costs serving.
Without --student an untrained MiniLM-L6 student (max_length 96, the
distill default) is used: the cost does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GRADES = ["irrelevant", "partial", "exact"]


def bundled_pairs(n: int) -> tuple[list[str], list[str], list[dict]]:
    from adore.data.importers import BUNDLED_DIR

    items = {}
    for line in (BUNDLED_DIR / "catalogue.jsonl").open(encoding="utf-8"):
        rec = json.loads(line)
        items[rec["item_id"]] = rec
    rows = []
    for line in (BUNDLED_DIR / "pairs.jsonl").open(encoding="utf-8"):
        rec = json.loads(line)
        if rec["item_id"] in items:
            item = items[rec["item_id"]]
            rows.append((rec["query"], item["title"], item.get("attributes") or {}))
        if len(rows) == n:
            break
    return tuple(list(c) for c in zip(*rows))


def percentiles(lat_s: list[float]) -> dict:
    ms = np.array(lat_s) * 1000
    return {f"p{p}": round(float(np.percentile(ms, p)), 1) for p in (50, 95, 99)}


def bench_triton(repo: Path, pairs, requests: int, concurrency: int, protocol: str, label: str = "") -> dict:
    from adore.serving.client import score
    from adore.serving.rollout import serve_version
    from adore.serving.server import TritonServer

    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=120) as server:
        serve_version(server.http_url, repo, "adore-student", 1, 1e-3)
        url = server.http_url if protocol == "http" else server.grpc_url
        for _ in range(2):  # warm-up
            score(url, "adore-student", *pairs, protocol=protocol)
        latencies, errors = [], []
        lock = threading.Lock()

        def worker(n: int):
            for _ in range(n):
                t0 = time.perf_counter()
                try:
                    score(url, "adore-student", *pairs, protocol=protocol)
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    print(f"triton: request {len(latencies)}/{requests} {latencies[-1]:.2f} s", file=sys.stderr,
                          flush=True)

        per = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
        threads = [threading.Thread(target=worker, args=(n,)) for n in per]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    return {"path": f"triton {protocol}{label}", "concurrency": concurrency, "requests": len(latencies),
            "errors": len(errors), "pairsPerSecond": round(len(latencies) * len(pairs[0]) / wall, 1),
            **percentiles(latencies)}


def bench_inprocess(folder: Path, student, pairs, requests: int, pytorch: bool) -> list[dict]:
    import onnxruntime as ort

    from adore.serving.backend import Preprocessor, probs_and_score

    pre = Preprocessor(str(folder))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("ADORE_ORT_THREADS", "2"))  # as the Triton model
    sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}

    def onnx_once():
        enc = pre.encode(*pairs)
        probs_and_score(sess.run(None, {k: v for k, v in enc.items() if k in names})[0])

    out = []
    paths = [("in-process onnxruntime", onnx_once)] + ([("in-process pytorch", lambda: student.predict(*pairs))]
                                                      if pytorch else [])
    for label, fn in paths:
        fn()
        lat = []
        t0 = time.perf_counter()
        for _ in range(requests):
            t1 = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t1)
            print(f"{label}: request {len(lat)}/{requests} {lat[-1]:.2f} s", file=sys.stderr, flush=True)
        wall = time.perf_counter() - t0
        out.append({"path": label, "concurrency": 1, "requests": requests, "errors": 0,
                    "pairsPerSecond": round(requests * len(pairs[0]) / wall, 1), **percentiles(lat)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", help="a distilled student folder (default: an untrained MiniLM-L6 student)")
    ap.add_argument("--pairs", type=int, default=100, help="pairs per request")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    ap.add_argument("--max-length", type=int, default=96, help="of the untrained student (without --student)")
    ap.add_argument("--pytorch", action="store_true", help="also time PyTorch's Student.predict")
    ap.add_argument("--request-log", action="store_true", help="also measure Triton with the request log writing every row")
    args = ap.parse_args()

    import torch

    from adore.serving.version import prepare_version
    from adore.student.model import Student
    from adore.triton import write_version

    torch.set_num_threads(int(os.environ.get("ADORE_ORT_THREADS", "2")))
    pairs = bundled_pairs(args.pairs)
    with tempfile.TemporaryDirectory(prefix="adore-bench-") as tmp:
        tmp = Path(tmp)
        if args.student:
            student = Student.load(Path(args.student))
        else:
            Student.create("builtin:minilm-l6", GRADES, use_attributes=True, max_length=args.max_length,
                           brands=sorted({a.get("brand", "") for a in pairs[2]} - {""})).save(tmp / "student")
            student = Student.load(tmp / "student")
        diff = prepare_version(student, tmp / "version", pairs)
        write_version(tmp / "repo", "adore-student", tmp / "version", student.meta.grades)
        rows = bench_inprocess(tmp / "version", student, pairs, args.requests, args.pytorch)
        rows.insert(0, bench_triton(tmp / "repo", pairs, args.requests, args.concurrency, args.protocol))
        if args.request_log:
            settings = {"path": str(tmp / "log"), "sample_rate": 1.0, "threshold": 0.5}
            (tmp / "version" / "request_log.json").write_text(json.dumps(settings))
            write_version(tmp / "repo-logged", "adore-student", tmp / "version", student.meta.grades)
            rows.insert(1, bench_triton(tmp / "repo-logged", pairs, args.requests, args.concurrency, args.protocol,
                                        " + request log (every row)"))
            from adore.serving.request_log import read_request_log

            logged = read_request_log(tmp / "log")
            print(f"# request log: {len(logged.rows)} rows in {logged.files} file(s), "
                  f"{sum(f.stat().st_size for f in (tmp / 'log').glob('*.jsonl')) / 2**20:.1f} MiB", file=sys.stderr)
    from adore.hardware import cpu_summary

    print(f"# {len(pairs[0])} pairs per request, student max_length {student.meta.max_length}, "
          f"ONNX vs PyTorch max abs diff {diff:.1e}, {os.cpu_count()} CPUs: {cpu_summary()}")
    print("| path | concurrency | requests | errors | pairs/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['pairsPerSecond']} | "
              f"{r['p50']} | {r['p95']} | {r['p99']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
