"""Seconds per SFT step and per KTO step of the teacher (trl, LoRA), in fp32 and in bf16 autocast.

    python benchmarks/train_step_timing.py [--steps 3] [--batch 4] [--model builtin:smollm2-135m]

The examples are rule rationales for real bundled pairs, the shapes the sft and align stages
train on. bf16 autocast is only fast on CPUs with native bf16 (AVX512-BF16 / AMX); the first
line says whether this one has it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from adore import hardware
from adore.schema import AlignSpec, SftSpec
from adore.teacher import training
from adore.teacher.llm import Teacher
from adore.teacher.prompt import rule_rationale

from annotate_throughput import REPO, pairs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    print(f"cpu: {hardware.cpu_summary()}")
    rules = (REPO / "examples" / "rules" / "homedepot.txt").read_text()
    grades = ["irrelevant", "partial", "exact"]
    work = pairs(args.batch * args.steps)
    for precision in args.precisions.split(","):
        hw = hardware.choose(hardware.found(), precision=precision)
        for stage in ("sft", "kto"):
            t = Teacher.load(args.model, rules, grades, prefill_attributes=True, hardware=hw, training=True)
            ex = [(t.prompt(q, it), t.completion(q, it, rule_rationale(q, it, g, t.brands).text()))
                  for (q, it), g in zip(work, ["exact", "irrelevant", "partial"] * len(work))]
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.time()
                if stage == "sft":
                    m = training.sft(t, ex, Path(tmp) / "a", SftSpec(epochs=1, batch_size=args.batch))
                    steps, secs = m["sftSteps"], m["sftSeconds"]
                else:
                    rows = [{"prompt": p, "completion": c, "label": i % 2 == 0} for i, (p, c) in enumerate(ex)]
                    m = training.kto(t, rows, Path(tmp) / "a", AlignSpec(steps=args.steps, batch_size=args.batch))
                    steps, secs = m["ktoSteps"], m["ktoSeconds"]
            print(json.dumps({"device": hw.describe(), "stage": stage, "steps": steps, "batch": args.batch,
                              "secondsPerStep": round(secs / max(steps, 1), 2), "wall": round(time.time() - t0, 1)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
