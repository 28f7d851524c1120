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
depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

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
    return {"seqLen": int(enc["input_ids"].shape[1]), "p50ms": ms(total, 50), "p95ms": ms(total, 95),
            "ortP50ms": ms(ort_only, 50), "ortP95ms": ms(ort_only, 95),
            "pairsPerSecond": round(len(titles) / float(np.median(total)), 1)}


def dev_f1(student, sess, dev: Path, catalogue: Path) -> float:
    from adore.data.contract import read_catalogue, read_pairs
    from adore.metrics import macro_f1
    from adore.student.export import onnx_probs

    grades = student.meta.grades
    items, pairs = read_catalogue(catalogue), read_pairs(dev, grades)
    probs = onnx_probs(sess, student, [p.query for p in pairs], [items[p.item_id].title for p in pairs],
                       [items[p.item_id].attributes for p in pairs])
    return macro_f1(np.array([grades.index(p.grade) for p in pairs]), student.grade(probs), len(grades))


def teacher_throughput(metrics: Path | None, n: int) -> dict:
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
    query, titles = candidates(ROOT.parent / "shared" / "data", 100)
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
    args = ap.parse_args()

    from adore.student.export import export_onnx, onnx_probs, quantize_int8, session
    from adore.student.model import Student

    student = Student.load(Path(args.student)) if args.student else \
        Student.create("builtin:minilm-l6", ["irrelevant", "partial", "exact"], True, 64, [])
    query, titles = candidates(Path(args.data))
    out = {"query": query, "candidates": len(titles), "threads": args.threads, "maxLength": student.meta.max_length,
           "student": args.student or "untrained builtin:minilm-l6"}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_onnx(student, fp32, ([query] * 2, titles[:2], [{}, {}]))
        quantize_int8(fp32, int8)
        sessions = {"fp32": session(fp32, args.threads), "int8": session(int8, args.threads)}
        for name, s in sessions.items():
            out[name] = timed(student, s, query, titles, args.iters)
            out[name]["modelMiB"] = round((fp32 if name == "fp32" else int8).stat().st_size / 2 ** 20, 1)
        q = [query] * len(titles)
        a = [{}] * len(titles)
        out["int8MaxAbsDiffVsFp32"] = round(float(np.abs(onnx_probs(sessions["int8"], student, q, titles, a)
                                                         - onnx_probs(sessions["fp32"], student, q, titles, a)).max()), 4)
        if args.dev:
            out["devMacroF1"] = {n: dev_f1(student, s, Path(args.dev), Path(args.catalogue)) for n, s in sessions.items()}
    teacher = teacher_throughput(Path(args.teacher_metrics) if args.teacher_metrics else None, args.teacher_pairs)
    out["teacher"] = teacher
    out["speedupPerPair"] = {n: round(out[n]["pairsPerSecond"] / teacher["pairsPerSecond"]) for n in ("fp32", "int8")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
