"""Student scoring speed in process (ONNX Runtime), fp32 vs int8, against the teacher.

    python benchmarks/student_speed.py [--student DIR] [--dataset homedepot] [--threads 2] [--iters 50]

One query with 100 real candidate titles (Home Depot, ../shared/data) is scored
as one batch, as a search request would be. Reports, for fp32 and int8 ONNX:
the padded sequence length, p50/p95 latency of the whole request (tokenise +
ONNX Runtime) and of ONNX Runtime alone, pairs/s; int8's max abs probability
difference to fp32 and, with --dev, macro-F1 of both on a dev file. The
teacher's annotation throughput comes from an annotate stage's metrics.json
(--teacher-metrics) or, without one, from judging a few pairs here.
With no --student an untrained MiniLM student is exported (speed does not
depend on the weights; --architecture, default bi-encoder as distill's).
A bi-encoder is also timed served as one (fp32Split: the query embedded once
per request, the items embedded per request "cold" or read from the item
table promote writes "warm"). Beside every pairs/s: the student's GFLOP per
pair at the measured padded lengths and the share of the machine's measured
roofline (ONNX Runtime MatMul, fp32; MatMulInteger for int8) it reaches.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from adore.roofline import achieved_share, gemm_throughput, seq_lens, student_flops

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def candidates(data: Path, n: int = 100) -> tuple[str, list[str]]:
    """The query with the most judged items, topped up with other titles to N candidates."""
    from adore.data.importers import import_homedepot

    catalogue, pairs = import_homedepot(data / "homedepot" / "pairs.csv")[:2]
    by_q: dict[str, list[str]] = {}
    for p in pairs:
        by_q.setdefault(p.query, []).append(p.item_id)
    query = max(sorted(by_q), key=lambda q: len(by_q[q]))
    ids = list(dict.fromkeys(by_q[query]))
    others = sorted(set(catalogue) - set(ids))
    ids += [others[i] for i in np.random.default_rng(0).choice(len(others), n - len(ids), replace=False)]
    return query, [catalogue[i].title for i in ids[:n]]


def timed(student, sess, query: str, titles: list[str], iters: int) -> dict:
    wanted = {i.name for i in sess.get_inputs()}
    total, ort_only = [], []
    for i in range(iters + 3):
        t0 = time.perf_counter()
        enc = student.encode([query] * len(titles), titles, [{}] * len(titles))
        feeds = {k: v.numpy() for k, v in enc.items() if k in wanted}
        t1 = time.perf_counter()
        sess.run(None, feeds)
        t2 = time.perf_counter()
        if i >= 3:  # warm-up excluded
            total.append(t2 - t0)
            ort_only.append(t2 - t1)
    ms = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 2)
    return {"seqLen": seq_lens(enc), "p50ms": ms(total, 50), "p95ms": ms(total, 95),
            "ortP50ms": ms(ort_only, 50), "ortP95ms": ms(ort_only, 95),
            "pairsPerSecond": round(len(titles) / float(np.median(total)), 1)}


def timed_split(student, folder: Path, query: str, titles: list[str], iters: int, threads: int, peak: dict) -> dict:
    """A bi-encoder served as one (adore.serving.bi_encoder): the query embedded once per request, items
    embedded per request (cold: the item table lacks them) or read from the table promote writes (warm)."""
    from adore.roofline import EncoderShape, split_flops
    from adore.serving.bi_encoder import BiEncoderScorer, write_item_table
    from adore.serving.version import prepare_version

    prepare_version(student, folder, ([query] * 2, titles[:2], [{}, {}]))
    out = {}
    for name in ("cold", "warm"):
        if name == "warm":
            write_item_table(folder, titles, [{}] * len(titles), threads)
        scorer = BiEncoderScorer(folder, threads)
        lat = []
        for i in range(iters + 3):
            t0 = time.perf_counter()
            scorer.logits([query] * len(titles), titles, [{}] * len(titles))
            if i >= 3:
                lat.append(time.perf_counter() - t0)
        shape = EncoderShape.of(student.model.config)
        q_len = len(scorer.pre.tokenizer(query)["input_ids"])
        i_len = max(len(x) for x in scorer.pre.tokenizer(titles)["input_ids"])
        flops = split_flops(shape, q_len, i_len, len(titles), 1, len(titles) if name == "cold" else 0)
        pps = round(len(titles) / float(np.median(lat)), 1)
        out[name] = {"p50ms": round(float(np.percentile(lat, 50)) * 1000, 2),
                     "p95ms": round(float(np.percentile(lat, 95)) * 1000, 2), "pairsPerSecond": pps,
                     "gflopsPerPair": round(flops / 1e9, 4), "shareOfRoofline": achieved_share(pps, flops, peak["fp32"])}
    return out


def dev_f1(student, sess, dev: Path, catalogue: Path) -> float:
    from adore.data.contract import read_catalogue, read_pairs
    from adore.metrics import macro_f1
    from adore.student.export import onnx_probs

    grades = student.meta.grades
    items, pairs = read_catalogue(catalogue), read_pairs(dev, grades)
    probs = onnx_probs(sess, student, [p.query for p in pairs], [items[p.item_id].title for p in pairs],
                       [items[p.item_id].attributes for p in pairs])
    return macro_f1(np.array([grades.index(p.grade) for p in pairs]), student.grade(probs), len(grades))


def teacher_throughput(metrics: Path | None, n: int, data: Path) -> dict:
    if metrics and metrics.is_file():
        m = json.loads(metrics.read_text())
        return {"source": str(metrics), "pairsPerSecond": m["pairsPerSecond"], "pairs": m["pairs"]}
    from adore import attributes as attr
    from adore.data.contract import Item
    from adore import hardware
    from adore.teacher.llm import Teacher

    rules = (ROOT / "examples" / "rules" / "homedepot.txt").read_text()
    t = Teacher.load("builtin:smollm2-135m", rules, ["irrelevant", "partial", "exact"], [], ROOT,
                     brands=attr.BrandLexicon([]), prefill_attributes=True, hardware=hardware.choose(hardware.found()))
    query, titles = candidates(data, 100)
    t0 = time.perf_counter()
    t.judge([(query, Item(str(i), x)) for i, x in enumerate(titles[:n])])
    return {"source": f"measured here: {n} pairs, batch 8, chain of thought, base model, {t.hardware.describe()}", "pairsPerSecond": round(n / (time.perf_counter() - t0), 3),
            "pairs": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", help="a distilled student folder (default: untrained MiniLM student)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--dev", help="dev.jsonl (prepare output) for int8 vs fp32 macro-F1; needs --catalogue")
    ap.add_argument("--catalogue")
    ap.add_argument("--teacher-metrics", help="an annotate stage's metrics.json")
    ap.add_argument("--teacher-pairs", type=int, default=16)
    ap.add_argument("--architecture", default="bi-encoder", choices=["bi-encoder", "cross-encoder"],
                    help="of the untrained student used without --student (distill's default: bi-encoder)")
    args = ap.parse_args()

    from adore.student.export import export_onnx, onnx_probs, quantize_int8, session
    from adore.student.model import Student

    student = Student.load(Path(args.student)) if args.student else \
        Student.create("builtin:minilm-l6", ["irrelevant", "partial", "exact"], True, 64, [],
                       architecture=args.architecture)
    query, titles = candidates(Path(args.data))
    from adore.hardware import cpu_summary

    peak = gemm_throughput(args.threads)
    out = {"cpu": cpu_summary(), "query": query, "candidates": len(titles), "threads": args.threads,
           "maxLength": student.meta.max_length, "architecture": student.meta.architecture,
           "student": args.student or "untrained builtin:minilm-l6",
           "roofline": {"fp32GflopsPerSecond": peak["fp32"], "int8GopsPerSecond": peak["int8"],
                        "how": "ONNX Runtime MatMul / MatMulInteger, 4800x384x1536, on --threads threads"}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_onnx(student, fp32, ([query] * 2, titles[:2], [{}, {}]))
        quantize_int8(fp32, int8)
        sessions = {"fp32": session(fp32, args.threads), "int8": session(int8, args.threads)}
        for name, s in sessions.items():
            out[name] = timed(student, s, query, titles, args.iters)
            out[name]["modelMiB"] = round((fp32 if name == "fp32" else int8).stat().st_size / 2 ** 20, 1)
            flops = student_flops(student, out[name]["seqLen"])
            out[name]["gflopsPerPair"] = round(flops / 1e9, 3)
            out[name]["shareOfRoofline"] = achieved_share(out[name]["pairsPerSecond"], flops, peak[name])
        q = [query] * len(titles)
        a = [{}] * len(titles)
        out["int8MaxAbsDiffVsFp32"] = round(float(np.abs(onnx_probs(sessions["int8"], student, q, titles, a)
                                                         - onnx_probs(sessions["fp32"], student, q, titles, a)).max()), 4)
        if student.is_bi:
            out["fp32Split"] = timed_split(student, Path(tmp) / "split", query, titles, args.iters, args.threads, peak)
        if args.dev:
            out["devMacroF1"] = {n: dev_f1(student, s, Path(args.dev), Path(args.catalogue)) for n, s in sessions.items()}
    teacher = teacher_throughput(Path(args.teacher_metrics) if args.teacher_metrics else None, args.teacher_pairs, Path(args.data))
    out["teacher"] = teacher
    out["speedupPerPair"] = {n: round(out[n]["pairsPerSecond"] / teacher["pairsPerSecond"]) for n in ("fp32", "int8")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
