"""Throughput and latency of 100-pair requests through Triton vs the same model in-process.

    .venv/bin/python benchmarks/triton_throughput.py [--student DIR] [--requests 40] \
        [--concurrency 1,2,4,8] [--protocol http,grpc] [--blocks 4] [--queries N] [--floor] \
        [--request-log] [--cold]

Triton: the python-onnx flavour exactly as promote writes it, served by the
real tritonserver from nvidia-pytriton (CPU), queried by CONCURRENCY client
threads, each sending its share of REQUESTS requests of PAIRS bundled (ESCI)
query-item pairs and waiting for each answer; one row per protocol and
concurrency. The first PAIRS bundled pairs carry 10 distinct queries;
--queries 1 sends the same items under one query, the shape of a search
page's request. In-process: what the served model.py runs (adore.serving.backend;
for a bi-encoder the split of adore.serving.bi_encoder, with the item table
promote writes unless --cold) on the rows as Python objects, called by the
same number of threads in this process (and, with --pytorch, PyTorch's
Student.predict).
With --floor the same requests also go through an echo model on the same
server (benchmarks/triton_echo_model.py: the inputs read as model.py reads
them, zeros out): Triton's own cost per request, and the bound it puts on
Triton's share of in-process pairs/s at concurrency 1 (printed last).
The paths are timed next to each other: at each concurrency the requests
are split into BLOCKS blocks and the paths take turns, block by block (the
order rotated each block), with every server up throughout; the share
column gives each path's pairs/s against in-process at the same concurrency
and the range of the block-by-block shares. On a shared 2-core machine the
throughput drifts by more than 10% within minutes, so paths timed one after
the other compare the drift, not the paths.
ONNX Runtime threads: as the served model takes them (the CPU limit shared by
the instances, or ADORE_ORT_THREADS). Beside every pairs/s: the share of the
machine's measured fp32 MatMul roofline it reaches, at the FLOPs per pair of
the served path.
With --request-log, Triton is measured a second time serving the same
version with promotion.requestLog on at its worst case (sampleRate 1: every
row is written), so the two rows show what logging costs serving.
Without --student an untrained MiniLM-L6 student (max_length 96, the
distill default; --architecture, default bi-encoder) is used: the cost does
not depend on the weights.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
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
ECHO = "adore-echo"  # the model of the --floor paths
FLOOR = " floor (echo model)"  # the label of those paths


def bundled_pairs(n: int, queries: int = 0) -> tuple[list[str], list[str], list[dict]]:
    """The first N bundled (query, title, attributes) pairs; with QUERIES >= 1 the same N items under
    the first QUERIES distinct queries, in turn (1: one query and its N candidates, a search page)."""
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
    if queries:
        distinct = list(dict.fromkeys(r[0] for r in rows))[:queries]
        rows = [(distinct[i % len(distinct)], title, attrs) for i, (_, title, attrs) in enumerate(rows)]
    return tuple(list(c) for c in zip(*rows))


def percentiles(lat_s: list[float]) -> dict:
    ms = np.array(lat_s) * 1000
    return {f"p{p}": round(float(np.percentile(ms, p)), 1) for p in (50, 95, 99)}


def run_clients(call, requests: int, concurrency: int, label: str, connect=None) -> tuple[list[float], list[str], float]:
    """CONCURRENCY threads share REQUESTS calls, each waiting for its answer; (latencies, errors, wall seconds).
    connect: a context manager each thread opens once (its own client connection) and calls `call` with."""
    latencies, errors = [], []
    lock = threading.Lock()

    def worker(n: int):
        if connect is None:
            return requests_of(n, call)
        with connect() as conn:
            requests_of(n, lambda: call(conn))

    def requests_of(n: int, call):
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                call()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                print(f"{label}: request {len(latencies)}/{requests} {latencies[-1]:.2f} s", file=sys.stderr, flush=True)

    per = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in per]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies, errors, time.perf_counter() - t0


def row(path: str, concurrency: int, pairs, lat, errors, wall) -> dict:
    return {"path": path, "concurrency": concurrency, "requests": len(lat), "errors": len(errors),
            "pairsPerSecond": round(len(lat) * len(pairs[0]) / wall, 1), **percentiles(lat)}


class ScoringPath:
    """One way of scoring a request: a label, the call, and the connection each client thread opens (or None)."""

    def __init__(self, label: str, call, connect=None):
        self.label, self.call, self.connect = label, call, connect


def interleaved(paths: list[ScoringPath], pairs, requests: int, concurrency: int, blocks: int) -> list[dict]:
    """Each path's rows at one concurrency, measured in BLOCKS alternating blocks (the order rotated
    every block), so every path sees the machine in the same state: on a shared 2-core machine the
    throughput drifts by more than the 10% the comparison asks about within minutes, and paths timed
    one after the other compare the drift. Each row also keeps its per-block pairs/s."""
    runs = {p.label: [] for p in paths}  # (latencies, errors, wall) of each block
    per_block = [requests // blocks + (b < requests % blocks) for b in range(blocks)]
    for b, n in enumerate(per_block):
        for p in paths[b % len(paths):] + paths[:b % len(paths)]:
            runs[p.label].append(run_clients(p.call, n, concurrency, f"{p.label} x{concurrency} block {b + 1}", p.connect))
    out = []
    for p in paths:
        done = runs[p.label]
        lat, errors = [x for r in done for x in r[0]], [e for r in done for e in r[1]]
        out.append({**row(p.label, concurrency, pairs, lat, errors, sum(r[2] for r in done)),
                    "blockRates": [len(r[0]) * len(pairs[0]) / r[2] for r in done]})
    return out


def shares(rows: list[dict], reference: str) -> None:
    """Each row's pairs/s as a share of REFERENCE's at the same concurrency, and the range of the per-block
    shares (block k of the row against block k of the reference, measured next to each other)."""
    ref = {r["concurrency"]: r for r in rows if r["path"] == reference}
    for r in rows:
        base = ref.get(r["concurrency"])
        if base is None or r is base or not base["pairsPerSecond"] or r["path"].endswith(FLOOR):
            continue
        r["share"] = r["pairsPerSecond"] / base["pairsPerSecond"]
        per = [a / b for a, b in zip(r["blockRates"], base["blockRates"])]
        r["shareRange"] = (min(per), max(per))


def write_echo_model(repo: Path, batching) -> None:
    """REPO/ECHO: the served model's config with benchmarks/triton_echo_model.py as its model."""
    import shutil

    from adore.serving.repository import render_config

    (repo / ECHO / "1").mkdir(parents=True)
    (repo / ECHO / "config.pbtxt").write_text(render_config(ECHO, GRADES, batching=batching))
    shutil.copy(Path(__file__).with_name("triton_echo_model.py"), repo / ECHO / "1" / "model.py")


def triton_paths(stack, repo: Path, pairs, protocols: list[str], label: str = "", floor: bool = False) -> list[ScoringPath]:
    """A tritonserver serving REPO's version 1 (closed with STACK), warmed up, one path per protocol; each
    client thread keeps one connection (Scorer) for all its requests. floor: also one path per protocol
    through the echo model (write_echo_model) on the same server."""
    from adore.serving.client import Scorer
    from adore.serving.rollout import serve_version
    from adore.serving.server import TritonServer

    server = stack.enter_context(TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=120))
    serve_version(server.http_url, repo, "adore-student", 1, 1e-3)
    models = [("adore-student", label)]
    if floor:
        server.load(ECHO)
        models.append((ECHO, FLOOR))
    out = []
    for model, suffix in models:
        for protocol in protocols:
            url = server.http_url if protocol == "http" else server.grpc_url
            connect = functools.partial(Scorer, url, model, protocol)
            with connect() as warm:
                for _ in range(2):  # warm-up
                    warm.score(*pairs)
            out.append(ScoringPath(f"triton {protocol}{suffix}", lambda scorer: scorer.score(*pairs), connect))
    return out


def inprocess_logits(folder: Path):
    """What the served model.py runs, in this process, with the same thread count as the Triton model."""
    from adore.serving import backend, bi_encoder

    threads = backend.ort_threads({"instance_group": [{"count": 1}]})
    how = "split" if bi_encoder.is_split(folder) else "full"
    return backend.version_logits(str(folder), threads, backend.Preprocessor(str(folder))), how


def inprocess_paths(folder: Path, student, pairs, pytorch: bool) -> list[ScoringPath]:
    from adore.serving.backend import probs_and_score

    logits, how = inprocess_logits(folder)
    out = [ScoringPath(f"in-process onnxruntime ({how})", lambda: probs_and_score(logits(*pairs)))]
    if pytorch:
        out.append(ScoringPath("in-process pytorch", lambda: student.predict(*pairs)))
    for p in out:
        p.call()  # warm-up
    return out


def flops_per_pair(folder: Path, student, pairs) -> float:
    """FLOPs per pair of the path served: the split (one query per request; items from the table or
    embedded) or the full graph, at the padded lengths of one request."""
    from adore.roofline import EncoderShape, seq_lens, split_flops, student_flops
    from adore.serving import bi_encoder

    enc = {k: v.numpy() for k, v in student.encode(*pairs).items()}
    if not bi_encoder.is_split(folder):
        return student_flops(student, seq_lens(enc))
    scorer = bi_encoder.BiEncoderScorer(folder)
    lens = seq_lens(enc)
    shape = EncoderShape.of(student.model.config)
    distinct = len(set(pairs[0]))
    texts = scorer.item_texts(pairs[1], pairs[2])
    missing = sum(bi_encoder.item_key(x) not in scorer.table for x in texts)
    return split_flops(shape, lens["query"], lens["item"], len(texts), distinct, missing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", help="a distilled student folder (default: an untrained MiniLM-L6 student)")
    ap.add_argument("--pairs", type=int, default=100, help="pairs per request")
    ap.add_argument("--queries", type=int, default=0,
                    help="distinct queries per request, the same items under each in turn (default 0: the first "
                         "PAIRS bundled pairs as they come, 10 queries in 100 pairs; 1: a search page)")
    ap.add_argument("--floor", action="store_true",
                    help="also time Triton's own path: the same requests through an echo model "
                         "(benchmarks/triton_echo_model.py) on the same server")
    ap.add_argument("--requests", type=int, default=20, help="per path and concurrency")
    ap.add_argument("--blocks", type=int, default=4,
                    help="alternating blocks the requests of each concurrency are split into (>= 1)")
    ap.add_argument("--concurrency", default="2", help="client threads; a list such as 1,2,4,8 gives a row each")
    ap.add_argument("--protocol", default="grpc", help="http, grpc or http,grpc")
    ap.add_argument("--max-length", type=int, default=96, help="of the untrained student (without --student)")
    ap.add_argument("--architecture", default="bi-encoder", choices=["bi-encoder", "cross-encoder"],
                    help="of the untrained student (without --student); distill's default is bi-encoder")
    ap.add_argument("--cold", action="store_true",
                    help="a bi-encoder without the item table promote writes (every item embedded per request)")
    ap.add_argument("--pytorch", action="store_true", help="also time PyTorch's Student.predict")
    ap.add_argument("--request-log", action="store_true", help="also measure Triton with the request log writing every row")
    ap.add_argument("--queue-delay-us", type=int, default=None,
                    help="promotion.serving.maxQueueDelayMicroseconds of the served version (default: the schema's)")
    args = ap.parse_args()

    import torch

    from adore.serving.version import prepare_version
    from adore.student.model import Student
    from adore.serving.repository import Batching, write_version

    from adore.roofline import achieved_share, gemm_throughput
    from adore.serving.backend import ort_threads

    threads = ort_threads({"instance_group": [{"count": 1}]})
    torch.set_num_threads(threads)
    concurrencies = [int(c) for c in str(args.concurrency).split(",")]
    protocols = [x.strip() for x in args.protocol.split(",")]
    if not 1 <= args.blocks <= args.requests:
        ap.error(f"--blocks: between 1 and --requests ({args.requests}), not {args.blocks}")
    if args.queries < 0:
        ap.error(f"--queries: 0 (as bundled) or more, not {args.queries}")
    if not set(protocols) <= {"http", "grpc"}:
        ap.error(f"--protocol: http, grpc or both, not {args.protocol!r}")
    peak = gemm_throughput(threads)
    pairs = bundled_pairs(args.pairs, args.queries)
    with tempfile.TemporaryDirectory(prefix="adore-bench-") as tmp:
        tmp = Path(tmp)
        if args.student:
            student = Student.load(Path(args.student))
        else:
            Student.create("builtin:minilm-l6", GRADES, use_attributes=True, max_length=args.max_length,
                           brands=sorted({a.get("brand", "") for a in pairs[2]} - {""}),
                           architecture=args.architecture).save(tmp / "student")
            student = Student.load(tmp / "student")
        diff = prepare_version(student, tmp / "version", pairs)
        if student.is_bi and not args.cold:  # as promote does: the catalogue's items embedded ahead
            from adore.serving.bi_encoder import write_item_table

            print(f"# item table: {write_item_table(tmp / 'version', pairs[1], pairs[2])}", file=sys.stderr)
        batching = Batching() if args.queue_delay_us is None else Batching(max_queue_delay_microseconds=args.queue_delay_us)
        print(f"# Triton: {batching.dynamic_batching()}, {batching.instances} instance(s)")
        write_version(tmp / "repo", "adore-student", tmp / "version", student.meta.grades, batching=batching)
        if args.floor:
            write_echo_model(tmp / "repo", batching)
        flops = flops_per_pair(tmp / "version", student, pairs)
        with contextlib.ExitStack() as stack:
            paths = inprocess_paths(tmp / "version", student, pairs, args.pytorch)
            paths += triton_paths(stack, tmp / "repo", pairs, protocols, floor=args.floor)
            if args.request_log:
                settings = {"path": str(tmp / "log"), "sample_rate": 1.0, "threshold": 0.5}
                (tmp / "version" / "request_log.json").write_text(json.dumps(settings))
                write_version(tmp / "repo-logged", "adore-student", tmp / "version", student.meta.grades,
                              batching=batching)
                paths += triton_paths(stack, tmp / "repo-logged", pairs, protocols, " + request log (every row)")
            rows = [r for c in concurrencies for r in interleaved(paths, pairs, args.requests, c, args.blocks)]
        shares(rows, paths[0].label)
        if args.request_log:
            from adore.serving.request_log import read_request_log

            logged = read_request_log(tmp / "log")
            print(f"# request log: {len(logged.rows)} rows in {logged.files} file(s), "
                  f"{sum(f.stat().st_size for f in (tmp / 'log').glob('*.jsonl')) / 2**20:.1f} MiB", file=sys.stderr)
    from adore.hardware import cpu_summary

    print(f"# {len(pairs[0])} pairs per request ({len(set(pairs[0]))} distinct queries), {student.meta.architecture} student max_length "
          f"{student.meta.max_length}, ONNX vs PyTorch max abs diff {diff:.1e}, ONNX Runtime threads {threads}; "
          f"{cpu_summary()}")
    print(f"# roofline: ONNX Runtime fp32 MatMul {peak['fp32']} GFLOP/s on {threads} threads; the served path "
          f"costs {flops / 1e9:.4f} GFLOP per pair")
    print(f"# paths measured in {args.blocks} alternating blocks per concurrency; share: pairs/s against "
          f"{paths[0].label} at the same concurrency [range over the blocks]")
    print("| path | concurrency | requests | errors | pairs/s | share | share of roofline | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: ([p.label for p in paths].index(r["path"]), r["concurrency"])):
        roof = achieved_share(r["pairsPerSecond"], flops, peak["fp32"]) if not r["path"].endswith(("pytorch", FLOOR)) else "-"
        share = f"{r['share']:.1%} [{r['shareRange'][0]:.0%}, {r['shareRange'][1]:.0%}]" if "share" in r else "-"
        print(f"| {r['path']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['pairsPerSecond']} | "
              f"{share} | {roof} | {r['p50']} | {r['p95']} | {r['p99']} |")
    for line in floor_bounds(rows, paths[0].label):
        print(line)
    return 0


def floor_bounds(rows: list[dict], reference: str) -> list[str]:
    """What the echo model's p50 (Triton's own path) leaves at concurrency 1: a request that costs T in
    process costs at least T + floor through Triton, so Triton's pairs/s is at most T / (T + floor) of
    in-process when requests do not overlap."""
    ref = next((r for r in rows if r["path"] == reference and r["concurrency"] == 1), None)
    out = []
    for r in rows:
        if ref is not None and r["path"].endswith(FLOOR) and r["concurrency"] == 1:
            bound = ref["p50"] / (ref["p50"] + r["p50"])
            out.append(f"# {r['path']}: p50 {r['p50']} ms at concurrency 1 against {ref['p50']} ms in process: "
                       f"Triton can reach at most {bound:.1%} of in-process pairs/s there")
    return out


if __name__ == "__main__":
    sys.exit(main())
