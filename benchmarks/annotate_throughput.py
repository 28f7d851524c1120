"""Teacher labelling throughput: pairs/s for chain of thought and for direct judging, with and without
the engine's shared-prefix KV cache and length sorting, in each precision this machine offers.

    python benchmarks/annotate_throughput.py [--pairs 96] [--model builtin:smollm2-135m]

"plain" is the path before the engine work (left padding, rows in input order, every prompt
computed whole, batch 8, the old default); "engine" reuses the system prompt's KV cache, sorts
rows by length and takes the new default batch (32 on the CPU). The
pairs are the bundled catalogue's real titles with real queries; the rules are Home Depot's.
Prints the CPU model and its vector extensions first: figures from different CPUs differ.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adore import hardware
from adore.data.contract import read_catalogue, read_pairs
from adore.data.importers import BUNDLED_DIR
from adore.teacher.llm import JudgeSettings, Teacher

REPO = Path(__file__).resolve().parents[1]


def pairs(n: int):
    items = read_catalogue(BUNDLED_DIR / "catalogue.jsonl")
    rows = read_pairs(BUNDLED_DIR / "pairs.jsonl", ["irrelevant", "partial", "exact"])
    return [(p.query, items[p.item_id]) for p in rows[::max(1, len(rows) // n)][:n]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--plain-batch", type=int, default=8, help="batch of the plain path (the old default)")
    ap.add_argument("--batch", type=int, default=JudgeSettings.CPU_BATCH, help="batch of the engine path")
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--precisions", default="auto", help="comma list of fp32,bf16 (auto: fp32 and, with native bf16, bf16)")
    args = ap.parse_args()
    print(f"cpu: {hardware.cpu_summary()}")
    found = hardware.found()
    precisions = (["fp32", "bf16"] if hardware.native_bf16(found.cpu_flags) or found.cuda else ["fp32"]) \
        if args.precisions == "auto" else args.precisions.split(",")
    work = pairs(args.pairs)
    rules = (REPO / "examples" / "rules" / "homedepot.txt").read_text()
    results = []
    for precision in precisions:
        hw = hardware.choose(found, precision=precision)
        t = Teacher.load(args.model, rules, ["irrelevant", "partial", "exact"], prefill_attributes=True, hardware=hw,
                         settings=JudgeSettings(48, args.batch, 384))
        batches = {"plain": args.plain_batch, "engine": args.batch}
        t.judge(work[:2], direct=True)  # warm-up
        for mode in ("rationale", "direct"):
            for path, fast in (("plain", False), ("engine", True)):
                t.settings.batch_size = batches[path]
                t0 = time.time()
                t.judge(work, direct=mode == "direct", reuse_prefix=fast, sort=fast)
                dt = time.time() - t0
                row = {"device": hw.describe(), "mode": mode, "path": path, "pairs": len(work), "batch": batches[path],
                       "seconds": round(dt, 2), "pairsPerSecond": round(len(work) / dt, 2)}
                results.append(row)
                print(json.dumps(row), flush=True)
    base = {r["mode"]: r["pairsPerSecond"] for r in results if r["path"] == "plain" and r["device"].endswith("fp32")}
    print("\n| device | mode | path | pairs/s | x plain fp32 |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['device']} | {r['mode']} | {r['path']} | {r['pairsPerSecond']} | {r['pairsPerSecond'] / base[r['mode']]:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
